"""Convergence diagnostics of parallel Markov chains (numpy only).

Conventions: `chains` is [T, C] (time first, C chains of T draws each), as kept by run_chains.

- split_rhat: the classic split potential scale reduction factor (Gelman et al., BDA3 ch. 11):
  each chain is cut in two halves, R = sqrt(var+ / W).
- rank_normalized_rhat: Vehtari, Gelman, Simpson, Carpenter & Bürkner, Bayesian Analysis 16,
  667 (2021): the maximum of split-R-hat of the rank-normalised draws (bulk) and of the
  rank-normalised |draw - median| (tail). This is the R-hat the generators report.
- ess: effective sample size C T / tau_int, tau_int from flowsci.autocorr (Sokal windowing,
  autocorrelation averaged over chains, each chain about its own mean: between-chain
  disagreement is R-hat's job, not this number's), capped at C T log10(C T) as in Stan.
- energy_drift_z: second-half minus first-half energy, as a t statistic over chains.
- find_stuck_chains / check_chains: the generators' verdict (refuse, drop, warn) with the
  thresholds below (RULES, recorded in the provenance; documented in docs/data.md).
"""

from __future__ import annotations

import warnings
from statistics import NormalDist
from typing import Any

import numpy as np

from ...autocorr import integrated_autocorr_time
from ...errors import DataError

# A chain is "stuck" (did not mix) if, over its post-burn-in steps,
#  - it accepted no move at all in at least MIN_STEPS_ZERO steps (a chain with acceptance
#    0.25 does that with probability 0.75^50 < 1e-6), or
#  - its acceptance rate is below ACCEPTANCE_RATIO x the median chain acceptance, judged only
#    when the median would give at least MIN_EXPECTED_ACCEPTS accepted moves per chain (a
#    healthy chain then falls below a quarter of that count with probability < 1e-9), or
#  - its mean energy lies more than ENERGY_Z robust standard deviations (1.4826 x MAD of the
#    chain means) above the median chain mean (stuck high), judged with >= 4 chains.
MIN_STEPS_ZERO = 50
ACCEPTANCE_RATIO = 0.25
MIN_EXPECTED_ACCEPTS = 40.0
ENERGY_Z = 10.0
# With at least MIN_DRAWS kept draws per chain (shorter runs: reported only) and MIN_CHAINS
# chains, the run is refused if the energy drifts (not equilibrated: burn-in too short): the
# chains' rank trends (energy_drift_z) average more than DRIFT_Z standard errors (from their
# spread over chains) from 0. Stationary chains give ~t with C - 1 dof (P(|t_7| > 6) = 5e-4),
# however slowly they mix.
# Any R-hat above RHAT_WARN warns but does not refuse: a slow mode that mixes only between
# chains (measured on the shipped configs: DW4 energy 1.05-1.11, mean pair distance 1.4-1.9;
# LJ13 example energy 1.6) makes averages rely on many independent chains, not wrong by itself.
RHAT_WARN = 1.1
DRIFT_Z = 6.0
MIN_DRAWS = 40
MIN_CHAINS = 8
# With drop_stuck_chains, at most this fraction of the chains may be dropped.
MAX_DROP_FRACTION = 0.5
RULES = {"min_steps_zero_acceptance": MIN_STEPS_ZERO, "acceptance_ratio": ACCEPTANCE_RATIO, "min_expected_accepts": MIN_EXPECTED_ACCEPTS,
         "energy_robust_z": ENERGY_Z, "rhat_warn": RHAT_WARN, "drift_z": DRIFT_Z,
         "min_draws": MIN_DRAWS, "min_chains": MIN_CHAINS,
         "max_drop_fraction": MAX_DROP_FRACTION, "rhat": "rank-normalised split-R-hat"}


def _as_chains(chains: np.ndarray) -> np.ndarray:
    x = np.asarray(chains, dtype=float)
    return x[:, None] if x.ndim == 1 else x.reshape(len(x), -1)


def _rhat(x: np.ndarray) -> float:
    """Potential scale reduction of already split chains x [n, m]."""
    n = x.shape[0]
    if n < 2 or x.shape[1] < 2:
        return float("nan")
    w = x.var(axis=0, ddof=1).mean()
    b_n = x.mean(axis=0).var(ddof=1)
    var_plus = (n - 1) / n * w + b_n
    if w <= 0:
        return float("nan") if var_plus <= 0 else float("inf")
    return float(np.sqrt(var_plus / w))


def _split(chains: np.ndarray) -> np.ndarray:
    """[T, C] -> [T // 2, 2 C]: first and second halves as separate chains (middle draw of an
    odd T dropped)."""
    x = _as_chains(chains)
    h = x.shape[0] // 2
    return np.concatenate([x[:h], x[x.shape[0] - h:]], axis=1)


def split_rhat(chains: np.ndarray) -> float:
    """Classic split-R-hat (BDA3). chains: [T] or [T, C]. nan if T < 4."""
    return _rhat(_split(chains))


def average_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..S of all entries of x (ties get their average rank), shaped like x."""
    flat = np.asarray(x, dtype=float).ravel()
    order = np.argsort(flat, kind="mergesort")
    s = flat[order]
    first = np.r_[True, s[1:] != s[:-1]]
    starts = np.flatnonzero(first)
    ends = np.r_[starts[1:], len(s)]
    ranks = np.empty(len(s))
    ranks[order] = ((starts + 1 + ends) / 2.0)[np.cumsum(first) - 1]
    return ranks.reshape(np.shape(x))


def rank_normalize(x: np.ndarray) -> np.ndarray:
    """Phi^-1((r - 3/8) / (S + 1/4)) of the pooled average ranks r (Blom; Vehtari et al.)."""
    r = average_ranks(x)
    inv = np.vectorize(NormalDist().inv_cdf, otypes=[float])
    return inv((r - 0.375) / (r.size + 0.25))


def rank_normalized_rhat(chains: np.ndarray) -> float:
    """Rank-normalised split-R-hat (Vehtari et al. 2021): max of bulk and folded-tail values.

    chains: [T] or [T, C]. ~1 for chains from the same distribution; nan if T < 4.
    """
    x = _split(chains)
    if x.shape[0] < 2:
        return float("nan")
    bulk = _rhat(rank_normalize(x))
    tail = _rhat(rank_normalize(np.abs(x - np.median(x))))
    return float(np.nanmax([bulk, tail])) if np.isfinite([bulk, tail]).any() else bulk


def ess(chains: np.ndarray) -> float:
    """Effective sample size of all draws: C T / tau_int (Sokal), at most C T log10(C T)."""
    x = _as_chains(chains)
    n = x.size
    if x.shape[0] < 2:
        return float(n)
    if np.all(x.std(axis=0) == 0):
        return float(x.shape[1])  # constant chains: one draw's worth each
    tau = integrated_autocorr_time(x[:, x.std(axis=0) > 0])
    return float(min(n / max(tau, 1e-12), n * max(np.log10(n), 1.0)))


def chain_ess(chains: np.ndarray) -> np.ndarray:
    """Per-chain effective sample size [C] (each chain on its own; constant chains: 1)."""
    x = _as_chains(chains)
    return np.array([ess(x[:, c]) if x[:, c].std() > 0 else 1.0 for c in range(x.shape[1])])


def find_stuck_chains(acceptance: np.ndarray, n_steps: int,
                      energies: np.ndarray | None = None) -> dict[int, str]:
    """Chains that did not mix, by the rules above: {chain index: reason}.

    acceptance: [C] post-burn-in acceptance rates of n_steps steps each; energies: [T, C] kept
    reduced energies (kT) or None.
    """
    acc = np.asarray(acceptance, dtype=float)
    stuck: dict[int, str] = {}
    med = float(np.median(acc))
    if n_steps >= MIN_STEPS_ZERO:
        for c in np.flatnonzero(acc * n_steps < 0.5):
            stuck[int(c)] = f"no move accepted in {n_steps} steps"
    if med * n_steps >= MIN_EXPECTED_ACCEPTS:
        for c in np.flatnonzero(acc < ACCEPTANCE_RATIO * med):
            stuck.setdefault(int(c), f"acceptance {acc[c]:.3g} < {ACCEPTANCE_RATIO} x median "
                                     f"{med:.3g}")
    if energies is not None and _as_chains(energies).shape[1] >= 4:
        means = _as_chains(energies).mean(axis=0)
        center = np.median(means)
        scale = 1.4826 * np.median(np.abs(means - center))
        if scale > 0:
            z = (means - center) / scale
            for c in np.flatnonzero(z > ENERGY_Z):
                stuck.setdefault(int(c), f"mean energy {means[c]:.4g} kT is {z[c]:.3g} robust "
                                         f"sd above the median chain's {center:.4g}")
    return dict(sorted(stuck.items()))


def check_chains(generator: str, acceptance: np.ndarray, n_steps: int,
                 observables: dict[str, np.ndarray], drop_stuck_chains: bool = False
                 ) -> tuple[np.ndarray, dict[str, Any]]:
    """Judge parallel chains: (indices of the chains to keep, diagnostics for `info`).

    acceptance: [C] post-burn-in acceptance rates over n_steps steps per chain; observables:
    {name: [T, C]} kept draws, 'energy' (kT) first. Raises DataError (naming the chains and
    numbers) if chains are stuck (find_stuck_chains) and not drop_stuck_chains, if more than
    MAX_DROP_FRACTION would be dropped, or if the energy drifts (energy_drift_z).
    """
    energy = _as_chains(observables["energy"])
    n_draws, n_chains = energy.shape
    stuck = find_stuck_chains(acceptance, n_steps, energy)
    what = "; ".join(f"chain {c}: {r}" for c, r in list(stuck.items())[:10])
    what += f"; ... ({len(stuck)} in all)" if len(stuck) > 10 else ""
    if stuck and not drop_stuck_chains:
        raise DataError(
            f"{generator}: {len(stuck)} of {n_chains} chains did not mix ({what}); reference "
            "data from them would be biased. Use a smaller step_size or a longer burn_in, or "
            "set drop_stuck_chains: true to drop these chains (recorded in the provenance).")
    if len(stuck) > MAX_DROP_FRACTION * n_chains:
        raise DataError(f"{generator}: {len(stuck)} of {n_chains} chains did not mix ({what}); "
                        f"more than {MAX_DROP_FRACTION:.0%} cannot be dropped: fix the sampler "
                        "settings (step_size, burn_in)")
    keep = np.array([c for c in range(n_chains) if c not in stuck], dtype=np.int64)
    raw, ess_all, ess_min = {}, {}, {}
    for name, x in observables.items():
        x = _as_chains(x)[:, keep]
        raw[name], ess_all[name] = rank_normalized_rhat(x), _finite(ess(x))
        ess_min[name] = _finite(chain_ess(x).min()) if n_draws > 1 else None
    rhat = {k: _finite(v) for k, v in raw.items()}  # inf (constant chains) -> None in JSON
    judged = n_draws >= MIN_DRAWS
    z, d = energy_drift_z(energy[:, keep])
    info = {"rhat": rhat, "ess": ess_all, "chain_ess_min": ess_min, "energy_drift_z": _finite(z),
            "judged": judged, "mixing_rules": RULES, "dropped_chains": sorted(stuck),
            "stuck_chains": {str(c): r for c, r in list(stuck.items())[:20]},
            "n_samples_stored": int(len(keep) * n_draws)}
    if judged and len(keep) >= MIN_CHAINS and abs(z) > DRIFT_Z:
        e = energy[:, keep]
        h = n_draws // 2
        change = e[n_draws - h:].mean(axis=0) - e[:h].mean(axis=0)
        worst = np.argsort(-np.abs(d))[:5]
        raise DataError(
            f"{generator}: the energy drifts during the kept run (not equilibrated): it "
            f"{'falls' if z < 0 else 'rises'} in {int(np.sum(np.sign(d) == np.sign(z)))} of "
            f"{len(keep)} chains of {n_draws} draws, trend t = {z:+.1f} (limit {DRIFT_Z}); "
            "most drifting chains (second-half minus first-half mean): "
            + ", ".join(f"{keep[i]} ({change[i]:+.4g} kT)" for i in worst)
            + ". Increase burn_in (or check the step size).")
    for name, r in raw.items():
        if judged and r > RHAT_WARN:
            warnings.warn(f"{generator}: {name} R-hat {r:.3f} > {RHAT_WARN}: it does not mix "
                          "well within chains; its average relies on many independent chains "
                          "(a longer run or more chains reduce the risk of bias)", stacklevel=3)
    return keep, info


def energy_drift_z(energies: np.ndarray) -> tuple[float, np.ndarray]:
    """(t statistic, per-chain trends [C]) of a drift shared by the chains.

    energies: [T, C]. Each chain's trend is (mean rank of its second half - mean rank of its
    first half) / (T / 2), ranks within the chain: in [-1, 1], -1 for a steady decrease,
    bounded whatever the energy scale. The statistic is mean / (sd / sqrt(C)) over chains:
    ~t with C - 1 dof for stationary chains, even slowly mixing ones; nan with < 2 chains or
    T < 2; +-inf if every chain has the same nonzero trend.
    """
    x = _as_chains(energies)
    t, h = x.shape[0], x.shape[0] // 2
    if h < 1 or x.shape[1] < 2:
        return float("nan"), np.zeros(x.shape[1])
    r = np.stack([average_ranks(x[:, c]) for c in range(x.shape[1])], axis=1)
    d = (r[t - h:].mean(axis=0) - r[:h].mean(axis=0)) / (t / 2)
    se = d.std(ddof=1) / np.sqrt(len(d))
    if se == 0:
        return (0.0 if d.mean() == 0 else float(np.sign(d.mean()) * np.inf)), d
    return float(d.mean() / se), d


def trajectory_diagnostics(energies: np.ndarray) -> dict[str, Any]:
    """ESS and split R-hat (rank-normalised, the two halves) of one trajectory's energies [T];
    warns if the two halves disagree (R-hat > RHAT_WARN with >= 2 MIN_DRAWS frames)."""
    u = np.asarray(energies, dtype=float)
    r = _finite(rank_normalized_rhat(u))
    if len(u) >= 2 * MIN_DRAWS and (r or 0.0) > RHAT_WARN:
        warnings.warn(f"trajectory energy split R-hat {r:.3f} > {RHAT_WARN}: the first and "
                      "second halves differ (not equilibrated? increase burn_in)", stacklevel=3)
    return {"energy_ess": _finite(ess(u)), "energy_rhat": r}


def _finite(x: float) -> float | None:
    return _r(x) if np.isfinite(x) else None


def summary(values: np.ndarray) -> dict[str, float]:
    """{'min', 'median', 'max'} of per-chain values, rounded for provenance attrs."""
    v = np.asarray(values, dtype=float)
    return {"min": _r(v.min()), "median": _r(np.median(v)), "max": _r(v.max())}


def _r(x: float) -> float:
    return float(f"{float(x):.4g}")
