"""DW4: four particles in 2D with a double-well pair potential (Koehler, Klein & Noe 2020)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import TARGETS, ParticleTarget, pair_distances


@TARGETS.register("dw4")
@dataclass
class DoubleWell(ParticleTarget):
    """u(x) = (1/tau) * sum_{i<j} [a r + b r^2 + c r^4],  r = |x_i - x_j| - d0.

    Defaults (a=0, b=-4, c=0.9, d0=4, tau=1) are those of Koehler et al. 2020 and
    Klein et al. 2023; positions and energies are in reduced (dimensionless) units.
    """

    n_particles: int = 4
    dim: int = 2
    a: float = 0.0
    b: float = -4.0
    c: float = 0.9
    d0: float = 4.0
    tau: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        self.name = "dw4"
        if self.tau <= 0:
            raise ValueError(f"dw4: tau must be positive, got {self.tau}")
        # r = d - d0 ranges over [-d0, inf): the pair energy is bounded below iff its leading
        # term at large r is positive. bgflow names the coefficients differently (its `a` is
        # the quartic term, `c` a constant), so its DW4 parameters (a=0.9, b=-4, c=0) copied
        # here would give a r - 4 r^2, which falls without bound.
        leading = next((v for v in (self.c, self.b, self.a) if v != 0), 0.0)
        if leading < 0 or (self.a == self.b == self.c == 0):
            raise ValueError(
                f"dw4: energy unbounded below or flat (a={self.a}, b={self.b}, c={self.c}); "
                "flowsci's convention is a r + b r^2 + c r^4 with r = |x_i - x_j| - d0 (a "
                "linear, b quadratic, c quartic: c > 0 for a double well, e.g. a=0, b=-4, "
                "c=0.9), not bgflow's MultiDoubleWellEnergy (a quartic, b quadratic, c constant)")

    def pair_energy(self, d: torch.Tensor) -> torch.Tensor:
        r = d - self.d0
        return self.a * r + self.b * r**2 + self.c * r**4

    def energy(self, x: torch.Tensor) -> torch.Tensor:
        return self.pair_energy(pair_distances(x)).sum(-1) / self.tau

    def attrs(self) -> dict:
        return {"a": self.a, "b": self.b, "c": self.c, "d0": self.d0, "tau": self.tau,
                "n_particles": self.n_particles, "dim": self.dim}
