"""Integrated autocorrelation time (Sokal's automatic windowing, as in emcee)."""

from __future__ import annotations

import numpy as np


def autocorr_function(x: np.ndarray) -> np.ndarray:
    """Normalised autocorrelation of a 1D series (FFT). x: [T] -> [T]."""
    x = np.asarray(x, dtype=float)
    n = len(x)
    f = np.fft.rfft(x - x.mean(), n=2 * n)
    acf = np.fft.irfft(f * np.conjugate(f))[:n]
    return acf / acf[0] if acf[0] > 0 else np.ones(n)


def integrated_autocorr_time(chains: np.ndarray, c: float = 5.0) -> float:
    """tau_int = 1 + 2 sum_t rho(t), window M = smallest with M >= c * tau(M).

    chains: [T] or [T, n_chains] (time first); rho averaged over chains. Returns tau in steps.
    """
    chains = np.asarray(chains, dtype=float)
    if chains.ndim == 1:
        chains = chains[:, None]
    if chains.shape[0] < 2:
        return float("nan")
    rho = np.mean([autocorr_function(chains[:, k]) for k in range(chains.shape[1])], axis=0)
    taus = 2.0 * np.cumsum(rho) - 1.0
    m = np.arange(len(taus)) < c * taus
    window = int(np.argmin(m)) if not m.all() else len(taus) - 1
    return float(taus[window])
