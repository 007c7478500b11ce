"""Leaf helpers for particle coordinates (no flowsci imports): centring on the mean-free subspace."""

from __future__ import annotations

import torch


def remove_mean(x: torch.Tensor) -> torch.Tensor:
    """Centre particle configurations. x: [B, n, d] -> [B, n, d] with zero centroid."""
    return x - x.mean(dim=-2, keepdim=True)
