"""LJ13 / LJ55: Lennard-Jones clusters with a harmonic confinement (Koehler et al. 2020).

u(x) = (1/tau) * [ eps * sum_{i<j} ((rm/d_ij)^12 - 2 (rm/d_ij)^6)
                   + (c/2) * sum_i |x_i - x_com|^2 ]

with eps = 1, rm = 1, tau = 1, c = oscillator_scale = 1 by default, as in Koehler, Klein & Noe
(ICML 2020, "Equivariant flows") and Klein, Kraemer & Noe (NeurIPS 2023, "Equivariant flow
matching"; bgflow's LennardJonesPotential with oscillator=True, oscillator_scale=1). rm is the
position of the pair minimum (depth -eps); the usual sigma is rm / 2^(1/6). Positions and
energies are reduced (units of rm and kT = eps / tau).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import TARGETS, ParticleTarget, pair_distances


@dataclass
class LennardJones(ParticleTarget):
    """LJ cluster of n_particles in 3D with harmonic confinement around the centroid."""

    n_particles: int = 13
    dim: int = 3
    eps: float = 1.0
    rm: float = 1.0
    oscillator_scale: float = 1.0
    tau: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        self.name = f"lj{self.n_particles}"
        if self.tau <= 0 or self.rm <= 0:
            raise ValueError(f"{self.name}: tau and rm must be positive (tau={self.tau}, "
                             f"rm={self.rm})")

    def lj_energy(self, x: torch.Tensor) -> torch.Tensor:
        """Pure Lennard-Jones part in units of eps (not divided by tau). x: [B, n, d] -> [B]."""
        s6 = (self.rm / pair_distances(x)) ** 6
        return self.eps * (s6 * s6 - 2.0 * s6).sum(-1)

    def oscillator_energy(self, x: torch.Tensor) -> torch.Tensor:
        """(c/2) sum_i |x_i - x_com|^2. x: [B, n, d] -> [B]."""
        xc = x - x.mean(dim=-2, keepdim=True)
        return 0.5 * self.oscillator_scale * (xc * xc).flatten(-2).sum(-1)

    def energy(self, x: torch.Tensor) -> torch.Tensor:
        return (self.lj_energy(x) + self.oscillator_energy(x)) / self.tau

    def init_positions(self, n: int, generator: torch.Generator | None = None,
                       dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """Non-overlapping starting configurations for samplers: a cubic grid with spacing rm,
        randomly permuted and jittered by 0.05 rm, centred. -> [n, n_particles, dim]."""
        side = 1
        while side ** self.dim < self.n_particles:
            side += 1
        grid = torch.stack(torch.meshgrid(*[torch.arange(side, dtype=dtype)] * self.dim,
                                          indexing="ij"), -1).reshape(-1, self.dim)
        out = []
        for _ in range(n):
            idx = torch.randperm(len(grid), generator=generator)[: self.n_particles]
            out.append(grid[idx] * self.rm)
        x = torch.stack(out)
        x = x + 0.05 * self.rm * torch.randn(x.shape, generator=generator, dtype=dtype)
        return x - x.mean(dim=-2, keepdim=True)

    def attrs(self) -> dict:
        return {"eps": self.eps, "rm": self.rm, "oscillator_scale": self.oscillator_scale,
                "tau": self.tau, "n_particles": self.n_particles, "dim": self.dim}


@TARGETS.register("lj13")
def lj13(eps: float = 1.0, rm: float = 1.0, oscillator_scale: float = 1.0,
         tau: float = 1.0) -> LennardJones:
    """LJ13 (Koehler 2020): 13 particles in 3D."""
    return LennardJones(n_particles=13, dim=3, eps=eps, rm=rm,
                        oscillator_scale=oscillator_scale, tau=tau)


@TARGETS.register("lj55")
def lj55(eps: float = 1.0, rm: float = 1.0, oscillator_scale: float = 1.0,
         tau: float = 1.0) -> LennardJones:
    """LJ55 (Klein 2023): 55 particles in 3D."""
    return LennardJones(n_particles=55, dim=3, eps=eps, rm=rm,
                        oscillator_scale=oscillator_scale, tau=tau)


TARGETS.register("lj")(LennardJones)  # any n_particles / dim
