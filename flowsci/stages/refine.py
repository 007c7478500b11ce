"""refine stage: samples.h5 (+ model.pt) -> refine/{chains.h5 | particles.h5, metrics.json}.

Methods (runs.<run>.refine.method): flow_mcmc (flowsci.refine.flow_mcmc) and resample_move
(flowsci.refine.resample_move), each followed by plain local chains as the cost baseline
(refine.baseline). Each part is checkpointed every `checkpoint_every` cycles to
refine/checkpoint-<part>.pt (atomically); a rerun after a crash or kill -9 resumes from the
checkpoint and produces bit-identical chains (the generator state is in the checkpoint).
A checkpoint made with other settings or another samples.h5 is ignored.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .. import paths
from ..config import canonical_json
from ..chirality import mirrored_log_prob
from ..data.hdf5 import provenance, sha256_of, write_h5
from ..device import resolve_device, resolve_dtype
from ..errors import ConfigError, DataError
from ..io import atomic_output
from ..progress import Progress
from ..refine import DualAveraging, FlowMCMC, ResampleMove, build_kernel
from ..refine.potential import potential_for
from ..refine.summary import chain_metrics, particle_metrics, reweighting_cost
from ..reweighting import kish_ess, log_weights
from ..systems import build_target
from .checks import check_samples_file
from .reweight import read_samples, run_observables
from .sample import chirality_reference, load_trained_flow, shard_seed

log = logging.getLogger(__name__)
PARTS = {"refine": 0, "baseline": 1}  # part -> seed offset


def check_settings(config: dict, run: str, kind: str) -> dict:
    """runs.<run>.refine, refusing settings that cannot work (ConfigError, one line)."""
    rs = config["runs"][run]["refine"]
    key = f"runs.{run}.refine"
    if rs["method"] == "flow_mcmc" and rs["n_local"] == 0 and not rs["global_moves"]:
        raise ConfigError(f"{key}: n_local = 0 and global_moves = false: the chains never move")
    if rs["method"] == "resample_move" and rs["n_local"] == 0:
        raise ConfigError(f"{key}.n_local = 0: resample_move needs local steps after resampling")
    if rs["mass"] != "unit" and rs["kernel"] != "hmc":
        raise ConfigError(f"{key}.mass = {rs['mass']!r}: masses apply to kernel hmc only")
    if rs["mass"] == "atomic" and kind == "lattice":
        raise ConfigError(f"{key}.mass = 'atomic' is molecular-only; the target is a lattice")
    return rs


def refine(config: dict, run: str, progress: bool = True, stop_after: int | None = None
           ) -> Path | None:
    """Refine the run's samples; returns the output file, or None when stopped after cycle
    `stop_after` of a part (its checkpoint saved; rerun to continue)."""
    if run not in config["runs"]:
        raise ConfigError(f"run {run!r} is not in the config ({', '.join(config['runs'])})")
    spec = config["runs"][run]
    system = spec["system"]
    target = build_target(config["systems"][system]["target"], f"systems.{system}.target")
    rs = check_settings(config, run, target.kind)
    samples_path = paths.samples_file(config, run)
    flow = read_samples(samples_path)
    check_samples_file(config, run, samples_path, flow["attrs"])
    if tuple(flow["x"].shape[1:]) != tuple(target.event_shape):
        raise DataError(f"{samples_path}: configurations of shape {tuple(flow['x'].shape[1:])}, "
                        f"but the target has event shape {tuple(target.event_shape)}")
    keep = np.isfinite(flow["energies"]) & np.isfinite(flow["log_q"])
    pool = {"x": torch.as_tensor(flow["x"][keep], dtype=torch.float64),
            "log_q": torch.as_tensor(flow["log_q"][keep], dtype=torch.float64),
            "u": torch.as_tensor(flow["energies"][keep], dtype=torch.float64)}
    if len(pool["x"]) < 2:
        raise DataError(f"{samples_path}: fewer than 2 samples with a finite energy and log q")
    per_sample = _flow_seconds(flow["attrs"]) / max(len(flow["x"]), 1)
    fingerprint = canonical_json({"refine": rs, "samples": sha256_of(samples_path)})
    out_dir = paths.refine_dir(config, run)
    parts = ["refine"] + (["baseline"] if rs["baseline"] and rs["n_local"] > 0 else [])
    results: dict[str, Any] = {}
    for part in parts:
        sampler = _build(config, run, part, target, pool)
        ckpt = out_dir / f"checkpoint-{part}.pt"
        _resume(sampler, ckpt, fingerprint)
        total = _total(sampler)
        desc = f"refine {run} {part}"
        with Progress(total, desc, initial=_position(sampler), unit="cycle", bar=progress,
                      figures={"accept": None}) as bar:
            while not sampler.done:
                if stop_after is not None and _position(sampler) >= stop_after:
                    _save(sampler, ckpt, fingerprint)
                    return None
                _step(sampler)
                bar.update(1, accept=_last_accept(sampler))
                if _position(sampler) % rs["checkpoint_every"] == 0:
                    _save(sampler, ckpt, fingerprint)
        results[part] = sampler.result()
    out = _write(config, run, target, flow, samples_path, pool, results, per_sample)
    for part in parts:
        (out_dir / f"checkpoint-{part}.pt").unlink(missing_ok=True)
    return out


def _log_q_fn(config: dict, run: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """Exact log q of configurations [B, *event] -> [B] (float64): the sample stage's flow,
    solver and chirality handling (as flowsci.api's Run.log_prob), batched by
    sampling.batch_size; the model is loaded once, on first use."""
    cache: dict[str, Any] = {}
    sp = config["runs"][run]["sampling"]

    def log_q(x: torch.Tensor) -> torch.Tensor:
        if "flow" not in cache:
            dev = resolve_device(config["device"])
            cache["flow"] = load_trained_flow(config, run, dev, resolve_dtype(sp["dtype"]),
                                              sp["use_ema"])[0]
            cache["chirality"] = chirality_reference(config, run, x.shape[1]) \
                if x.ndim > 2 else None
        flow = cache["flow"]
        p = next(iter(flow.parameters()), torch.empty(0))
        with torch.no_grad():
            lq = torch.cat([flow.log_prob(x[i:i + sp["batch_size"]].to(p.device, p.dtype))
                            .cpu().double() for i in range(0, len(x), sp["batch_size"])])
        if cache["chirality"] is not None:
            lq = mirrored_log_prob(x.double(), lq, *cache["chirality"])
        return lq

    return log_q


def _build(config: dict, run: str, part: str, target, pool: dict) -> FlowMCMC | ResampleMove:
    rs = config["runs"][run]["refine"]
    key = f"runs.{run}.refine"
    try:
        potential = potential_for(target, rs["mass"])
        params = {"n_leapfrog": rs["n_leapfrog"]} if rs["kernel"] == "hmc" else {}
        kernel = build_kernel(rs["kernel"], potential, target.kind, params, config_key=key)
        adapt = DualAveraging(float(rs["step_size"]), target=float(rs["target_accept"]))
    except ValueError as e:
        raise ConfigError(f"{key}: {e}") from None
    gen = torch.Generator().manual_seed(shard_seed(int(rs["seed"]), PARTS[part]))
    if rs["method"] == "resample_move" and part == "refine":
        n = int(rs["n_particles"]) or len(pool["x"])
        return ResampleMove(kernel, pool, n, rs["n_local"], rs["n_cycles"], rs["burn_in"],
                            adapt, gen, rs["min_distinct"])
    global_moves = part == "refine" and rs["global_moves"]
    try:
        return FlowMCMC(kernel, _log_q_fn(config, run), pool, rs["n_chains"], rs["n_local"],
                        rs["n_cycles"], rs["burn_in"], adapt, gen, global_moves=global_moves)
    except ValueError as e:
        raise ConfigError(f"{key}: {e}") from None


def _position(s) -> int:
    return s.cycle if isinstance(s, FlowMCMC) else s.round


def _total(s) -> int:
    return s.burn_in + s.n_cycles if isinstance(s, FlowMCMC) else s.max_rounds


def _step(s) -> None:
    s.run_cycle() if isinstance(s, FlowMCMC) else s.run_round()


def _last_accept(s) -> float | None:
    if isinstance(s, ResampleMove):
        return round(s.history["accept"][-1], 3)
    return round(float(s.local_sum.mean()) / s.local_n, 3) if s.local_n else None


def _resume(sampler, ckpt: Path, fingerprint: str) -> None:
    if not ckpt.is_file():
        return
    try:
        sd = torch.load(ckpt, weights_only=False)
    except Exception as e:  # noqa: BLE001 - a damaged checkpoint is redone, not fatal
        log.warning("%s: unreadable checkpoint (%s); starting afresh", ckpt, e)
        return
    if sd.get("fingerprint") != fingerprint:
        log.info("%s: made with other settings or samples; starting afresh", ckpt)
        return
    sampler.load_state_dict(sd["state"])
    log.info("%s: resuming at cycle %d", ckpt, _position(sampler))


def _save(sampler, ckpt: Path, fingerprint: str) -> None:
    with atomic_output(ckpt) as tmp:
        torch.save({"fingerprint": fingerprint, "state": sampler.state_dict()}, tmp)


def _flow_seconds(attrs: dict) -> float:
    """Seconds charged for the pool's flow samples: the sample stage's process CPU time on a
    CPU (the chains are charged theirs), its wall time on a GPU or for files without it."""
    cpu = float(attrs.get("sample_cpu_seconds", float("nan")))
    if str(attrs.get("device", "cpu")).startswith("cpu") and np.isfinite(cpu):
        return cpu
    return float(attrs.get("sample_seconds", float("nan")))


def _write(config: dict, run: str, target, flow: dict, samples_path: Path, pool: dict,
           results: dict, per_sample: float) -> Path:
    spec = config["runs"][run]
    rs = spec["refine"]
    obs = run_observables(config, run, target)

    def scalars(x: np.ndarray, u: np.ndarray) -> dict[str, np.ndarray]:
        return obs.scalars(x, u) if len(x) else {}

    main = results["refine"]
    lw = log_weights(pool["u"].numpy(), pool["log_q"].numpy())
    metrics: dict[str, Any] = {
        "run": run, "system": spec["system"], "method": rs["method"], "kernel": rs["kernel"],
        "settings": rs, "pool_size": int(len(pool["x"])),
        "log_q_error": flow["attrs"].get("log_q_error"),
        "reweighting": reweighting_cost(kish_ess(lw), len(flow["x"]),
                                        per_sample * len(flow["x"])), "warnings": []}
    groups: dict[str, dict[str, np.ndarray]] = {}
    if rs["method"] == "resample_move":
        metrics["refine"] = particle_metrics(main, scalars, per_sample * len(flow["x"]))
        arrays = {"x": main.x, "energies": main.u, "ancestors": main.ancestors}
        groups["rounds"] = {k: np.asarray(v, dtype=float) for k, v in (
            ("distinct_ancestors", main.distinct_ancestors),
            ("distinct_configurations", main.distinct_configurations), ("accept", main.accept))}
    else:
        # charged: the initial block the chains start from and the proposals they used
        metrics["refine"] = chain_metrics(main, scalars,
                                          per_sample * (main.pool_used + main.n_init))
        arrays = {"x": main.x, "energies": main.u, "local_accept": main.local_accept,
                  "global_accept": main.global_accept}
        if rs["global_moves"] and main.pool_used + main.n_init >= len(pool["x"]):
            metrics["warnings"].append(
                f"the {len(pool['x'])} flow samples ran out: later cycles had no global moves "
                "(draw more samples or run fewer cycles)")
    if "baseline" in results:
        b = results["baseline"]
        metrics["baseline"] = chain_metrics(b, scalars)
        groups["baseline"] = {"x": b.x, "energies": b.u, "local_accept": b.local_accept}
    metrics["speedup"] = _speedups(metrics)
    for w in metrics["warnings"]:
        log.warning("%s: %s", run, w)
    attrs = provenance("refine", spec["system"], units="reduced",
                       temperature=config["systems"][spec["system"]].get("temperature"),
                       source={"samples": str(samples_path),
                               "samples_sha256": sha256_of(samples_path)}, config=spec)
    attrs.update(run=run, method=rs["method"], kernel=rs["kernel"],
                 refine=json.dumps(rs, sort_keys=True))
    out = paths.refine_output(config, run)
    write_h5(out, arrays, attrs, groups=groups)
    with atomic_output(paths.refine_metrics(config, run)) as tmp:
        Path(tmp).write_text(json.dumps(metrics, indent=2, sort_keys=True, default=_num))
    return out


def _speedups(m: dict) -> dict[str, float | None]:
    """Effective samples per CPU hour of the refine method over the baseline and over
    reweighting alone (None where either is undefined)."""
    rate = (lambda part: (m.get(part) or {}).get("cost", {}).get("effective_samples_per_cpu_hour"))
    own = rate("refine")
    out = {}
    for other in ("baseline", "reweighting"):
        r = rate(other) if other != "reweighting" else m["reweighting"].get(
            "effective_samples_per_cpu_hour")
        out[f"over_{other}"] = own / r if own and r else None
    return out


def _num(v):
    if isinstance(v, (np.floating, np.integer)):
        v = v.item()
    return v if not isinstance(v, float) or np.isfinite(v) else None
