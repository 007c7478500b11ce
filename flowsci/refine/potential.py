"""The target as the local kernels see it: reduced energy u(x) (kT), its gradient by
autograd, the state space and per-particle masses.

Flows on particles live on the zero-centroid subspace (mean-free prior, equivariant field),
so their log q is a density there: local moves must stay on it, or the global move's ratio
q(x)/q(x') would compare densities on different spaces. `project` maps a tangent vector
(noise, gradient) onto the state space: centring for translation-invariant particles, the
identity for lattices. With masses m_i the projection of a velocity is M-orthogonal
(v - M^-1 1 (1^T v) / (1^T M^-1 1)), the exact conditional of N(0, M^-1) given zero
centroid velocity; with unit masses it is plain centring.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch


@dataclass
class Potential:
    """energy: x [B, *event] -> u [B] (differentiable); centre: project onto zero centroid
    (particles, event [n, d]); masses: [n] per particle (None: unit masses).
    n_evals counts energy+force evaluations (configurations)."""

    energy: Callable[[torch.Tensor], torch.Tensor]
    centre: bool = False
    masses: torch.Tensor | None = None
    n_evals: int = field(default=0)

    def project(self, v: torch.Tensor) -> torch.Tensor:
        """A tangent vector [B, *event] on the state space (M-orthogonal with masses)."""
        if not self.centre:
            return v
        if self.masses is None:
            return v - v.mean(dim=-2, keepdim=True)
        inv_m = (1.0 / self.masses).to(v)[:, None]  # [n, 1]
        lam = v.sum(dim=-2, keepdim=True) / inv_m.sum()
        return v - inv_m * lam

    def inv_mass(self, v: torch.Tensor) -> torch.Tensor:
        """M^-1 v for v [B, n, d] (v itself with unit masses or on lattices)."""
        return v if self.masses is None else v / self.masses.to(v)[:, None]

    def mass_dot(self, v: torch.Tensor) -> torch.Tensor:
        """v^T M v per configuration, [B, *event] -> [B]."""
        w = v * v if self.masses is None else v * v * self.masses.to(v)[:, None]
        return w.flatten(1).sum(-1)

    def value_and_grad(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(u [B], grad u [B, *event], the gradient on the state space: centred for
        particles); non-finite energies become +inf with a zero gradient (rejected)."""
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            u = self.energy(xg)
            (g,) = torch.autograd.grad(u.sum(), xg)
        self.n_evals += len(x)
        u, g = u.detach().to(x.dtype), g.detach()
        if self.centre:
            g = g - g.mean(dim=-2, keepdim=True)
        bad = ~torch.isfinite(u) | ~torch.isfinite(g.flatten(1)).all(1)
        if bad.any():
            u = torch.where(bad, torch.full_like(u, float("inf")), u)
            g = torch.where(bad.view(-1, *[1] * (g.ndim - 1)), torch.zeros_like(g), g)
        return u, g


def sq_norm(v: torch.Tensor) -> torch.Tensor:
    """|v|^2 per configuration, [B, *event] -> [B]."""
    return (v * v).flatten(1).sum(-1)


def atomic_masses(target) -> torch.Tensor:
    """Atomic masses [n] (u) of a molecular target's atoms; ValueError for targets without
    elements (lattices, generic particles)."""
    z = list(getattr(target, "atomic_numbers", []) or [])
    if getattr(target, "kind", None) != "particles" or not z or min(z) <= 0:
        raise ValueError(f"mass: atomic needs a molecular target with elements; "
                         f"{getattr(target, 'name', 'the target')} ({target.kind}) has none")
    from ase.data import atomic_masses as table
    return torch.as_tensor([float(table[i]) for i in z], dtype=torch.float64)


def potential_for(target, mass: str = "unit") -> Potential:
    """The Potential of a flowsci Target: centred for translation-invariant particles;
    mass 'unit' or 'atomic' (molecules only)."""
    centre = target.kind == "particles" and target.symmetry.translations
    masses = atomic_masses(target) if mass == "atomic" else None
    return Potential(lambda x: target.energy(x).to(x.dtype), centre=centre, masses=masses)
