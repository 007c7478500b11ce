"""Statistics of the refine stage's chains and particles (numpy in, numbers out).

Chains [T, C] (time first): integrated autocorrelation time tau (flowsci.autocorr, rho
averaged over chains), ESS = T C / tau, split R-hat (Gelman et al., BDA3 §11.4: each chain
cut in halves), and the error of the mean from batch means within chains (blocks of
>= 5 tau steps, so blocks are nearly independent; chains are independent by construction).
Particles from resample-move: the error groups particles by their ancestor in the flow pool
(Chan & Lai 2013): duplicates of one flow sample are not independent evidence, whatever the
moves did. Never an i.i.d. bootstrap over correlated draws.
"""

from __future__ import annotations

import math

import numpy as np

from ..autocorr import integrated_autocorr_time


def split_rhat(chains: np.ndarray) -> float:
    """Split R-hat of chains [T, C]; nan for T < 4 or a constant series."""
    chains = np.asarray(chains, dtype=float)
    t = chains.shape[0] // 2
    if t < 2:
        return float("nan")
    halves = np.concatenate([chains[:t], chains[-t:]], axis=1)  # [t, 2C]
    w = halves.var(axis=0, ddof=1).mean()
    b = t * halves.mean(axis=0).var(ddof=1)
    if not w > 0:
        return float("nan")
    return float(math.sqrt(((t - 1) / t * w + b / t) / w))


def tau_int(chains: np.ndarray) -> float:
    """Integrated autocorrelation time (steps) of chains [T, C]; nan if constant."""
    chains = np.asarray(chains, dtype=float)
    if chains.shape[0] < 4 or np.ptp(chains) <= 0:
        return float("nan")
    return max(integrated_autocorr_time(chains), 1.0 / max(chains.shape[0], 1))


def batch_means_error(chains: np.ndarray, tau: float, factor: float = 5.0) -> float:
    """Standard error of the grand mean of chains [T, C] from batch means: blocks of
    ceil(factor * tau) steps within each chain (nan with fewer than 2 blocks)."""
    chains = np.asarray(chains, dtype=float)
    steps = chains.shape[0]
    size = int(math.ceil(factor * tau)) if math.isfinite(tau) else steps
    size = max(1, min(size, steps))
    n_b = steps // size
    if n_b * chains.shape[1] < 2:
        return float("nan")
    means = chains[: n_b * size].reshape(n_b, size, -1).mean(axis=1).ravel()
    return float(means.std(ddof=1) / math.sqrt(len(means)))


def chain_summary(chains: np.ndarray) -> dict[str, float]:
    """mean, err (batch means), tau, ess, rhat of one observable's chains [T, C]."""
    chains = np.asarray(chains, dtype=float)
    tau = tau_int(chains)
    n = chains.size
    ess = n / tau if math.isfinite(tau) else float("nan")
    return {"mean": float(chains.mean()) if n else float("nan"),
            "err": batch_means_error(chains, tau) if math.isfinite(tau) else float("nan"),
            "tau": tau, "ess": ess, "rhat": split_rhat(chains)}


def _ancestry_error(values: np.ndarray, ancestors: np.ndarray) -> tuple[float, int]:
    """(error, number of distinct ancestors); see ancestry_error."""
    values = np.asarray(values, dtype=float)
    _, group = np.unique(np.asarray(ancestors), return_inverse=True)
    n_groups = int(group.max(initial=-1)) + 1
    if len(values) < 2 or n_groups < 2:
        return float("nan"), n_groups
    sums = np.bincount(group, weights=values - values.mean())
    return float(math.sqrt((sums**2).sum()) / len(values)), n_groups


def ancestry_error(values: np.ndarray, ancestors: np.ndarray) -> float:
    """Standard error of the mean of values [N] whose particles descend from `ancestors`
    [N] (Chan & Lai 2013): var = (1/N^2) sum_a (sum_{i: A_i = a} (f_i - mean))^2. nan with
    fewer than two distinct ancestors: the estimator has (ancestors - 1) degrees of freedom,
    and with one ancestor its sum is zero by construction, not a zero error."""
    return _ancestry_error(values, ancestors)[0]


def ancestry_ess(values: np.ndarray, ancestors: np.ndarray) -> float:
    """Effective sample size var(f) / err^2 of a particle estimate, at most the number of
    distinct ancestors (the independent flow samples the particles carry; with few ancestors
    the error estimate itself is noisy and can be near zero); nan if undefined."""
    err, n_ancestors = _ancestry_error(values, ancestors)
    var = float(np.var(values, ddof=1)) if len(values) > 1 else float("nan")
    return min(var / err**2, float(n_ancestors)) if err > 0 else float("nan")
