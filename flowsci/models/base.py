"""The VectorField contract and its registry.

A vector field is an nn.Module with forward(t, x) -> dx/dt, t a scalar tensor, x and the
output [B, *target.event_shape]. Factories take `target` (a flowsci Target) plus config params.
"""

from __future__ import annotations

import torch
from torch import nn

from ..registry import Registry

VECTOR_FIELDS: Registry[nn.Module] = Registry("vector field")


def build_field(spec: dict, target) -> nn.Module:
    """Build the field named in a config `model` section {'name': ..., 'params': {...}}."""
    return VECTOR_FIELDS.build(spec["name"], spec.get("params", {}), target=target)


def broadcast_time(t: torch.Tensor, batch: int, like: torch.Tensor) -> torch.Tensor:
    """Scalar or [B] time -> [B, 1] on like's device and dtype."""
    t = torch.as_tensor(t, dtype=like.dtype, device=like.device)
    return t.reshape(-1, 1).expand(batch, 1) if t.numel() > 1 else t.reshape(1, 1).expand(batch, 1)
