"""reweight stage: samples.h5 + data.h5 -> reweight.h5 + metrics.json.

Observables are estimated three ways, with bootstrap errors: on the reference data (test
split), on the raw flow samples, and on the flow samples reweighted to the target.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from .. import paths
from ..analysis.observables import ObservableSet, observable_set, state_indicators
from ..analysis.report import read_train_log, training_summary
from ..data.hdf5 import provenance, sha256_of, write_h5
from ..errors import ConfigError, DataError
from ..io import atomic_output
from ..reweighting import (estimate, independence_mh, ess_fraction, free_energy_differences, kish_ess,
                           log_mean_weight, log_weights, normalized_log_weights, pareto_khat,
                           top_weights)

SOURCES = ("data", "flow", "reweighted")


def reweight(config: dict, run: str, samples: str | None = None, data: str | None = None,
             out_dir: str | None = None) -> Path:
    """Reweight the run's gathered samples; returns the path of reweight.h5.

    samples / data default to the paths in flowsci.paths; out_dir to the run directory
    (metrics.json is written next to reweight.h5).
    """
    if run not in config["runs"]:
        raise ConfigError(f"run {run!r} is not in the config ({', '.join(config['runs'])})")
    spec = config["runs"][run]
    system = spec["system"]
    rw = {"n_bootstrap": 200, "seed": 2, "n_bins": 50, "states": {}, "mh_steps": 0,
          **spec.get("reweighting", {})}
    samples_path = Path(samples) if samples else paths.samples_file(config, run)
    data_path = Path(data) if data else paths.data_file(config, system)
    out = (Path(out_dir) if out_dir else paths.run_dir(config, run))
    flow = read_samples(samples_path)
    ref = read_reference(data_path, config["systems"][system]["target"])

    target_spec = config["systems"][system]["target"]
    obs = observable_set(target_spec["name"], ref["kind"])
    keep = np.isfinite(flow["energies"]) & np.isfinite(flow["log_q"])
    x, u, log_q = flow["x"][keep], flow["energies"][keep], flow["log_q"][keep]
    if len(x) == 0:
        raise DataError(f"{samples_path}: no sample has a finite energy and log_q")
    lw = log_weights(u, log_q)
    n_boot, seed = int(rw["n_bootstrap"]), int(rw["seed"])

    sp = obs.prepare([ref["x"], x], [ref["u"], u], int(rw["n_bins"]))
    sources = {"data": (ref["x"], ref["u"], None), "flow": (x, u, None), "reweighted": (x, u, lw)}
    results: dict[str, dict[str, Any]] = {}
    free: dict[str, dict[str, Any]] = {}
    for name, (xs, us, w) in sources.items():
        results[name] = estimate(obs.features(xs, us, sp), w, n_boot=n_boot, seed=seed,
                                 finalize=lambda m: obs.finalize(m, sp))
        if rw["states"]:
            ind = _indicators(rw["states"], obs, xs, us)
            free[name] = free_energy_differences(ind, w, n_boot=n_boot, seed=seed)

    metrics = _metrics(config, run, flow, keep, lw, results, free, n_boot, seed)
    mh_group: dict[str, np.ndarray] = {}
    if int(rw["mh_steps"]) > 0:
        mh = independence_mh(log_q, u, int(rw["mh_steps"]), seed=seed)
        chain_u = u[mh.chain]
        tau = mh.tau if np.isfinite(mh.tau) else 1.0
        metrics["mh"] = {"steps": int(len(mh.chain)), "acceptance": mh.acceptance,
                         "tau": _num(mh.tau), "mean_energy": float(chain_u.mean()),
                         "mean_energy_err": float(chain_u.std(ddof=1) * np.sqrt(tau / len(chain_u)))
                         if len(chain_u) > 1 else None}
        mh_group = {"chain": mh.chain, "energy": chain_u}

    groups: dict[str, dict[str, np.ndarray]] = {"axes": sp.axes}
    for name, res in results.items():
        g = {k: e.value for k, e in res.items()}
        g.update({f"{k}_err": e.err for k, e in res.items()})
        for st, e in free.get(name, {}).items():
            g[f"free_energy_{st}"], g[f"free_energy_{st}_err"] = e.value, e.err
        groups[name] = g
    if mh_group:
        groups["mh"] = mh_group
    attrs = provenance("reweight", system, units="reduced",
                       temperature=config["systems"][system].get("temperature"),
                       source={"samples": str(samples_path), "samples_sha256": sha256_of(samples_path),
                               "data": str(data_path), "data_sha256": sha256_of(data_path)},
                       config=spec)
    attrs.update({"run": run, "observable_set": obs.name, "labels": json.dumps(sp.labels),
                  "n_bootstrap": n_boot})
    path = write_h5(out / "reweight.h5", {"log_weights": normalized_log_weights(lw),
                                          "energies": u}, attrs, groups=groups)
    with atomic_output(out / "metrics.json") as tmp:
        Path(tmp).write_text(json.dumps(metrics, indent=2, sort_keys=True, default=_num))
    return path


def read_samples(path: Path) -> dict[str, Any]:
    """x, log_q, energies (+ attrs) of a gathered samples file; DataError naming the file."""
    if not path.exists():
        raise DataError(f"{path}: samples file missing (run `flowsci sample` first)")
    try:
        with h5py.File(path, "r") as f:
            missing = [k for k in ("x", "log_q", "energies") if k not in f]
            if missing:
                raise DataError(f"{path}: missing dataset(s) {missing}")
            out = {k: f[k][()] for k in ("x", "log_q", "energies")}
            out["attrs"] = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
    except OSError as e:
        raise DataError(f"{path}: not a readable HDF5 file ({e})") from None
    n = len(out["x"])
    if n == 0 or len(out["log_q"]) != n or len(out["energies"]) != n:
        raise DataError(f"{path}: x, log_q, energies must have the same non-zero length "
                        f"({n}, {len(out['log_q'])}, {len(out['energies'])})")
    return out


def read_reference(path: Path, target_spec: dict) -> dict[str, Any]:
    """Test split of data.h5 (all frames if no test split): x, reduced energies u, kind."""
    if not path.exists():
        raise DataError(f"{path}: data file missing (run `flowsci preprocess` first)")
    try:
        with h5py.File(path, "r") as f:
            kind = f.attrs.get("kind")
            kind = kind.decode() if isinstance(kind, bytes) else kind
            main = {"particles": "positions", "lattice": "fields"}.get(kind)
            if main is None or main not in f:
                raise DataError(f"{path}: expected kind particles/lattice with its main array")
            idx = f["splits/test"][()] if "splits/test" in f else None
            if idx is None or len(idx) == 0:
                idx = np.arange(f[main].shape[0])
            idx = np.sort(idx)
            x = f[main][idx]
            ekey = "energies" if "energies" in f else "actions" if "actions" in f else None
            u = f[ekey][idx] if ekey else None
            source = json.loads(_text(f.attrs.get("source", "{}")) or "{}")
    except OSError as e:
        raise DataError(f"{path}: not a readable HDF5 file ({e})") from None
    # Energies read from a user's file may come from another potential or energy zero, while
    # flow samples are scored with the target: recompute those with the target.
    if u is None or "path" in source:
        u = _energies(x, target_spec)
    return {"x": x, "u": np.asarray(u, dtype=float), "kind": kind}


def _text(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _energies(x: np.ndarray, target_spec: dict, batch: int = 4096) -> np.ndarray:
    import torch

    from ..systems import build_target

    target = build_target(target_spec)
    with torch.no_grad():
        return np.concatenate([target.energy(torch.as_tensor(x[i:i + batch])).double().numpy()
                               for i in range(0, len(x), batch)])


def _indicators(states: dict, obs: ObservableSet, x: np.ndarray, u: np.ndarray) -> dict:
    try:
        return state_indicators(states, obs.scalars(x, u), obs.periodic)
    except ValueError as e:
        raise ConfigError(f"reweighting.states: {e}") from None


def _metrics(config: dict, run: str, flow: dict, keep: np.ndarray, lw: np.ndarray,
             results: dict, free: dict, n_boot: int, seed: int) -> dict[str, Any]:
    spec = config["runs"][run]
    attrs = flow["attrs"]
    rng = np.random.default_rng(seed)
    boots = [log_mean_weight(lw[rng.integers(0, len(lw), len(lw))]) for _ in range(n_boot)]
    train = training_summary(read_train_log(paths.train_log(config, run)))
    solver = attrs.get("solver")
    if isinstance(solver, str):
        try:
            solver = json.loads(solver)
        except json.JSONDecodeError:
            solver = {}
    m: dict[str, Any] = {
        "run": run, "system": spec["system"], "model": spec["model"]["name"],
        "objective": spec.get("training", {}).get("objective", {}).get("name"),
        "n_samples": int(len(keep)), "n_failed": int(attrs.get("n_failed", 0)),
        "n_nonfinite": int((~keep).sum()), "ess": kish_ess(lw), "ess_fraction": ess_fraction(lw),
        "pareto_k": pareto_khat(lw), "max_weight": float(top_weights(lw, 1)[0]),
        "top_weights": top_weights(lw, 10).tolist(),
        "log_z": log_mean_weight(lw), "log_z_err": float(np.std(boots, ddof=1)) if n_boot > 1 else None,
        "test_nll": _num(attrs.get("test_nll")), **train,
        # wall time of the optimisation itself, recorded by the train stage (survives resumes)
        **({"training_time_s": _num(attrs["train_seconds"])} if "train_seconds" in attrs else {}),
        "sample_nfe": _num(attrs.get("nfe", (solver or {}).get("nfe") if isinstance(solver, dict) else None)),
        "observables": {}, "free_energies": {},
    }
    for src, res in results.items():
        for k, e in res.items():
            if np.ndim(e.value) == 0:
                d = m["observables"].setdefault(k, {})
                d[src], d[f"{src}_err"] = _num(e.value), _num(e.err)
    for src, fe in free.items():
        for st, e in fe.items():
            d = m["free_energies"].setdefault(st, {"reference": next(iter(fe))})
            d[src], d[f"{src}_err"] = _num(e.value), _num(e.err)
    return m


def _num(v: Any) -> Any:
    """JSON-safe number: numpy scalars -> float, nan/inf -> None."""
    if v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if np.isfinite(f) else None
