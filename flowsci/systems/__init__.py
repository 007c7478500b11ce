"""Targets (reduced energies) by config name: see `TARGETS` and `build_target`.

Importing this package registers every built-in target; modules needing optional packages
(openmm) import them lazily, inside the target's constructor.
"""

from . import double_well  # noqa: F401  (registers 'dw4')
from .base import TARGETS, ParticleTarget, Symmetry, Target, build_target, pair_distances

__all__ = ["TARGETS", "ParticleTarget", "Symmetry", "Target", "build_target", "pair_distances"]
