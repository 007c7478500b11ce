"""The Flow contract and the registry of complete flow models (a leaf: no flow implementation
is imported here).

A flow q is a normalised density on the target's event space with exact sampling:
  log_prob(x)                   x: [B, *event] -> [B], exact log q(x) (nats)
  sample(n, with_log_prob=True) -> (x [n, *event], log q [n]) (exact), or x alone
  nfe                           function evaluations so far (0 for flows that solve no ODE)
  exact_method                  how log q is computed (e.g. 'closed_form', 'vjp_batched')
  prior                         the base distribution
  push_forward(z)               x = T(z) with the graph to the parameters (energy training)
  pull_back(x)                  z = T^-1(x), no graph (where path gradients start from data)
  training_log_prob(x, est)     the log q used by the likelihood objective: `est` says how it
                                may be estimated (e.g. the Hutchinson trace for a CNF); flows
                                whose exact log q is cheap return it and ignore `est`.
`log_prob` and `sample` are what reweighting relies on: they are never stochastic.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import ConfigError
from ..registry import Registry
from .priors import Prior


@dataclass(frozen=True)
class LikelihoodEstimate:
    """How the likelihood objective may estimate log q in training.

    divergence: 'hutchinson' (stochastic trace, one probe per solve) or 'exact';
    probe: 'rademacher' | 'gaussian'; regularise: also return the kinetic-energy and
    Jacobian-Frobenius integrals of Finlay et al. 2020 (CNFs only).
    """

    divergence: str = "hutchinson"
    probe: str = "rademacher"
    regularise: bool = False


@dataclass
class TrainingLogProb:
    """log q [B] plus the regularisers [B] (zeros when not requested)."""

    log_q: torch.Tensor
    kinetic: torch.Tensor
    jacobian_frob: torch.Tensor


class Flow(nn.Module, metaclass=abc.ABCMeta):
    """Base of every flow model (CNF, coupling flows). See the module docstring."""

    prior: Prior

    @property
    def nfe(self) -> int:
        return 0

    @property
    def exact_method(self) -> str:
        """How the exact log q is computed (recorded in sample files)."""
        return "closed_form"

    @abc.abstractmethod
    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Exact log q(x). x: [B, *event] -> [B]."""

    @abc.abstractmethod
    def sample(self, n: int, with_log_prob: bool = True,
               generator: torch.Generator | None = None, z: torch.Tensor | None = None):
        """n samples (from prior draws `z` when given), with their exact log q if
        with_log_prob. -> (x [n, *event], log_q [n]) or x."""

    def push_forward(self, z: torch.Tensor) -> torch.Tensor:
        """x = T(z) with the graph to the parameters (energy-based training: path gradients).
        z: [B, *event] prior draws -> [B, *event]."""
        raise ConfigError(f"{type(self).__name__} has no differentiable sampling map; the "
                          "energy-based objectives need one")

    def pull_back(self, x: torch.Tensor) -> torch.Tensor:
        """z = T^-1(x) by the same map as push_forward, without a graph (the forward-KL path
        gradient starts its push-forward there). x: [B, *event] -> [B, *event]."""
        raise ConfigError(f"{type(self).__name__} has no inverse sampling map; the forward-KL "
                          "path gradient needs one")

    def training_log_prob(self, x: torch.Tensor,
                          estimate: LikelihoodEstimate = LikelihoodEstimate()) -> TrainingLogProb:
        """Exact log q with gradients (default for flows whose exact log q is cheap)."""
        if estimate.regularise:
            raise ConfigError(f"{type(self).__name__}: the kinetic/Jacobian regularisers need a "
                              "CNF (set kinetic_weight = jacobian_weight = 0)")
        lq = self.log_prob(x)
        zero = torch.zeros_like(lq)
        return TrainingLogProb(lq, zero, zero)


# Complete flows (not vector fields): factory(target=..., prior=..., **params) -> Flow.
FLOW_MODELS: Registry[Flow] = Registry("flow model")
