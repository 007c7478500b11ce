"""flowsci: Boltzmann generators with equivariant continuous normalizing flows.

From Python: `run = flowsci.load_run("config/config.yaml", run=...)` (flowsci.api), imported
on first use so that `import flowsci` stays light."""

from .version import __version__

__all__ = ["Run", "load_run"]


def __getattr__(name: str):
    if name in __all__:
        from . import api
        return getattr(api, name)
    raise AttributeError(f"module 'flowsci' has no attribute {name!r}")
