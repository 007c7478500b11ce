"""Reference-data generators by config name (`GENERATORS`).

A generator is built as GENERATORS.build(name, params, target=target) and called as
gen(progress: bool) -> GeneratedData. Importing this package registers the built-ins:
mcmc (Metropolis/MALA), hmc, openmm_md (OpenMM Langevin), ase_langevin (ASE Langevin).
"""

from .base import GENERATORS, GeneratedData
from . import hmc, langevin, mcmc, openmm_md  # noqa: F401

__all__ = ["GENERATORS", "GeneratedData"]
