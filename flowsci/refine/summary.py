"""metrics.json figures of the refine stage from its results (pure: numpy in, dict out).

Observables are the system's per-configuration scalars (flowsci.analysis.observables) plus,
for dihedral sets, the indicator of the phi > 0 basin (its mean is that state's population).
Cost: energy+force evaluations, exact log q solves, CPU seconds (process time of the chains,
plus for flow_mcmc the share of the flow's sampling time of the pool samples it consumed),
and CPU seconds per effective sample of the energy (its ESS from tau, or from the ancestry
grouping for resample-move).
"""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np

from .flow_mcmc import ChainResult
from .resample_move import ResampleMoveResult
from .stats import ancestry_error, ancestry_ess, chain_summary

Scalars = Callable[[np.ndarray, np.ndarray], dict[str, np.ndarray]]


def with_states(scalars: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Add state indicators: phi_positive (the phi > 0 basin) where there is a phi angle."""
    out = {k: np.asarray(v, dtype=float) for k, v in scalars.items()}
    if "phi" in out:
        out["phi_positive"] = (out["phi"] > 0).astype(float)
    return out


def _num(v: float) -> float | None:
    return float(v) if v is not None and math.isfinite(v) else None


def _cost(n_evals: int, n_log_q: int, cpu: float, ess: float) -> dict[str, Any]:
    return {"energy_force_evals": int(n_evals), "log_q_solves": int(n_log_q),
            "cpu_seconds": float(cpu), "ess_energy": _num(ess),
            "cpu_seconds_per_effective_sample": _num(cpu / ess) if ess and ess > 0 else None,
            "effective_samples_per_cpu_hour": _num(3600 * ess / cpu) if cpu > 0 else None}


def chain_metrics(res: ChainResult, scalars: Scalars, pool_seconds: float = 0.0) -> dict:
    """Acceptance, per-observable mean/err/tau/ESS/R-hat and costs of chains."""
    t, c = res.u.shape[:2]
    flat = res.x.reshape(t * c, *res.x.shape[2:])
    obs = with_states(scalars(flat, res.u.reshape(-1))) if t else {}
    summaries = {k: chain_summary(v.reshape(t, c)) for k, v in obs.items()}
    energy = summaries.get("energy") or chain_summary(res.u)
    cpu = res.cpu_seconds + pool_seconds
    with np.errstate(invalid="ignore"):
        g_mean = float(np.nanmean(res.global_accept)) if np.isfinite(res.global_accept).any() \
            else None
    return {"n_chains": int(c), "n_recorded_cycles": int(t), "step_size": res.step_size,
            "local_accept": [_num(a) for a in res.local_accept],
            "local_accept_mean": _num(float(np.nanmean(res.local_accept)))
            if np.isfinite(res.local_accept).any() else None,
            "global_accept": [_num(a) for a in res.global_accept],
            "global_accept_mean": g_mean, "pool_used": int(res.pool_used),
            "pool_init": int(res.n_init),
            "observables": {k: {m: _num(v) for m, v in s.items()} for k, s in summaries.items()},
            "cost": {**_cost(res.n_evals, res.n_log_q, cpu, energy["ess"]),
                     "chain_cpu_seconds": float(res.cpu_seconds),
                     "pool_sampling_cpu_seconds": float(pool_seconds)}}


def particle_metrics(res: ResampleMoveResult, scalars: Scalars,
                     pool_seconds: float = 0.0) -> dict:
    """Per round distinct ancestors/configurations; observables with ancestry-grouped errors;
    costs (the whole pool's sampling time counts: every flow sample enters the weights)."""
    obs = with_states(scalars(res.x, res.u))
    out = {}
    for k, v in obs.items():
        out[k] = {"mean": _num(float(v.mean())), "err": _num(ancestry_error(v, res.ancestors)),
                  "ess": _num(ancestry_ess(v, res.ancestors))}
    ess = out.get("energy", {}).get("ess") or ancestry_ess(res.u, res.ancestors)
    cpu = res.cpu_seconds + pool_seconds
    return {"n_particles": int(len(res.u)), "n_rounds": len(res.accept) - 1,
            "step_size": res.step_size, "distinct_ancestors": list(res.distinct_ancestors),
            "distinct_configurations": list(res.distinct_configurations),
            "accept": [_num(a) for a in res.accept], "observables": out,
            "cost": {**_cost(res.n_evals, res.n_log_q, cpu, ess or float("nan")),
                     "chain_cpu_seconds": float(res.cpu_seconds),
                     "pool_sampling_cpu_seconds": float(pool_seconds)}}


def reweighting_cost(ess: float, n_samples: int, sample_seconds: float) -> dict:
    """Reweighting alone: the flow samples' Kish ESS for their sampling time."""
    return {**_cost(0, n_samples, sample_seconds, ess), "n_samples": int(n_samples)}
