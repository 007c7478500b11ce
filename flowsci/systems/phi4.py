"""Scalar phi^4 theory on a periodic lattice, in the parameterisation of Albergo, Kanwar &
Shanahan, PRD 100, 034515 (2019) and their 2021 tutorial (arXiv:2101.08176):

S(phi) = sum_x [ sum_mu (phi_{x+mu} - phi_x)^2 + m2 * phi_x^2 + lam * phi_x^4 ]
       = sum_x [ -2 sum_mu phi_x phi_{x+mu} + (2 d + m2) phi_x^2 + lam * phi_x^4 ]

(d = number of lattice dimensions; no factor 1/2 in the kinetic and mass terms). Their
ensembles use L x L with m2 = -4, lam = 8 (2D). The hopping-parameter form
S = sum_x [-2 kappa sum_mu f_x f_{x+mu} + (1 - 2 lam') f_x^2 + lam' f_x^4] maps onto this with
phi = sqrt(kappa) f, m2 = (1 - 2 lam')/kappa - 2d, lam = lam'/kappa^2.
The field and the action are dimensionless; the reduced energy is the action.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import TARGETS, LatticeTarget, Symmetry


@TARGETS.register("phi4")
@dataclass
class Phi4(LatticeTarget):
    """phi^4 on a periodic lattice of `shape` (default 8 x 8), couplings m2 and lam."""

    shape: tuple[int, ...] = (8, 8)
    m2: float = -4.0
    lam: float = 8.0

    def __post_init__(self) -> None:
        super().__post_init__()
        self.name = "phi4"
        if self.lam < 0:
            raise ValueError(f"phi4: lam must be >= 0, got {self.lam}")
        if self.lam == 0 and self.m2 <= 0:
            raise ValueError(f"phi4: with lam = 0 the action is bounded below only for m2 > 0, "
                             f"got m2 = {self.m2}")

    @property
    def symmetry(self) -> Symmetry:
        return Symmetry(translations=True, z2=True)

    def action(self, phi: torch.Tensor) -> torch.Tensor:
        """Euclidean action. phi: [B, *shape] -> [B]."""
        dims = tuple(range(1, phi.ndim))
        density = (2 * len(dims) + self.m2) * phi**2 + self.lam * phi**4
        for mu in dims:
            density = density - 2.0 * phi * torch.roll(phi, -1, mu)
        return density.sum(dims)

    def energy(self, x: torch.Tensor) -> torch.Tensor:
        return self.action(x)

    def free_field_phi2(self) -> float:
        """Analytic <phi_x^2> at lam = 0 (Gaussian, needs m2 > 0):
        (1/V) sum_p 1 / (2 (m2 + sum_mu 4 sin^2(p_mu / 2))), p_mu = 2 pi n / L_mu."""
        grids = torch.meshgrid(*[2 * torch.pi * torch.arange(n, dtype=torch.float64) / n
                                 for n in self.shape], indexing="ij")
        phat2 = sum(4 * torch.sin(p / 2) ** 2 for p in grids)
        return float((1.0 / (2.0 * (self.m2 + phat2))).mean())

    def attrs(self) -> dict:
        return {"shape": list(self.shape), "m2": self.m2, "lam": self.lam}
