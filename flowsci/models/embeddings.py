"""Smooth embeddings of time and particle types shared by the vector fields."""

from __future__ import annotations

import math

import torch
from torch import nn


class FourierTime(nn.Module):
    """t [B, 1] -> [B, 2*n_freq + 1]: (t, sin(2^k pi t), cos(2^k pi t)) for k < n_freq."""

    def __init__(self, n_freq: int = 4):
        super().__init__()
        self.register_buffer("freqs", math.pi * 2.0 ** torch.arange(n_freq), persistent=False)
        self.dim = 2 * n_freq + 1

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        a = t * self.freqs.to(t.dtype)
        return torch.cat([t, torch.sin(a), torch.cos(a)], dim=-1)


def mlp(d_in: int, d_hidden: int, d_out: int, n_layers: int = 2, act=nn.SiLU,
        last_act: bool = False) -> nn.Sequential:
    """A smooth MLP (SiLU by default: the divergence needs second derivatives)."""
    layers: list[nn.Module] = []
    d = d_in
    for _ in range(n_layers - 1):
        layers += [nn.Linear(d, d_hidden), act()]
        d = d_hidden
    layers.append(nn.Linear(d, d_out))
    if last_act:
        layers.append(act())
    return nn.Sequential(*layers)
