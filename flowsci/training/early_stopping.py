"""Early stopping on a validation metric, keeping the best weights.

Config: runs.<run>.training.early_stopping = {metric, patience, min_delta}. After each
validation (every training.val_every steps) the metric of the EMA weights is compared with the
best so far: an improvement by more than min_delta (nats) stores those weights and resets the
count; otherwise the count grows, and training stops once `patience` validations in a row have
not improved. The run's model is then the best weights, not the last. Metrics:
- `val_nll`: the validation NLL with the exact trace (what reweighting depends on; costs an
  exact log q per validation sample);
- `val_loss`: the training objective on the validation samples at a fixed seed (the flow-
  matching regression loss: cheap, no ODE solve; for `likelihood` its own NLL estimate).
The state (best value and step, count, best weights) is part of every checkpoint, so a resumed
run stops where an uninterrupted one would.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

METRICS = ("val_nll", "val_loss")


@dataclass
class EarlyStopping:
    """patience: validations without improvement before stopping (>= 1); min_delta >= 0."""

    patience: int
    min_delta: float = 0.0
    metric: str = "val_nll"
    best: float = math.inf
    best_step: int = 0
    bad: int = 0
    best_weights: dict[str, torch.Tensor] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ValueError(f"early_stopping.metric must be one of {METRICS}, got {self.metric!r}")
        if int(self.patience) < 1 or not (math.isfinite(self.min_delta) and self.min_delta >= 0):
            raise ValueError("early_stopping needs patience >= 1 and a finite min_delta >= 0")
        self.patience = int(self.patience)

    @classmethod
    def from_config(cls, section: dict | None) -> "EarlyStopping | None":
        return None if not section else cls(**section)

    def observe(self, step: int, value: float, weights: dict[str, torch.Tensor]) -> None:
        """Record one validation of the weights (EMA) at `step`."""
        if math.isfinite(value) and value < self.best - self.min_delta:
            self.best, self.best_step, self.bad = float(value), int(step), 0
            self.best_weights = {k: v.detach().cpu().clone() for k, v in weights.items()}
        else:
            self.bad += 1

    @property
    def should_stop(self) -> bool:
        return self.bad >= self.patience

    def state(self) -> dict:
        return {"best": self.best, "best_step": self.best_step, "bad": self.bad,
                "best_weights": self.best_weights or {}}

    def initial_state(self) -> dict:
        """The state before any validation."""
        return {"best": math.inf, "best_step": 0, "bad": 0, "best_weights": {}}

    def load(self, state: dict | None) -> None:
        """Restore from a checkpoint's `early_stopping` entry (absent: start afresh)."""
        if not state:
            return
        self.best, self.best_step = float(state["best"]), int(state["best_step"])
        self.bad = int(state["bad"])
        self.best_weights = dict(state["best_weights"]) or None


def validation_loss(objective, flow, x: torch.Tensor, seed: int = 0) -> float:
    """The objective on x with its random draws (times, prior samples, probes) at a fixed
    seed, leaving the training RNG untouched; NaN for an empty x."""
    if len(x) == 0:
        return float("nan")
    devices = [x.device] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        loss, _ = objective(flow, x)
    return float(loss.detach())
