"""reweight stage: samples.h5 + data.h5 -> reweight.h5 + metrics.json.

Observables are estimated three ways, with bootstrap errors: on the reference data (test
split), on the raw flow samples, and on the flow samples reweighted to the target.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from .. import paths
from ..analysis.observables import ObservableSet, Spec, observable_set, state_indicators
from ..analysis.report import read_train_log, training_summary
from ..data.hdf5 import provenance, sha256_of, write_h5
from ..errors import ConfigError, DataError
from ..io import atomic_output
from ..progress import Progress
from ..reweighting import (Estimate, IndependenceMH, block_length, estimate,
                           free_energy_differences, independence_mh, kish_ess, log_mean_weight,
                           log_weights, normalized_log_weights, pareto_khat, top_weights)
from ..systems import build_target
from .checks import check_data_file, check_sample_counts, check_samples_file

log = logging.getLogger(__name__)


@dataclass
class ReweightInputs:
    """What the reweight stage reads: gathered flow samples, the reference (test split of
    data.h5, energies rescored where they came from a user's file) and the observable set."""

    samples: dict[str, Any]
    samples_path: Path
    reference: dict[str, Any]
    data_path: Path
    observables: ObservableSet


@dataclass
class ReweightResults:
    """Estimates per source ('data', 'flow', 'reweighted') and the weights they used."""

    keep: np.ndarray  # [N] finite flow samples
    log_w: np.ndarray  # [N_keep] unnormalised log-weights
    energies: np.ndarray  # [N_keep] reduced energies
    spec: Spec
    observables: dict[str, dict[str, Estimate]]
    free_energies: dict[str, dict[str, Estimate]]
    mh: IndependenceMH | None
    reference_block: int = 1  # block length of the reference data's bootstrap (frames)


def reweight(config: dict, run: str, samples: str | None = None, data: str | None = None,
             out_dir: str | None = None) -> Path:
    """Reweight the run's gathered samples; returns the path of reweight.h5.

    samples / data default to the paths in flowsci.paths; out_dir to the run directory
    (metrics.json is written next to reweight.h5). Settings: runs.<run>.reweighting.
    """
    if run not in config["runs"]:
        raise ConfigError(f"run {run!r} is not in the config ({', '.join(config['runs'])})")
    inputs = load_inputs(config, run, samples, data)
    results = estimate_all(inputs, config["runs"][run]["reweighting"])
    out = Path(out_dir) if out_dir else paths.run_dir(config, run)
    return write_outputs(config, run, inputs, results, out)


def load_inputs(config: dict, run: str, samples: str | None = None,
                data: str | None = None) -> ReweightInputs:
    """Read and check the stage's inputs (DataError naming the file on any mismatch)."""
    spec = config["runs"][run]
    system = spec["system"]
    sys_spec = config["systems"][system]
    samples_path = Path(samples) if samples else paths.samples_file(config, run)
    data_path = Path(data) if data else paths.data_file(config, system)
    target = build_target(sys_spec["target"], f"systems.{system}.target")
    flow = read_samples(samples_path)
    check_samples_file(config, run, samples_path, flow["attrs"])
    check_data_file(config, system, target, data_path)
    ref = read_reference(data_path, target)
    for path, arr in ((samples_path, flow["x"]), (data_path, ref["x"])):
        if tuple(arr.shape[1:]) != tuple(target.event_shape):
            raise DataError(f"{path}: configurations of shape {tuple(arr.shape[1:])}, but target "
                            f"{target.name} (systems.{system}.target) has event shape "
                            f"{tuple(target.event_shape)}")
    return ReweightInputs(flow, samples_path, ref, data_path, run_observables(config, run, target))


def run_observables(config: dict, run: str, target) -> ObservableSet:
    """The observable set of the run's system (systems.<system>.observables)."""
    system = config["runs"][run]["system"]
    sys_spec = config["systems"][system]
    return observable_set(sys_spec["target"]["name"], target.kind, sys_spec.get("observables"),
                          config_key=f"systems.{system}.observables")


def weight_diagnostics(log_w: np.ndarray) -> dict[str, float]:
    """Kish ESS, Pareto k-hat, largest normalised weight and log Z-hat (log mean weight) of
    unnormalised log-weights [N] (-inf for dropped samples): the figures metrics.json and
    flowsci.api report."""
    return {"ess": kish_ess(log_w), "pareto_k": pareto_khat(log_w),
            "max_weight": float(top_weights(log_w, 1)[0]), "log_z": log_mean_weight(log_w)}


def estimate_all(inputs: ReweightInputs, settings: dict) -> ReweightResults:
    """Observables (and free energies of `settings['states']`) on the reference data, the raw
    flow samples and the reweighted flow samples, with bootstrap errors; the MH chain."""
    flow, ref, obs = inputs.samples, inputs.reference, inputs.observables
    keep = usable_samples(flow["x"], flow["energies"], flow["log_q"])
    x, u, log_q = flow["x"][keep], flow["energies"][keep], flow["log_q"][keep]
    if len(x) == 0:
        raise DataError(f"{inputs.samples_path}: no sample has finite coordinates, energy, "
                        "log_q and log weight")
    lw = log_weights(u, log_q)
    n_boot, seed = int(settings["n_bootstrap"]), int(settings["seed"])
    try:
        sp = obs.prepare([ref["x"], x], [ref["u"], u], int(settings["n_bins"]))
    except ValueError as e:
        raise DataError(f"{inputs.samples_path}: observable set {obs.name!r}: {e}") from None
    sources = {"data": (ref["x"], ref["u"], None), "flow": (x, u, None), "reweighted": (x, u, lw)}
    # Reference data are time series (MCMC/HMC chains, MD): a block bootstrap with blocks of
    # a few autocorrelation times, else their errors come out too small. Flow samples are iid.
    blocks = {"data": block_length(ref["u"]), "flow": 1, "reweighted": 1}
    results: dict[str, dict[str, Estimate]] = {}
    free: dict[str, dict[str, Estimate]] = {}
    n_mh = int(settings["mh_steps"])
    # progress: one unit per source's bootstrap (+ the MH chain)
    with Progress(len(sources) + (n_mh > 0), f"reweight {inputs.samples_path.parent.name}",
                  unit="estimate", figures={"n_bootstrap": n_boot}) as bar:
        for name, (xs, us, w) in sources.items():
            results[name] = estimate(obs.features(xs, us, sp), w, n_boot=n_boot, seed=seed,
                                     finalize=lambda m: obs.finalize(m, sp), block=blocks[name])
            if settings["states"]:
                ind = _indicators(settings["states"], obs, xs, us)
                free[name] = free_energy_differences(ind, w, n_boot=n_boot, seed=seed,
                                                     block=blocks[name])
            bar.update(1, last=name)
        mh = None
        if n_mh > 0:
            mh = independence_mh(log_q, u, n_mh, seed=seed)
            bar.update(1, last="mh")
    return ReweightResults(keep, lw, u, sp, results, free, mh, blocks["data"])


def usable_samples(x: np.ndarray, u: np.ndarray, log_q: np.ndarray) -> np.ndarray:
    """[N] bool: samples with finite coordinates x [N, ...], energy u [N], log q [N] and a
    finite log weight -u - log q (finite u and log q can still overflow to -inf)."""
    with np.errstate(over="ignore", invalid="ignore"):
        finite_x = np.isfinite(x.reshape(len(x), -1)).all(axis=1)
        return finite_x & np.isfinite(u) & np.isfinite(log_q) & np.isfinite(-u - log_q)


def write_outputs(config: dict, run: str, inputs: ReweightInputs, res: ReweightResults,
                  out: Path) -> Path:
    """reweight.h5 (weights, estimates, axes, MH chain) and metrics.json, both atomically."""
    spec = config["runs"][run]
    system = spec["system"]
    rw = spec["reweighting"]
    metrics = _metrics(config, run, inputs.samples, res, int(rw["n_bootstrap"]), int(rw["seed"]))
    groups: dict[str, dict[str, np.ndarray]] = {"axes": res.spec.axes}
    for name, est in res.observables.items():
        g = {k: e.value for k, e in est.items()}
        g.update({f"{k}_err": e.err for k, e in est.items()})
        for st, e in res.free_energies.get(name, {}).items():
            g[f"free_energy_{st}"], g[f"free_energy_{st}_err"] = e.value, e.err
        groups[name] = g
    if res.mh is not None:
        chain_u = res.energies[res.mh.chain]
        tau = res.mh.tau if np.isfinite(res.mh.tau) else 1.0
        metrics["mh"] = {"steps": int(len(res.mh.chain)), "acceptance": res.mh.acceptance,
                         "tau": _num(res.mh.tau), "mean_energy": float(chain_u.mean()),
                         "mean_energy_err": float(chain_u.std(ddof=1) * np.sqrt(tau / len(chain_u)))
                         if len(chain_u) > 1 else None}
        groups["mh"] = {"chain": res.mh.chain, "energy": chain_u}
    attrs = provenance("reweight", system, units="reduced",
                       temperature=config["systems"][system].get("temperature"),
                       source={"samples": str(inputs.samples_path),
                               "samples_sha256": sha256_of(inputs.samples_path),
                               "data": str(inputs.data_path),
                               "data_sha256": sha256_of(inputs.data_path)},
                       config=spec)
    obs = inputs.observables
    attrs.update({"run": run, "observable_set": obs.name,
                  "observable_params": json.dumps(obs.params, sort_keys=True),
                  "labels": json.dumps(res.spec.labels), "n_bootstrap": int(rw["n_bootstrap"])})
    path = write_h5(out / "reweight.h5", {"log_weights": normalized_log_weights(res.log_w),
                                          "energies": res.energies}, attrs, groups=groups)
    for warning in metrics["warnings"]:
        log.warning("%s: %s", inputs.samples_path, warning)
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
            for k in ("x", "log_q", "energies"):
                _real_float(path, f[k], k, min_ndim=2 if k == "x" else 1)
            out = {k: f[k][()] for k in ("x", "log_q", "energies")}
            out["attrs"] = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
    except OSError as e:
        raise DataError(f"{path}: not a readable HDF5 file ({e})") from None
    n = len(out["x"])
    if n == 0 or len(out["log_q"]) != n or len(out["energies"]) != n:
        raise DataError(f"{path}: x, log_q, energies must have the same non-zero length "
                        f"({n}, {len(out['log_q'])}, {len(out['energies'])})")
    check_sample_counts(path, out["attrs"], n)
    return out


def _real_float(path: Path, ds, name: str, min_ndim: int) -> None:
    if not isinstance(ds, h5py.Dataset):
        raise DataError(f"{path}: {name!r} must be a dataset, found a group")
    if ds.dtype.kind != "f" or ds.ndim < min_ndim or (name != "x" and ds.ndim != 1):
        raise DataError(f"{path}: {name!r} must be real floating-point data of "
                        f"{'[N, ...]' if name == 'x' else '[N]'}, found dtype {ds.dtype} "
                        f"shape {ds.shape}")


def read_reference(path: Path, target) -> dict[str, Any]:
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
        u = _energies(x, target)
    return {"x": x, "u": np.asarray(u, dtype=float), "kind": kind}


def _text(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _energies(x: np.ndarray, target, batch: int = 4096) -> np.ndarray:
    with torch.no_grad():
        return np.concatenate([target.energy(torch.as_tensor(x[i:i + batch])).double().numpy()
                               for i in range(0, len(x), batch)])


def _indicators(states: dict, obs: ObservableSet, x: np.ndarray, u: np.ndarray) -> dict:
    try:
        return state_indicators(states, obs.scalars(x, u), obs.periodic)
    except ValueError as e:
        raise ConfigError(f"reweighting.states: {e}") from None


def _metrics(config: dict, run: str, flow: dict, res: ReweightResults, n_boot: int,
             seed: int) -> dict[str, Any]:
    spec = config["runs"][run]
    attrs = flow["attrs"]
    lw, keep = res.log_w, res.keep
    diag = weight_diagnostics(lw)
    ess = diag["ess"]
    rng = np.random.default_rng(seed)
    boots = [log_mean_weight(lw[rng.integers(0, len(lw), len(lw))]) for _ in range(n_boot)]
    train = training_summary(read_train_log(paths.train_log(config, run)))
    m: dict[str, Any] = {
        "run": run, "system": spec["system"], "model": spec["model"]["name"],
        "objective": spec["training"]["objective"]["name"],
        **sample_counts(attrs, keep, ess), **diag,
        "top_weights": top_weights(lw, 10).tolist(),
        "log_z_err": float(np.std(boots, ddof=1)) if n_boot > 1 and len(lw) > 1 else None,
        "test_nll": _num(attrs.get("test_nll")), **train,
        # wall time of the optimisation itself, recorded by the train stage (survives resumes)
        **({"training_time_s": _num(attrs["train_seconds"])} if "train_seconds" in attrs else {}),
        "sample_nfe": _num(attrs.get("nfe")), "exact_method": attrs.get("exact_method"),
        "sampling_time_s": _num(attrs.get("sample_seconds")),
        "mirrored_fraction": int(attrs.get("n_mirrored", 0)) / max(len(keep), 1),
        "observables": {}, "free_energies": {},
        "reference_block_length": res.reference_block,
    }
    for src, est in res.observables.items():
        for k, e in est.items():
            if np.ndim(e.value) == 0:
                d = m["observables"].setdefault(k, {})
                d[src], d[f"{src}_err"] = _num(e.value), _num(e.err)
    for src, fe in res.free_energies.items():
        for st, e in fe.items():
            d = m["free_energies"].setdefault(st, {"reference": next(iter(fe))})
            d[src], d[f"{src}_err"] = _num(e.value), _num(e.err)
    return m


# A failure fraction above this is a warning in metrics.json and the report: failed solves
# are dropped, which biases the estimates if failures depend on where the sample goes.
FAILED_SAMPLES_WARN = 0.01
# Fewer usable samples than this is a warning (metrics.json and the log).
FEW_SAMPLES_WARN = 10


def sample_counts(attrs: dict, keep: np.ndarray, ess: float) -> dict[str, Any]:
    """Requested, failed (solver) and non-finite (energy/log q) counts, and ESS as a fraction
    of the requested samples (`ess_fraction`, the honest figure) and of the survivors."""
    n_ok = int(keep.sum())
    n_failed, n_nonfinite = int(attrs.get("n_failed", 0)), int((~keep).sum())
    n_requested = int(attrs.get("n_requested", len(keep) + n_failed))
    lost = (n_failed + n_nonfinite) / n_requested if n_requested else 0.0
    out = {"n_requested": n_requested, "n_samples": int(len(keep)), "n_failed": n_failed,
           "n_nonfinite": n_nonfinite, "failed_fraction": lost,
           "ess_fraction": ess / n_requested if n_requested else float("nan"),
           "ess_fraction_survivors": ess / n_ok if n_ok else float("nan"), "warnings": []}
    if n_ok < FEW_SAMPLES_WARN:
        out["warnings"].append(
            f"only {n_ok} usable flow sample(s) (fewer than {FEW_SAMPLES_WARN}): the estimates "
            "and their error bars are unreliable (one sample gets none); draw more samples")
    if lost > FAILED_SAMPLES_WARN:
        out["warnings"].append(
            f"{n_failed + n_nonfinite} of {n_requested} samples ({100 * lost:.1f} %) failed "
            f"({n_failed} solver failures, {n_nonfinite} non-finite energy or log q) and were "
            f"dropped; the estimates may be biased. ESS is {100 * out['ess_fraction']:.1f} % of "
            f"the requested samples, {100 * out['ess_fraction_survivors']:.1f} % of the survivors")
    return out


def _num(v: Any) -> Any:
    """JSON-safe number: numpy scalars -> float, nan/inf -> None."""
    if v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if np.isfinite(f) else None
