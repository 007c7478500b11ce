"""Exponential moving average of a module's parameters (Polyak averaging)."""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn


class EMA:
    """shadow <- decay * shadow + (1 - decay) * param after each optimizer step."""

    def __init__(self, module: nn.Module, decay: float):
        self.decay = float(decay)
        self.shadow = {k: v.detach().clone() for k, v in module.state_dict().items()
                       if v.dtype.is_floating_point}

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        for k, v in module.state_dict().items():
            if k in self.shadow:
                self.shadow[k].lerp_(v, 1.0 - self.decay)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.shadow)

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for k, v in state.items():
            self.shadow[k].copy_(v)

    @contextlib.contextmanager
    def applied(self, module: nn.Module) -> Iterator[nn.Module]:
        """Temporarily load the averaged weights into `module`."""
        backup = {k: v.detach().clone() for k, v in module.state_dict().items()}
        module.load_state_dict({**backup, **self.shadow})
        try:
            yield module
        finally:
            module.load_state_dict(backup)
