"""Reference-data generators by config name (`GENERATORS`).

A generator is built as GENERATORS.build(name, params, target=target) and called as
gen(progress: bool) -> GeneratedData. Importing this package registers the built-ins.
"""

from .base import GENERATORS, GeneratedData
from . import mcmc  # noqa: F401

__all__ = ["GENERATORS", "GeneratedData"]
