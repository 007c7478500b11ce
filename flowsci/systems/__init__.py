"""Targets (reduced energies) by config name: see `TARGETS` and `build_target`.

Importing this package registers every built-in target; modules needing optional packages
(openmm) import them lazily, inside the target's constructor.
"""

from . import ase_calculator, double_well, lennard_jones, openmm_system, phi4  # noqa: F401
from .base import TARGETS, LatticeTarget, ParticleTarget, Symmetry, Target, build_target, pair_distances

__all__ = ["TARGETS", "LatticeTarget", "ParticleTarget", "Symmetry", "Target", "build_target", "pair_distances"]
