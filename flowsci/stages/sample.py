"""sample stage: model.pt -> samples/shard-{i}.h5 (exact log q), and the gather step -> samples.h5.

Shards are independent jobs with seeds derived from the shard index; a shard whose file
exists and matches the current model is never redone (resumable), and each shard is written
atomically, so a shard killed half-way leaves nothing and is redone cleanly.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import h5py
import numpy as np
import torch

from .. import paths
from ..data.hdf5 import provenance, read_array, read_attrs, sha256_of, validate_h5, write_h5
from ..device import resolve_device, resolve_dtype
from ..chirality import check_reflection_symmetric, mirror_wrong_handed, reference_handedness
from ..errors import ConfigError, DataError
from ..flows.base import Flow
from ..flows.build import build_flow
from ..sampling import LOG_Q_TOLERANCE, REFERENCE_SOLVER, log_q_error, sample_exact
from ..systems import build_target
from ..model_file import ModelFile, check_matches, load_model_file
from .checks import check_sample_counts

log = logging.getLogger(__name__)
PER_SAMPLE = ("x", "log_q", "energies", "log_weights")


def shard_sizes(n: int, n_shards: int) -> list[int]:
    return [n // n_shards + (1 if i < n % n_shards else 0) for i in range(n_shards)]


def shard_seed(seed: int, shard: int) -> int:
    """Independent, reproducible seed per shard (SeedSequence spawning)."""
    return int(np.random.SeedSequence([seed, shard]).generate_state(1)[0])


def load_trained_flow(config: dict, run: str, device: torch.device, dtype: torch.dtype,
                      use_ema: bool = True) -> tuple[Flow, object, ModelFile]:
    """The run's trained flow (EMA weights by default), its target and model file. Refuses a
    model file made for another model, prior or target than the config's."""
    spec = config["runs"][run]
    system = spec["system"]
    target = build_target(config["systems"][system]["target"], f"systems.{system}.target")
    path = paths.model_file(config, run)
    model = load_model_file(path)
    check_matches(model, path, config, run)
    flow = build_flow(spec, target, run)
    try:
        flow.load_state_dict(model.weights(use_ema))
    except RuntimeError as e:
        first = str(e).strip().splitlines()[1:2] or [str(e)[:200]]
        raise DataError(f"{path}: weights do not fit the configured model "
                        f"({first[0].strip()}); retrain") from None
    return flow.to(device, dtype).eval(), target, model


def sample(config: dict, run: str, shard: int = 0, progress: bool = True,
           device: str | None = None) -> Path:
    """Write shard `shard` of the run's samples (skipped if already done for this model)."""
    spec = config["runs"][run]
    sp = spec["sampling"]
    if sp["n_samples"] < sp["n_shards"]:
        raise DataError(f"runs.{run}.sampling: n_samples ({sp['n_samples']}) < n_shards "
                        f"({sp['n_shards']})")
    if not 0 <= shard < sp["n_shards"]:
        raise DataError(f"shard {shard} out of range: runs.{run}.sampling.n_shards = "
                        f"{sp['n_shards']}")
    out = paths.shard_file(config, run, shard)
    model_path = paths.model_file(config, run)
    if not model_path.is_file():
        raise DataError(f"{model_path}: model file not found (run `flowsci train` first)")
    model_sha = sha256_of(model_path)
    if out.exists() and _is_done(out, model_sha, spec):
        log.info("%s already holds this model's samples; skipping", out)
        return out
    dev = resolve_device(device or config["device"])
    flow, target, model = load_trained_flow(
        config, run, dev, resolve_dtype(sp["dtype"]), sp["use_ema"])
    n = shard_sizes(sp["n_samples"], sp["n_shards"])[shard]
    seed = shard_seed(sp["seed"], shard)
    res = draw_samples(config, run, flow, target, n, seed, progress=progress,
                       desc=f"sample {run} shard {shard}", check_samples=int(sp["check_samples"]))
    if len(res["x"]) == 0:
        raise DataError(f"{out}: all {n} samples failed; the model or solver settings are broken")
    seconds, err, n_check, n_mirrored = (res[k] for k in ("seconds", "log_q_error",
                                                           "log_q_error_n", "n_mirrored"))
    if not err <= LOG_Q_TOLERANCE and n_check:
        log.warning("%s: the exact log q is off by up to %.3g nats against a tight float64 solve "
                    "(limit %g): use a finer solver (runs.%s.flow: more n_steps, or dopri5 with a "
                    "lower rtol/atol) before trusting the weights", out, err, LOG_Q_TOLERANCE, run)
    x = res["x"].double().numpy()
    log_q = res["log_q"].double().numpy()
    u = res["energies"].double().numpy()
    attrs = provenance("samples", spec["system"], units="reduced", temperature=None,
                       source={"model": str(paths.model_file(config, run)), "sha256": model_sha},
                       config=spec)
    attrs.update(run=run, model_sha256=model_sha, n_requested=n, n_failed=res["n_failed"],
                 seed=seed, shard=shard, solver=json.dumps(spec["flow"], sort_keys=True),
                 sampling=json.dumps(sp, sort_keys=True),
                 test_nll=float(model.test_nll), train_seconds=float(model.train_seconds),
                 train_steps=int(model.step), device=str(dev), nfe=res["nfe"],
                 sample_seconds=seconds, sample_cpu_seconds=res["cpu_seconds"],
                 n_mirrored=n_mirrored,
                 exact_method=flow.exact_method, log_q_error=err, log_q_error_n=n_check,
                 log_q_error_reference=json.dumps(vars(REFERENCE_SOLVER), sort_keys=True))
    arrays = {"x": x, "log_q": log_q, "energies": u, "log_weights": -u - log_q}
    write_h5(out, arrays, attrs)
    return out


def draw_samples(config: dict, run: str, flow: Flow, target, n: int, seed: int, *,
                 progress: bool = True, desc: str = "sample", check_samples: int = 0) -> dict:
    """n exact samples of the run's trained `flow` from generator seed `seed`, in batches of
    runs.<run>.sampling.batch_size, with the run's chirality handling: the one code path of
    the sample stage and of flowsci.api. Returns {'x', 'log_q', 'energies'} (torch, CPU,
    finite rows only), 'n_failed', 'nfe', 'n_mirrored', 'seconds' (wall time of the solves)
    and 'log_q_error' over the first `check_samples` samples ('log_q_error_n' of them),
    measured on the flow's own density before any mirroring."""
    sp = config["runs"][run]["sampling"]
    gen = torch.Generator().manual_seed(int(seed))
    t0, c0 = time.perf_counter(), time.process_time()
    res = sample_exact(flow, target, n, sp["batch_size"], gen, progress=progress, desc=desc)
    res["seconds"] = time.perf_counter() - t0  # wall time of the exact sampling itself
    res["cpu_seconds"] = time.process_time() - c0  # its process CPU time (all threads)
    n_check = min(int(check_samples), len(res["x"]))
    res["log_q_error"] = log_q_error(flow, res["x"][:n_check], res["log_q"][:n_check])
    res["log_q_error_n"] = n_check
    res["n_mirrored"] = _fix_chirality(config, run, flow, target, res)  # log q' = log q + log 2
    return res


def chirality_reference(config: dict, run: str, n_atoms: int
                        ) -> tuple[tuple[int, int, int, int], int] | None:
    """(atoms, sign) of runs.<run>.sampling.chirality: the chirality centre and the handedness
    of the reference (training) data; None when the run does not fix chirality."""
    spec = config["runs"][run]["sampling"].get("chirality")
    if not spec:
        return None
    atoms = tuple(spec["atoms"])
    if max(atoms) >= n_atoms:
        raise ConfigError(f"runs.{run}.sampling.chirality.atoms {list(atoms)}: the system has "
                          f"{n_atoms} atoms")
    data = paths.data_file(config, config["runs"][run]["system"])
    return atoms, reference_handedness(torch.as_tensor(read_array(data, "positions", "train")),
                                       atoms)


def _fix_chirality(config: dict, run: str, flow: Flow, target, res: dict) -> int:
    """With runs.<run>.sampling.chirality: mirror the wrong-handed samples of res in place
    (log q + log 2, energies recomputed); returns how many were mirrored (0 without)."""
    if len(res["x"]) == 0:
        return 0
    chirality = chirality_reference(config, run, res["x"].shape[1])
    if chirality is None:
        return 0
    atoms, sign = chirality
    check_reflection_symmetric(flow, res["x"][:4], res["log_q"][:4])
    x, log_q, mirrored = mirror_wrong_handed(res["x"], res["log_q"], atoms, sign)
    if mirrored.any():
        with torch.no_grad():
            res["energies"][mirrored] = target.energy(x[mirrored]).to(res["energies"])
    res["x"], res["log_q"] = x, log_q
    return int(mirrored.sum())


def _is_done(path: Path, model_sha: str, spec: dict) -> bool:
    """The shard holds this model's samples with the current sampling and solver settings."""
    try:
        a = read_attrs(path)
    except OSError:
        return False
    return (a.get("model_sha256") == model_sha
            and a.get("sampling") == json.dumps(spec["sampling"], sort_keys=True)
            and a.get("solver") == json.dumps(spec["flow"], sort_keys=True))


def gather(config: dict, run: str) -> Path:
    """Concatenate the run's shards into samples.h5 (all shards must come from one model)."""
    sp = config["runs"][run]["sampling"]
    shards = [paths.shard_file(config, run, i) for i in range(sp["n_shards"])]
    missing = [str(p) for p in shards if not p.exists()]
    if missing:
        raise DataError(f"missing sample shard(s): {', '.join(missing)}")
    arrays: dict[str, list[np.ndarray]] = {k: [] for k in PER_SAMPLE}
    shas, n_req, n_failed, seconds, cpu_seconds, n_mirrored = set(), 0, 0, 0.0, 0.0, 0
    for p in shards:
        a = validate_h5(p)
        with h5py.File(p, "r") as f:
            for k in PER_SAMPLE:
                arrays[k].append(f[k][()])
        check_sample_counts(p, a, len(arrays["x"][-1]))
        shas.add(a["model_sha256"])
        n_req += int(a["n_requested"])
        n_failed += int(a["n_failed"])
        seconds += float(a.get("sample_seconds", float("nan")))
        cpu_seconds += float(a.get("sample_cpu_seconds", float("nan")))  # nan: older shard
        n_mirrored += int(a.get("n_mirrored", 0))
    if len(shas) != 1:
        raise DataError(f"shards of run {run!r} come from different models: {sorted(shas)}")
    attrs = read_attrs(shards[0])
    # sample_(cpu_)seconds: summed over shards (the machine time, whether shards ran in parallel)
    attrs.update(n_requested=n_req, n_failed=n_failed, shard=-1, n_shards=len(shards),
                 sample_seconds=seconds, sample_cpu_seconds=cpu_seconds, n_mirrored=n_mirrored)
    out = paths.samples_file(config, run)
    write_h5(out, {k: np.concatenate(v) for k, v in arrays.items()}, attrs)
    validate_h5(out)
    return out
