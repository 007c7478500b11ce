"""Metropolis-adjusted Langevin (MALA; Roberts & Tweedie 1996).

Proposal x' = x - (eps^2 / 2) grad u(x) + eps xi, xi ~ N(0, I) on the state space, i.e.
q(x'|x) = N(x'; x - (eps^2/2) grad u(x), eps^2 I). Acceptance
    log alpha = u(x) - u(x') + log q(x|x') - log q(x'|x),
    log q(b|a) = -|b - a + (eps^2/2) grad u(a)|^2 / (2 eps^2)   (constants cancel).
"""

from __future__ import annotations

import torch

from .kernels import KERNELS, ChainState, LocalKernel, metropolis
from .potential import sq_norm


def mala_log_proposal(x_to: torch.Tensor, x_from: torch.Tensor, grad_from: torch.Tensor,
                      step_size: float) -> torch.Tensor:
    """log q(x_to | x_from) up to the constant that cancels in the ratio. [C, *event] -> [C]."""
    mean = x_from - 0.5 * step_size**2 * grad_from
    return -sq_norm(x_to - mean) / (2.0 * step_size**2)


def mala_log_alpha(old: ChainState, new: ChainState, step_size: float) -> torch.Tensor:
    """The log acceptance ratio of the move old -> new. [C]."""
    return (old.u - new.u + mala_log_proposal(old.x, new.x, new.grad, step_size)
            - mala_log_proposal(new.x, old.x, old.grad, step_size))


@KERNELS.register("mala")
class MALA(LocalKernel):
    """One MALA step per call (one energy+force evaluation per chain)."""

    def step(self, state: ChainState, step_size: float,
             generator: torch.Generator) -> tuple[ChainState, torch.Tensor]:
        xi = self.noise(state.x, generator)
        x_new = state.x - 0.5 * step_size**2 * state.grad + step_size * xi
        u, g = self.potential.value_and_grad(x_new)
        new = ChainState(x_new, u, g)
        accept, prob = metropolis(mala_log_alpha(state, new, step_size), generator)
        return state.where(accept, new), prob
