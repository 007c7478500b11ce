"""Base distributions of the CNF: mean-free Gaussian for particles, standard Gaussian for lattices."""

from __future__ import annotations

import abc
import math

import torch
from torch import nn

from ..geometry import remove_mean
from ..registry import Registry
from ..systems.base import Target

PRIORS: Registry["Prior"] = Registry("prior")


def _randn(shape: tuple[int, ...], generator: torch.Generator | None,
           ref: torch.Tensor) -> torch.Tensor:
    """Normal draws from `generator` (on its own device, so a CPU generator gives the same
    numbers whatever the model's device), returned on ref's device and dtype."""
    dev = generator.device if generator is not None else ref.device
    return torch.randn(shape, generator=generator, device=dev, dtype=ref.dtype).to(ref.device)


class Prior(nn.Module, metaclass=abc.ABCMeta):
    """Base distribution: sample(n) -> [n, *event_shape]; log_prob(x) -> [B] (nats)."""

    event_shape: tuple[int, ...]

    @abc.abstractmethod
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor: ...

    @abc.abstractmethod
    def log_prob(self, x: torch.Tensor) -> torch.Tensor: ...


@PRIORS.register("mean_free_gaussian")
class MeanFreeGaussian(Prior):
    """Isotropic Gaussian on the (n-1)*d dimensional subspace of zero centroid.

    log p(x) = -|x|^2 / (2 s^2) - (n-1) d / 2 * log(2 pi s^2), for centred x: [B, n, d].
    """

    def __init__(self, n_particles: int, dim: int, scale: float = 1.0):
        super().__init__()
        self.event_shape = (n_particles, dim)
        self.scale = float(scale)
        self.dof = (n_particles - 1) * dim
        self.register_buffer("_ref", torch.zeros(()), persistent=False)  # tracks device/dtype

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return remove_mean(_randn((n, *self.event_shape), generator, self._ref)) * self.scale

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        x = remove_mean(x)
        sq = (x * x).flatten(1).sum(-1)
        return -0.5 * sq / self.scale**2 - 0.5 * self.dof * math.log(2 * math.pi * self.scale**2)


@PRIORS.register("gaussian")
class StandardGaussian(Prior):
    """N(0, s^2 I) on the full event space (lattices). x: [B, *shape]."""

    def __init__(self, shape: tuple[int, ...], scale: float = 1.0):
        super().__init__()
        self.event_shape = tuple(shape)
        self.scale = float(scale)
        self.dof = math.prod(self.event_shape)
        self.register_buffer("_ref", torch.zeros(()), persistent=False)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.scale * _randn((n, *self.event_shape), generator, self._ref)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        sq = (x * x).flatten(1).sum(-1)
        return -0.5 * sq / self.scale**2 - 0.5 * self.dof * math.log(2 * math.pi * self.scale**2)


def prior_for(target: Target, scale: float = 1.0) -> Prior:
    """The default prior for a target's kind."""
    if target.kind == "particles":
        return MeanFreeGaussian(target.n_particles, target.dim, scale)
    return StandardGaussian(target.event_shape, scale)
