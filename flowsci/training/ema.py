"""Exponential moving average of a module's parameters (Polyak averaging)."""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn


class EMA:
    """shadow <- d * shadow + (1 - d) * param after each optimizer step, with the warm-up
    d = min(decay, (1 + n) / (10 + n)) after n updates, so that short runs are not dominated
    by the initial weights (decay 0.999 alone averages over ~1000 steps)."""

    def __init__(self, module: nn.Module, decay: float):
        self.decay = float(decay)
        self.updates = 0
        self.shadow = {k: v.detach().clone() for k, v in module.state_dict().items()
                       if v.dtype.is_floating_point}

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        d = min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))
        self.updates += 1
        for k, v in module.state_dict().items():
            if k in self.shadow:
                self.shadow[k].lerp_(v, 1.0 - d)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {**self.shadow, "__updates__": torch.tensor(self.updates)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for k, v in state.items():
            if k == "__updates__":
                self.updates = int(v)
            else:
                self.shadow[k].copy_(v)

    def weights(self) -> dict[str, torch.Tensor]:
        """The averaged parameters, keyed like the module's state_dict."""
        return dict(self.shadow)

    @contextlib.contextmanager
    def applied(self, module: nn.Module) -> Iterator[nn.Module]:
        """Temporarily load the averaged weights into `module`."""
        backup = {k: v.detach().clone() for k, v in module.state_dict().items()}
        module.load_state_dict({**backup, **self.weights()})
        try:
            yield module
        finally:
            module.load_state_dict(backup)
