"""Any ASE-readable structure with an ASE calculator ('ase' target), the generic molecular path.

Positions in Å (ASE's unit); energy(x) = E(x) / (kB T) with E in eV from the calculator and
kB = 8.617333262e-5 eV/K. Gradients come from the calculator's forces.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .base import TARGETS, ParticleTarget, Symmetry
from .openmm_system import ExternalEnergy

KB_EV = 8.617333262e-5  # eV/K


def make_calculator(name: str, params: dict[str, Any] | None = None) -> Any:
    """An ASE calculator by name: 'emt' (EMT metals/CHNO), 'lj' (LennardJones), 'morse'."""
    params = dict(params or {})
    name = name.lower()
    if name == "emt":
        from ase.calculators.emt import EMT
        return EMT(**params)
    if name == "lj":
        from ase.calculators.lj import LennardJones
        return LennardJones(**params)
    if name == "morse":
        from ase.calculators.morse import MorsePotential
        return MorsePotential(**params)
    raise ValueError(f"unknown ASE calculator {name!r}; available: emt, lj, morse")


@dataclass
class ASETarget(ParticleTarget):
    """structure: ASE-readable file (its first frame fixes atoms, cell, pbc); calculator: name
    for make_calculator with calculator_params; temperature in K."""

    structure: str = ""
    calculator: str = "emt"
    calculator_params: dict = field(default_factory=dict)
    temperature: float = 300.0
    length_unit: str = field(init=False, default="angstrom")

    def __post_init__(self) -> None:
        import ase.io

        from ..errors import DataError
        if self.temperature <= 0:
            raise ValueError(f"ase target: temperature must be positive (K), got {self.temperature}")
        try:
            self.atoms = ase.io.read(self.structure, index=0)
        except Exception as e:  # ASE raises many types for unreadable files
            raise DataError(f"{self.structure}: cannot read structure ({type(e).__name__}: {e})") from None
        self.atoms.calc = make_calculator(self.calculator, self.calculator_params)
        self.n_particles = len(self.atoms)
        self.dim = 3
        super().__post_init__()
        self.name = "ase"
        self.kT = KB_EV * self.temperature

    @property
    def symmetry(self) -> Symmetry:
        if self.atoms.pbc.any():
            return Symmetry(translations=True)
        groups: dict[int, list[int]] = {}
        for i, z in enumerate(self.atoms.numbers):
            groups.setdefault(int(z), []).append(i)
        return Symmetry(rotations="O", translations=True,
                        permutations=tuple(tuple(g) for g in groups.values()))

    @property
    def atomic_numbers(self) -> list[int]:
        return [int(z) for z in self.atoms.numbers]

    def _reduced(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        e = np.empty(len(x))
        g = np.empty_like(x)
        for b, xb in enumerate(x):
            self.atoms.positions = xb
            e[b] = self.atoms.get_potential_energy()
            g[b] = -self.atoms.get_forces()
        return e / self.kT, g / self.kT

    def energy(self, x: torch.Tensor) -> torch.Tensor:
        return ExternalEnergy.apply(x, self._reduced)

    def init_positions(self, n: int, generator: torch.Generator | None = None,
                       dtype: torch.dtype = torch.float64) -> torch.Tensor:
        x = torch.as_tensor(self.atoms.positions, dtype=dtype)
        return (x - x.mean(0)).expand(n, -1, -1).clone()

    def attrs(self) -> dict:
        return {"structure": self.structure, "calculator": self.calculator,
                "temperature_K": self.temperature, "length_unit": "angstrom",
                "n_particles": self.n_particles}


TARGETS.register("ase")(ASETarget)
