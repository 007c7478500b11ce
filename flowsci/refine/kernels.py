"""p-invariant local kernels on the target, selected by name (`runs.<r>.refine.kernel`).

A kernel moves a batch of chains one Metropolis-Hastings step: step(state, step_size,
generator) -> (new state, acceptance probabilities [C]). Each chain's move is exactly
p-invariant for any fixed step size (the adaptation changes it during burn-in only).
`kinds` lists the target kinds a kernel applies to; `molecular` kernels (atomic masses) need
a target with atomic numbers.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch

from ..registry import Registry
from .potential import Potential


@dataclass
class ChainState:
    """C chains: x [C, *event], reduced energies u [C] (kT), gradients grad [C, *event]."""

    x: torch.Tensor
    u: torch.Tensor
    grad: torch.Tensor

    def where(self, accept: torch.Tensor, other: "ChainState") -> "ChainState":
        """Per chain: `other` where accept [C] (bool) else self."""
        m = accept.view(-1, *[1] * (self.x.ndim - 1))
        return ChainState(torch.where(m, other.x, self.x), torch.where(accept, other.u, self.u),
                          torch.where(m, other.grad, self.grad))


def initial_state(potential: Potential, x: torch.Tensor) -> ChainState:
    """The chain state at configurations x [C, *event] (one energy+force evaluation each)."""
    u, g = potential.value_and_grad(x)
    return ChainState(x.detach().clone(), u, g)


def metropolis(log_alpha: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor,
                                                                              torch.Tensor]:
    """(accept [C] bool, acceptance probability min(1, exp(log_alpha)) [C]); nan -> reject."""
    log_alpha = torch.nan_to_num(log_alpha, nan=-float("inf"))
    prob = torch.exp(torch.clamp(log_alpha, max=0.0))
    log_u = torch.log(torch.rand(log_alpha.shape, generator=generator, dtype=log_alpha.dtype))
    return log_u < log_alpha, prob


class LocalKernel(ABC):
    """Base of the local kernels; subclasses implement `step`."""

    kinds: tuple[str, ...] = ("particles", "lattice")
    molecular: bool = False

    def __init__(self, potential: Potential):
        self.potential = potential

    def noise(self, like: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Standard normal draws on the state space, shaped like `like`."""
        z = torch.randn(like.shape, generator=generator, dtype=like.dtype)
        return self.potential.project(z)

    @abstractmethod
    def step(self, state: ChainState, step_size: float,
             generator: torch.Generator) -> tuple[ChainState, torch.Tensor]:
        """One MH step of every chain: (new state, acceptance probabilities [C])."""


KERNELS: Registry[LocalKernel] = Registry("refine kernel")


def build_kernel(name: str, potential: Potential, kind: str, params: dict | None = None,
                 config_key: str | None = None) -> LocalKernel:
    """The kernel `name` for a target of `kind`; ValueError for a kind it does not apply to."""
    factory = KERNELS.get(name)
    if kind not in factory.kinds:
        raise ValueError(f"kernel {name!r} applies to {'/'.join(factory.kinds)} targets only, "
                         f"not to a {kind} target")
    return KERNELS.build(name, params or {}, config_key=config_key, potential=potential)
