"""Systematic resampling: an unweighted set of configurations from importance-weighted ones.

With normalised weights w_i (N samples) and M draws, systematic resampling takes one uniform
offset u ~ U[0, 1/M) and the M points u + k/M (k = 0..M-1) on the cumulative weights; sample
i is picked n_i times, with n_i in {floor(M w_i), ceil(M w_i)} and E[n_i] = M w_i, so the
plain mean of any function over the resampled set is an unbiased estimate of its weighted
mean (Kitagawa 1996; lower variance than multinomial resampling). Every draw is one of the
stored samples, exactly.
"""

from __future__ import annotations

import numpy as np

from .estimators import normalized_weights


def systematic_resample(log_w: np.ndarray, n: int, seed: int | None = 0) -> np.ndarray:
    """Indices [n] (sorted, with repeats) into the samples of log-weights `log_w` [N]
    (unnormalised; -inf or nan for samples that must never be drawn)."""
    if n < 1:
        raise ValueError(f"systematic_resample: n must be >= 1, got {n}")
    lw = np.asarray(log_w, dtype=float)
    lw = np.where(np.isfinite(lw), lw, -np.inf)
    if not np.isfinite(lw).any():
        raise ValueError("systematic_resample: no sample has a finite weight")
    w = normalized_weights(lw)
    cdf = np.cumsum(w)
    cdf[-1] = 1.0  # round-off: the last point must fall inside
    u = (np.random.default_rng(seed).random() + np.arange(n)) / n
    return np.minimum(np.searchsorted(cdf, u, side="right"), len(w) - 1)
