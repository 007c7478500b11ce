"""The vector-field contract (`VectorField`) and its registry.

A vector field is an nn.Module with forward(t, x) -> dx/dt: t a scalar (or [B]) tensor, x and
the output [B, *target.event_shape]. Particle fields are equivariant to rotations,
translations (they act on the mean-free subspace) and permutations of identical particles;
lattice fields to lattice translations (and the Z2 flip where the action has it).
Factories take `target` (a flowsci Target) plus config params.

Optional closed-form divergence: a field whose `analytic_divergence` is True implements
`divergence(t, x) -> [B]`, the exact trace of d forward / dx, and may override
`forward_and_divergence` to share work between the two. The CNF then uses it for every
'exact' divergence instead of the autograd trace; `flowsci.testing.assert_divergence_exact`
(run on every registered field in the test suite) checks it against the autograd trace.
"""

from __future__ import annotations

import abc

import torch
from torch import nn

from ..registry import Registry


class VectorField(nn.Module, metaclass=abc.ABCMeta):
    """Base of every CNF vector field. x: [B, *event] -> dx/dt: [B, *event]."""

    #: True when `divergence` is exact and cheaper than the autograd trace (may be a property).
    analytic_divergence: bool = False

    @abc.abstractmethod
    def forward(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor: ...

    def divergence(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Exact divergence sum_k d f_k / d x_k: [B]. Only for fields with analytic_divergence."""
        raise TypeError(f"{type(self).__name__} declares no closed-form divergence; "
                        "use flowsci.flows.divergence for the autograd trace")

    def forward_and_divergence(self, t: torch.Tensor, x: torch.Tensor
                               ) -> tuple[torch.Tensor, torch.Tensor]:
        """(dx/dt [B, *event], exact divergence [B]); override to share work between them."""
        return self(t, x), self.divergence(t, x)


VECTOR_FIELDS: Registry[VectorField] = Registry("vector field")


def build_field(spec: dict, target) -> VectorField:
    """Build the field named in a config `model` section {'name': ..., 'params': {...}}."""
    return VECTOR_FIELDS.build(spec["name"], spec.get("params", {}), target=target)


def broadcast_time(t: torch.Tensor, batch: int, like: torch.Tensor) -> torch.Tensor:
    """Scalar or [B] time -> [B, 1] on like's device and dtype."""
    t = torch.as_tensor(t, dtype=like.dtype, device=like.device)
    return t.reshape(-1, 1).expand(batch, 1) if t.numel() > 1 else t.reshape(1, 1).expand(batch, 1)
