"""Name -> constructor registries, so config names select components without if/else chains."""

from __future__ import annotations

import inspect
from typing import Any, Callable, Generic, TypeVar

from .errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """A mapping from config names to factories, with helpful errors.

    >>> FIELDS = Registry("vector field")
    >>> @FIELDS.register("egnn")
    ... class EGNN: ...
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, Callable[..., T]] = {}

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        def decorator(factory: Callable[..., T]) -> Callable[..., T]:
            if name in self._items and self._items[name] is not factory:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            self._items[name] = factory
            return factory

        return decorator

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        return name in self._items

    def get(self, name: str) -> Callable[..., T]:
        try:
            return self._items[name]
        except KeyError:
            raise ConfigError(
                f"unknown {self.kind} {name!r}; available: {', '.join(self.names()) or '(none)'}"
            ) from None

    def build(self, name: str, params: dict[str, Any] | None = None, /,
              config_key: str | None = None, **context: Any) -> T:
        """Call the factory `name` with config `params` plus code-supplied `context`.

        Unknown or missing parameters, and a component's refusal of its inputs (a ValueError
        from the factory, e.g. a particle field given a lattice target), raise
        ConfigError naming the component and `config_key` (where in the config it was chosen).
        """
        factory = self.get(name)
        params = dict(params or {})
        where = f"{config_key}: " if config_key else ""
        check_params(factory, params, context, where=f"{where}{self.kind} {name!r}")
        try:
            return factory(**context, **params)
        except ValueError as e:
            raise ConfigError(f"{where}{self.kind} {name!r} refused its settings: {e}") from e


def check_params(factory: Callable, params: dict, context: dict, where: str) -> None:
    sig = inspect.signature(factory)
    accepts_any = any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values())
    allowed = {
        n for n, p in sig.parameters.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }
    if not accepts_any:
        unknown = sorted(set(params) - allowed)
        if unknown:
            options = sorted(allowed - set(context))
            raise ConfigError(f"{where}: unknown parameter(s) {unknown}; accepted: {options}")
    missing = [
        n
        for n, p in sig.parameters.items()
        if p.default is p.empty
        and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        and n not in params
        and n not in context
    ]
    if missing:
        raise ConfigError(f"{where}: missing required parameter(s) {missing}")
