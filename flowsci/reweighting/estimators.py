"""Importance reweighting of flow samples to the Boltzmann distribution p(x) ∝ exp(-u(x)).

Pure functions on numpy arrays. For N flow samples x_i ~ q with exact log q(x_i) and reduced
energies u(x_i) (units of kT):

    log w_i = -u(x_i) - log q(x_i),     <O>_p ≈ sum_i w_i O(x_i) / sum_i w_i

(self-normalised importance sampling). Diagnostics: Kish ESS, the largest normalised weights,
the Pareto k̂ of the weight tail (Vehtari et al., PSIS; k̂ > 0.7 means the estimates are not
trustworthy). Error bars: nonparametric bootstrap over samples (multinomial resampling,
weights renormalised in each replicate), which also covers ratios such as free energies.
The independence Metropolis-Hastings alternative lives in `flowsci.reweighting.mh`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np
from scipy.special import logsumexp

from ..autocorr import integrated_autocorr_time

Array = np.ndarray


# --------------------------------------------------------------------------- weights

def log_weights(u: Array, log_q: Array) -> Array:
    """log w = -u - log q; non-finite entries (failed solves) become -inf. [N], [N] -> [N]."""
    lw = -np.asarray(u, dtype=float) - np.asarray(log_q, dtype=float)
    return np.where(np.isfinite(lw), lw, -np.inf)


def normalized_weights(log_w: Array | None, n: int | None = None) -> Array:
    """Self-normalised weights summing to 1 (uniform if log_w is None, then `n` is needed)."""
    if log_w is None:
        if n is None:
            raise ValueError("normalized_weights: need log_w or n")
        return np.full(n, 1.0 / n)
    lw = np.asarray(log_w, dtype=float)
    if not np.isfinite(lw).any():
        raise ValueError("normalized_weights: no finite log-weight")
    return np.exp(lw - logsumexp(lw))


def normalized_log_weights(log_w: Array) -> Array:
    """log of the self-normalised weights (log-sum-exp = 0). [N] -> [N]."""
    lw = np.asarray(log_w, dtype=float)
    return lw - logsumexp(lw)


def kish_ess(log_w: Array) -> float:
    """Kish effective sample size (sum w)^2 / sum w^2, in [1, N]."""
    w = normalized_weights(log_w)
    return float(1.0 / np.sum(w * w))


def ess_fraction(log_w: Array) -> float:
    """Kish ESS divided by the number of samples, in [1/N, 1]."""
    return kish_ess(log_w) / len(log_w)


def top_weights(log_w: Array, k: int = 10) -> Array:
    """The k largest normalised weights, largest first. -> [min(k, N)]."""
    w = normalized_weights(log_w)
    return np.sort(w)[::-1][:k]


def log_mean_weight(log_w: Array) -> float:
    """log (1/N) sum_i w_i: an unbiased-in-w estimate of log Z_p (q normalised), i.e. -F in kT."""
    lw = np.asarray(log_w, dtype=float)
    return float(logsumexp(lw) - np.log(len(lw)))


# --------------------------------------------------------------------------- Pareto k̂

def _gpd_fit(x: Array) -> tuple[float, float]:
    """Zhang & Stephens (2009) posterior-mean fit of a generalised Pareto distribution.

    x: sorted ascending positive exceedances [M]. Returns (k, sigma) with the weakly
    informative prior on k of Vehtari et al. (PSIS), as in arviz/loo.
    """
    n = len(x)
    m = 30 + int(np.sqrt(n))
    b = 1.0 - np.sqrt(m / (np.arange(1, m + 1) - 0.5))
    b /= 3.0 * x[int(n / 4 + 0.5) - 1]
    b += 1.0 / x[-1]
    k = np.log1p(-b[:, None] * x).mean(axis=1)
    len_scale = n * (np.log(-(b / k)) - k - 1.0)
    post = 1.0 / np.exp(len_scale - len_scale[:, None]).sum(axis=1)
    keep = post >= 10 * np.finfo(float).eps
    b, post = b[keep], post[keep] / post[keep].sum()
    b_post = float(np.sum(b * post))
    k_post = float(np.log1p(-b_post * x).mean())
    sigma = -k_post / b_post
    k_post = (n * k_post + 10 * 0.5) / (n + 10)
    return k_post, sigma


def pareto_khat(log_w: Array, tail: int | None = None) -> float:
    """Pareto shape k̂ of the largest weights (PSIS diagnostic, Vehtari et al. 2024).

    tail: number of largest weights fitted, default ceil(min(N/5, 3 sqrt(N))) as in the
    reference implementations (ArviZ `psislw` and R `loo`, with r_eff = 1 for independent
    samples), so k̂ equals theirs. k̂ < 0.5: finite variance; 0.5-0.7: usable; > 0.7: the
    importance-sampling estimate is unreliable. Returns nan for fewer than 10 samples or a
    degenerate (constant) tail.
    """
    lw = np.asarray(log_w, dtype=float)
    lw = lw[np.isfinite(lw)]
    n = len(lw)
    m = int(tail or np.ceil(min(n / 5, 3 * np.sqrt(n))))
    if n < 10 or m < 5:
        return float("nan")
    lw = np.sort(lw - lw.max())
    cutoff = lw[-m - 1]
    exceed = np.exp(lw[-m:]) - np.exp(cutoff)
    exceed = exceed[exceed > 0]
    if len(exceed) < 5 or np.ptp(exceed) <= 0:
        return float("nan")
    return _gpd_fit(exceed)[0]


# --------------------------------------------------------------------------- estimates

@dataclass(frozen=True)
class Binned:
    """A per-sample histogram feature: bin index of each of the m values of each sample.

    idx: int [N, m] with values in [0, n_bins] (n_bins = out of range, dropped). Its weighted
    mean is the expected fraction of a sample's values per bin, shape [n_bins].
    """

    idx: Array
    n_bins: int

    @staticmethod
    def from_values(values: Array, edges: Array) -> "Binned":
        """values [N] or [N, m]; edges [n_bins + 1] ascending."""
        v = np.asarray(values, dtype=float)
        v = v.reshape(len(v), -1)
        nb = len(edges) - 1
        i = np.searchsorted(edges, v, side="right") - 1
        i[v == edges[-1]] = nb - 1
        i[(i < 0) | (i >= nb) | ~np.isfinite(v)] = nb
        return Binned(i.astype(np.int64), nb)


Feature = Array | Binned


def weighted_means(features: Mapping[str, Feature], w: Array) -> dict[str, Array]:
    """sum_i w_i f_i for each feature (w normalised). Dense [N, ...] -> [...]; Binned -> [n_bins]."""
    out = {}
    for name, f in features.items():
        if isinstance(f, Binned):
            m = f.idx.shape[1]
            counts = np.bincount(f.idx.ravel(), weights=np.repeat(w, m), minlength=f.n_bins + 1)
            out[name] = counts[: f.n_bins] / m
        else:
            f = np.asarray(f, dtype=float)
            out[name] = np.tensordot(w, f, axes=(0, 0))
    return out


@dataclass
class Estimate:
    """A value with a bootstrap standard error (same shape) and the replicates [B, ...]."""

    value: Array
    err: Array
    replicates: Array | None = None

    def interval(self, level: float = 0.68) -> tuple[Array, Array]:
        """Percentile bootstrap interval at `level`."""
        a = (1.0 - level) / 2
        return (np.nanquantile(self.replicates, a, axis=0),
                np.nanquantile(self.replicates, 1 - a, axis=0))


Finalize = Callable[[dict[str, Array]], dict[str, Array]]


def block_length(series: Array, factor: float = 5.0) -> int:
    """Block length for a block bootstrap of a time-ordered series [N]: `factor` times its
    integrated autocorrelation time (so blocks are nearly independent), at most N / 10 (at
    least ten blocks), at least 1."""
    series = np.asarray(series, dtype=float)
    if len(series) < 20 or np.ptp(series) <= 0:
        return 1
    tau = integrated_autocorr_time(series)
    if not np.isfinite(tau):
        return 1
    return int(max(1, min(np.ceil(factor * max(tau, 1.0)), len(series) // 10)))


def _resample_counts(rng: np.random.Generator, n: int, size: int, block: int) -> Array:
    """[size, n] counts of each sample in bootstrap resamples: multinomial for block = 1,
    else moving blocks (Künsch 1989): ceil(n / block) blocks of `block` consecutive samples
    with uniform random starts, cut to n samples."""
    if block <= 1:
        return rng.multinomial(n, np.full(n, 1.0 / n), size=size)
    block = min(block, n)
    n_blocks = -(-n // block)
    starts = rng.integers(0, n - block + 1, size=(size, n_blocks))
    idx = (starts[:, :, None] + np.arange(block)).reshape(size, -1)[:, :n]
    return np.stack([np.bincount(row, minlength=n) for row in idx])


def estimate(features: Mapping[str, Feature], log_w: Array | None = None,
             finalize: Finalize | None = None, n_boot: int = 200, seed: int = 0,
             chunk: int = 16, block: int = 1) -> dict[str, Estimate]:
    """Self-normalised estimates of functions of expectations, with bootstrap errors.

    features: name -> per-sample values (dense [N, ...] or Binned). log_w: [N] or None
    (equal weights: plain sample means, e.g. for MD data or raw flow samples). finalize maps
    the dict of weighted means to the dict of outputs (default: the means themselves); it may
    be nonlinear (variances, ratios, logs). The error is the standard deviation of the
    outputs over `n_boot` resamples of the N samples: multinomial (independent samples, e.g.
    a flow's) or, with block > 1, a moving-block bootstrap for time-ordered correlated samples
    (MCMC/MD reference data; see block_length).
    """
    finalize = finalize or (lambda d: d)
    n = _n_samples(features)
    lw = np.zeros(n) if log_w is None else np.asarray(log_w, dtype=float)
    if len(lw) != n:
        raise ValueError(f"estimate: {len(lw)} log-weights for {n} samples")
    lw = np.where(np.isfinite(lw), lw, -np.inf)
    base = normalized_weights(lw)
    point = {k: np.asarray(v, dtype=float) for k, v in finalize(weighted_means(features, base)).items()}
    rng = np.random.default_rng(seed)
    reps: dict[str, list] = {k: [] for k in point}
    with np.errstate(divide="ignore", invalid="ignore"):
        for start in range(0, n_boot, chunk):
            counts = _resample_counts(rng, n, min(chunk, n_boot - start), block)
            for c in counts:
                wb = base * c
                s = wb.sum()
                if s <= 0:  # every resampled point has zero weight
                    for k in point:
                        reps[k].append(np.full(point[k].shape, np.nan))
                    continue
                out = finalize(weighted_means(features, wb / s))
                for k in point:
                    reps[k].append(np.asarray(out[k], dtype=float))
    result = {}
    for k, v in point.items():
        r = np.array(reps[k]) if n_boot else np.empty((0, *v.shape))
        with warnings.catch_warnings():  # all-nan entries (e.g. undefined effective mass)
            warnings.simplefilter("ignore", RuntimeWarning)
            # one sample (or one with non-zero weight): every resample is that sample, so
            # the spread is rounding noise (~1e-14), not an error bar; report none
            enough = len(r) > 1 and np.count_nonzero(base) > 1
            err = np.nanstd(r, axis=0, ddof=1) if enough else np.full(v.shape, np.nan)
        result[k] = Estimate(v, np.asarray(err), r)
    return result


def _n_samples(features: Mapping[str, Feature]) -> int:
    sizes = {len(f.idx) if isinstance(f, Binned) else len(f) for f in features.values()}
    if len(sizes) != 1:
        raise ValueError(f"estimate: features have different numbers of samples {sorted(sizes)}")
    return sizes.pop()


def reweighted_mean(values: Array, log_w: Array | None = None, n_boot: int = 200,
                    seed: int = 0) -> Estimate:
    """<O> with bootstrap error. values: [N] or [N, k]; log_w: [N] or None (plain mean)."""
    return estimate({"o": np.asarray(values, dtype=float)}, log_w, n_boot=n_boot, seed=seed)["o"]


def histogram(values: Array, edges: Array, log_w: Array | None = None, n_boot: int = 200,
              seed: int = 0) -> Estimate:
    """Normalised density on `edges` (per unit of the variable) with bootstrap errors.

    values: [N] or [N, m] (m values per sample, e.g. all pair distances). -> [n_bins].
    """
    widths = np.diff(edges)
    return estimate({"h": Binned.from_values(values, edges)}, log_w,
                    finalize=lambda d: {"h": d["h"] / widths}, n_boot=n_boot, seed=seed)["h"]


def free_energy_differences(indicators: Mapping[str, Array], log_w: Array | None = None,
                            reference: str | None = None, n_boot: int = 200,
                            seed: int = 0, block: int = 1) -> dict[str, Estimate]:
    """ΔF_s = F_s - F_ref = -ln(P_s / P_ref) in kT, for states given by indicators [N] (bool).

    P_s is the (reweighted) probability of state s; reference defaults to the first state.
    A state with no (weighted) samples gives inf. block: as in `estimate`.
    """
    if not indicators:
        return {}
    names = list(indicators)
    ref = reference or names[0]
    if ref not in indicators:
        raise KeyError(f"reference state {ref!r} not in {names}")
    feats = {k: np.asarray(v, dtype=float) for k, v in indicators.items()}

    def fin(m: dict[str, Array]) -> dict[str, Array]:
        with np.errstate(divide="ignore", invalid="ignore"):
            return {k: -np.log(m[k] / m[ref]) + 0.0 for k in names}  # + 0.0: no -0

    return estimate(feats, log_w, finalize=fin, n_boot=n_boot, seed=seed, block=block)


def bar_log_partition(log_w_flow: Array, log_w_data: Array) -> tuple[float, float]:
    """log Z_p from flow samples and target samples by Bennett's acceptance ratio (pymbar).

    log_w_flow: -u - log q on flow samples [N_F]; log_w_data: -u - log q on samples from p
    (e.g. MD test data with log q evaluated by the flow) [N_R]. Uses that q is normalised, so
    ΔF(q -> p) = -log Z_p. Returns (log Z_p, standard error).
    """
    from pymbar.other_estimators import bar  # lazy: pymbar prints banners on import

    w_f = -np.asarray(log_w_flow, dtype=float)
    w_r = np.asarray(log_w_data, dtype=float)
    res = bar(w_f[np.isfinite(w_f)], w_r[np.isfinite(w_r)])
    return -float(res["Delta_f"]), float(res["dDelta_f"])
