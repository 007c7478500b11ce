"""Load and validate a flowsci config against workflow/schemas/config.schema.yaml.

The same schema file is used by the Snakemake workflow (workflow/rules/common.smk) and the
CLI; defaults come from the schema, so a config only states what differs.
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from .errors import ConfigError
from .io import atomic_output

SCHEMA_PATH = Path(__file__).with_name("schemas") / "config.schema.yaml"


def load_schema() -> dict:
    with open(SCHEMA_PATH) as f:
        return yaml.safe_load(f)


def _with_defaults(cls):
    validate_properties = cls.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, sub in properties.items():
                if "default" in sub and name not in instance:
                    instance[name] = copy.deepcopy(sub["default"])
                elif "$ref" in sub and name not in instance:
                    target = validator._resolver.lookup(sub["$ref"]).contents
                    if "default" in target:
                        instance[name] = copy.deepcopy(target["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(cls, {"properties": set_defaults})


def _strict_integers(cls):
    # JSON Schema counts 10.0 as an integer; a config's integers must be ints (batch_size=1e1
    # would otherwise reach torch as a float). bool is not an integer either.
    checker = cls.TYPE_CHECKER.redefine(
        "integer", lambda _, x: isinstance(x, int) and not isinstance(x, bool))
    return jsonschema.validators.extend(cls, type_checker=checker)


_Validator = _with_defaults(_strict_integers(jsonschema.Draft202012Validator))
MAX_NODES = 100_000  # mappings, lists and scalars of a config once aliases are expanded


def validate_config(config: dict[str, Any], source: str = "<config>") -> dict[str, Any]:
    """Return a validated deep copy of `config` with schema defaults filled in.

    Raises ConfigError naming the offending key path and the source file.
    """
    try:
        config = _yaml12_numbers(config, _Budget(source))
        _check_finite(config, source)
        return _validate(config, source)
    except RecursionError:
        raise ConfigError(f"{source}: config is nested too deeply") from None


def _validate(config: dict[str, Any], source: str) -> dict[str, Any]:
    validator = _Validator(load_schema())
    # a second pass validates the defaults that the first pass inserted
    for _ in range(2):
        errors = sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
        if errors:
            e = errors[0]
            where = ".".join(str(p) for p in e.absolute_path) or "(top level)"
            hint = ("; write integers without a decimal point or exponent (e.g. 10, not 1e1)"
                    if e.validator == "type" and isinstance(e.instance, float)
                    and "integer" in str(e.validator_value) else "")
            raise ConfigError(f"{source}: config key {where}: {e.message}{hint}")
    _check_consistency(config, source)
    return config


# Numbers in exponent form without a dot or exponent sign ("1e-2", "5E3"): YAML 1.2 reads them
# as floats, PyYAML (YAML 1.1) as strings, so a config saying lr: 1e-3 would fail or, in free
# params, pass a string on. Applied to every value (files, --set and Snakemake's config).
_YAML12_FLOAT = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)[eE][-+]?[0-9]+")


class _Budget:
    """Counts the nodes of a config as it is copied: YAML aliases can make a small file
    expand into an exponentially large tree (an alias bomb)."""

    def __init__(self, source: str):
        self.source, self.left = source, MAX_NODES

    def take(self) -> None:
        self.left -= 1
        if self.left < 0:
            raise ConfigError(f"{self.source}: config has more than {MAX_NODES} entries once "
                              "its YAML aliases are expanded; write it out without aliases")


def _yaml12_numbers(node: Any, budget: _Budget) -> Any:
    """A copy of `node` with YAML 1.2 exponent numbers as floats (counted against budget)."""
    budget.take()
    if isinstance(node, dict):
        return {k: _yaml12_numbers(v, budget) for k, v in node.items()}
    if isinstance(node, list):
        return [_yaml12_numbers(v, budget) for v in node]
    if isinstance(node, str) and _YAML12_FLOAT.fullmatch(node.strip()):
        return float(node)
    return node


def _check_finite(node: Any, source: str, where: str = "") -> None:
    """Every number of the config is finite: NaN passes every comparison of a schema
    (NaN < 0 and NaN > 0 are both false) and infinities pass minimums."""
    if isinstance(node, dict):
        for k, v in node.items():
            _check_finite(v, source, f"{where}.{k}" if where else str(k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            _check_finite(v, source, f"{where}[{i}]")
    elif isinstance(node, float) and not math.isfinite(node):
        raise ConfigError(f"{source}: config key {where or '(top level)'}: {node} is not a "
                          "finite number")


def _check_plain_name(kind: str, name: Any, source: str) -> None:
    """Run and system names become directories under results_dir: never a path."""
    text = str(name)
    if (not text or text in (".", "..") or text.startswith(".")
            or any(c in text for c in "/\\\0")):
        raise ConfigError(f"{source}: {kind} name {text!r} must be a plain directory name "
                          "(no '/', '\\', leading '.', or '..')")


def _check_init_from(config: dict, run: str, source: str) -> None:
    """runs.<run>.init_from names another run of the same system, model and prior, and the
    chain of init_from runs has no cycle."""
    seen, current = [run], run
    while (src := config["runs"][current].get("init_from")) is not None:
        key = f"{source}: runs.{current}.init_from = {src!r}"
        if src not in config["runs"]:
            raise ConfigError(f"{key} is not a run of the config ({', '.join(config['runs'])})")
        if src in seen:
            raise ConfigError(f"{key} makes a cycle: {' -> '.join(seen + [src])}")
        for k in ("system", "model", "prior"):
            a, b = config["runs"][current].get(k), config["runs"][src].get(k)
            if canonical_json(a) != canonical_json(b):
                raise ConfigError(f"{key}: the two runs must have the same {k} ({short_json(a)} "
                                  f"vs {short_json(b)})")
        seen.append(src)
        current = src


def _check_consistency(config: dict, source: str) -> None:
    for run, spec in config["runs"].items():
        if spec["system"] not in config["systems"]:
            raise ConfigError(
                f"{source}: runs.{run}.system = {spec['system']!r} is not a key of systems "
                f"({', '.join(config['systems'])})")
        _check_plain_name("run", run, source)
        _check_init_from(config, run, source)
    for name, spec in config["systems"].items():
        _check_plain_name("system", name, source)
        data = spec["data"]
        if data["source"] == "generate" and "generator" not in data:
            raise ConfigError(f"{source}: systems.{name}.data: source 'generate' needs 'generator'")
        if data["source"] == "file" and "input" not in data:
            raise ConfigError(f"{source}: systems.{name}.data: source 'file' needs 'input'")
        sp = data["splits"]
        if sp["train"] <= 0 or sp["train"] + sp["val"] + sp["test"] <= 0:
            raise ConfigError(f"{source}: systems.{name}.data.splits: train fraction must be > 0")


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader refusing duplicate keys (the last one would silently win)."""

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                if key in seen:
                    raise ConfigError(f"duplicate key {key!r} (lines {seen[key]} and {line}); "
                                      "keep one")
                seen[key] = line
            except TypeError:  # an unhashable key: the base class says so
                break
        return super().construct_mapping(node, deep=deep)


def parse_yaml(text: str, source: str) -> Any:
    """YAML text -> Python, with duplicate keys, decode and nesting errors as ConfigError."""
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 (a SafeLoader subclass)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: not valid YAML ({' '.join(str(e).split())})") from None
    except RecursionError:
        raise ConfigError(f"{source}: config is nested too deeply") from None


def load_config(path: str | os.PathLike, overrides: list[str] | None = None) -> dict[str, Any]:
    """Read YAML (or JSON) at `path`, apply `key.sub=value` overrides, validate."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, not a config file") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not a UTF-8 text file (byte {e.start}); save the config "
                          "as UTF-8 YAML") from None
    config = parse_yaml(text, str(path))
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: config must be a mapping, got {type(config).__name__}")
    for item in overrides or []:
        apply_override(config, item)
    return validate_config(config, str(path))


def apply_override(config: dict, item: str) -> None:
    """Apply 'a.b.c=value' (value parsed as YAML) in place."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like key.sub=value")
    key, value = item.split("=", 1)
    node = config
    parts = key.split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {item!r}: {p!r} is not a mapping")
    node[parts[-1]] = parse_yaml(value, f"override {item!r}")


def canonical_json(v: Any) -> str:
    """A config value as sorted-key JSON: equal strings <=> equal settings."""
    return json.dumps(v, sort_keys=True, default=str)


def short_json(v: Any, limit: int = 200) -> str:
    """canonical_json cut to `limit` characters, for error messages."""
    text = canonical_json(v)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def dump_config(config: dict, path: str | os.PathLike) -> None:
    """Write `config` as YAML atomically (only if the content changed, to keep mtimes stable)."""
    path = Path(path)
    text = yaml.safe_dump(json.loads(json.dumps(config)), sort_keys=True)
    if path.exists() and path.read_text() == text:
        return
    with atomic_output(path) as tmp:  # a unique temporary: concurrent workflows do not clash
        tmp.write_text(text)
