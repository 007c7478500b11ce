"""Per-chain step-size adaptation during burn-in: dual averaging (Nesterov 2009), as in
Hoffman & Gelman, JMLR 15, 1593 (2014), Algorithm 5, applied to each chain's log step size.

With alpha_t the Metropolis acceptance probability min(1, e^{log a}) of the t-th move:
  Hbar_t = (1 - 1/(t + t0)) Hbar_{t-1} + (delta - alpha_t) / (t + t0)
  x_t    = mu - sqrt(t) / gamma * Hbar_t                (log step of the next move)
  xbar_t = t^-kappa x_t + (1 - t^-kappa) xbar_{t-1}
mu = log(h0) (the configured step size), gamma = 0.05, t0 = 10, kappa = 0.75 (their values);
x_t is clipped to log(h0) + [-20, 10]. Adaptation runs for the first ADAPT_FRACTION of the
burn-in; the step of each chain is then frozen at exp(xbar) for the rest of the burn-in and
the whole kept run, so every kept chain is a time-homogeneous, valid Markov chain.
"""

from __future__ import annotations

import math

import torch

ADAPT_FRACTION = 0.8
GAMMA, T0, KAPPA = 0.05, 10.0, 0.75


def adapt_steps(burn_in: int, adapt: bool) -> int:
    """Number of burn-in steps during which step sizes adapt."""
    return int(ADAPT_FRACTION * burn_in) if adapt else 0


def init_state(h0: float, n_chains: int) -> dict[str, torch.Tensor]:
    """Adaptation state: log_h (current) [C], log_h_bar (averaged) [C], h_bar (Hbar) [C]."""
    log_h = torch.full((n_chains,), math.log(h0), dtype=torch.float64)
    return {"log_h": log_h, "log_h_bar": log_h.clone(),
            "h_bar": torch.zeros(n_chains, dtype=torch.float64)}


def step_size(ad: dict[str, torch.Tensor], i: int, n_adapt: int) -> torch.Tensor:
    """Step sizes [C] for step i (0-based): adapting while i < n_adapt, frozen after."""
    return torch.exp(ad["log_h"] if i < n_adapt else ad["log_h_bar"])


def update(ad: dict[str, torch.Tensor], i: int, accept_prob: torch.Tensor, target: float,
           h0: float) -> dict[str, torch.Tensor]:
    """Dual-averaging update after step i (0-based, t = i + 1). accept_prob: [C] in [0, 1]."""
    t = i + 1.0
    alpha = torch.nan_to_num(accept_prob.to(torch.float64), nan=0.0).clamp(0.0, 1.0)
    h_bar = (1 - 1 / (t + T0)) * ad["h_bar"] + (target - alpha) / (t + T0)
    mu = math.log(h0)
    log_h = (mu - math.sqrt(t) / GAMMA * h_bar).clamp(mu - 20.0, mu + 10.0)
    w = t ** -KAPPA
    return {"log_h": log_h, "log_h_bar": w * log_h + (1 - w) * ad["log_h_bar"], "h_bar": h_bar}


def accept_probability(log_a: torch.Tensor) -> torch.Tensor:
    """min(1, exp(log_a)) with NaN (a diverged move) as 0. log_a: [C]."""
    return torch.nan_to_num(log_a, nan=-math.inf).clamp(max=0.0).exp()
