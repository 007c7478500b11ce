"""Hamiltonian Monte Carlo with a leapfrog integrator (Duane et al. 1987; Neal 2011).

Velocities v ~ N(0, M^-1) on the state space, H(x, v) = u(x) + v^T M v / 2; n_leapfrog
steps of size eps (half kick, drift, half kick, each force M-orthogonally projected so the
trajectory stays on the zero-centroid subspace: RATTLE for a linear constraint, still
volume-preserving and reversible), then accept with min(1, exp(H(x, v) - H(x', v'))).
mass: 'unit', or 'atomic' (atomic masses of a molecule's elements: molecular targets only).
"""

from __future__ import annotations

import torch

from .kernels import KERNELS, ChainState, LocalKernel, metropolis
from .potential import Potential


def leapfrog(potential: Potential, state: ChainState, v: torch.Tensor, step_size: float,
             n_steps: int) -> tuple[ChainState, torch.Tensor]:
    """(end state, end velocity) of n_steps leapfrog steps from (state, v)."""
    x, g = state.x, state.grad
    u = state.u
    accel = lambda grad: potential.project(potential.inv_mass(grad))  # noqa: E731
    v = v - 0.5 * step_size * accel(g)
    for i in range(n_steps):
        x = x + step_size * v
        u, g = potential.value_and_grad(x)
        v = v - (step_size if i < n_steps - 1 else 0.5 * step_size) * accel(g)
    return ChainState(x, u, g), v


def hamiltonian(potential: Potential, state: ChainState, v: torch.Tensor) -> torch.Tensor:
    """H = u + v^T M v / 2 per chain [C]."""
    return state.u + 0.5 * potential.mass_dot(v)


@KERNELS.register("hmc")
class HMC(LocalKernel):
    """n_leapfrog energy+force evaluations per chain and call."""

    def __init__(self, potential: Potential, n_leapfrog: int = 5):
        super().__init__(potential)
        if n_leapfrog < 1:
            raise ValueError(f"n_leapfrog must be >= 1, got {n_leapfrog}")
        self.n_leapfrog = int(n_leapfrog)

    def velocity(self, like: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """v ~ N(0, M^-1) conditioned on the state space."""
        z = torch.randn(like.shape, generator=generator, dtype=like.dtype)
        if self.potential.masses is not None:
            z = z / torch.sqrt(self.potential.masses.to(z))[:, None]
        return self.potential.project(z)

    def step(self, state: ChainState, step_size: float,
             generator: torch.Generator) -> tuple[ChainState, torch.Tensor]:
        v = self.velocity(state.x, generator)
        new, v_new = leapfrog(self.potential, state, v, step_size, self.n_leapfrog)
        log_alpha = hamiltonian(self.potential, state, v) - hamiltonian(self.potential, new, v_new)
        accept, prob = metropolis(log_alpha, generator)
        return state.where(accept, new), prob
