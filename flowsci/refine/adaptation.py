"""Step-size adaptation by dual averaging (Hoffman & Gelman 2014, NUTS paper, Alg. 5).

During burn-in each local step updates log eps from the mean acceptance probability a_t of
the chains toward `target`:
    h_t = (1 - 1/(t + t0)) h_{t-1} + (target - a_t) / (t + t0)
    log eps_t = mu - sqrt(t) / gamma * h_t
    log eps_bar_t = t^-kappa log eps_t + (1 - t^-kappa) log eps_bar_{t-1}
with mu = log(10 eps_0). After burn-in `freeze()` fixes eps = eps_bar and `update` becomes
a no-op, so the chains after burn-in are a time-homogeneous p-invariant Markov chain.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass


@dataclass
class DualAveraging:
    """State of the adaptation (a plain dataclass: checkpointed with `asdict`)."""

    step_size: float
    target: float = 0.6
    gamma: float = 0.05
    t0: float = 10.0
    kappa: float = 0.75
    t: int = 0
    h_bar: float = 0.0
    log_eps_bar: float = 0.0
    mu: float = 0.0
    frozen: bool = False

    def __post_init__(self) -> None:
        if not self.step_size > 0:
            raise ValueError(f"step_size must be > 0, got {self.step_size}")
        if not 0 < self.target < 1:
            raise ValueError(f"target_accept must be in (0, 1), got {self.target}")
        if self.t == 0:
            self.mu = math.log(10.0 * self.step_size)
            self.log_eps_bar = math.log(self.step_size)

    def update(self, accept_prob: float) -> float:
        """One adaptation step from the mean acceptance probability; returns the new eps."""
        if self.frozen:
            return self.step_size
        a = accept_prob if math.isfinite(accept_prob) else 0.0
        self.t += 1
        w = 1.0 / (self.t + self.t0)
        self.h_bar = (1 - w) * self.h_bar + w * (self.target - a)
        log_eps = self.mu - math.sqrt(self.t) / self.gamma * self.h_bar
        log_eps = min(log_eps, math.log(1e3 * math.exp(self.mu)))  # keep exp() finite
        eta = self.t ** -self.kappa
        self.log_eps_bar = eta * log_eps + (1 - eta) * self.log_eps_bar
        self.step_size = math.exp(log_eps)
        return self.step_size

    def freeze(self) -> float:
        """End of burn-in: eps = eps_bar from now on (no-op if nothing was adapted)."""
        if not self.frozen and self.t > 0:
            self.step_size = math.exp(self.log_eps_bar)
        self.frozen = True
        return self.step_size

    def state(self) -> dict:
        return asdict(self)
