"""train stage: data.h5 -> results/{system}/{run}/model.pt (+ checkpoints/, train_log.csv)."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import torch

from .. import paths
from ..data.hdf5 import read_splits, sha256_of
from ..device import resolve_device, resolve_dtype
from ..errors import ConfigError, DataError
from ..flows.build import build_flow
from ..flows.cnf import CNF
from ..model_file import ModelFile, check_matches, load_model_file, save_model_file
from ..systems import build_target
from ..training import OBJECTIVES, TrainSettings, distributed, train_flow
from ..training.loop import validation_nll
from .checks import check_data_file

log = logging.getLogger(__name__)


def load_splits(config: dict, system: str, splits: tuple[str, ...],
                target=None) -> dict[str, torch.Tensor]:
    """Splits of the system's data as float64 tensors [N, *event], after checking once that
    the file was made for this config's system (target: built from the config if None)."""
    path = paths.data_file(config, system)
    if target is None:
        target = build_target(config["systems"][system]["target"], f"systems.{system}.target")
    attrs = check_data_file(config, system, target, path)
    main = "positions" if attrs["kind"] == "particles" else "fields"
    data = read_splits(path, main, splits)
    for s, a in data.items():
        if len(a) == 0:  # training would save a model with test NLL nan
            raise DataError(f"{path}: the {s} split is empty ({sum(map(len, data.values()))} "
                            f"frames in {', '.join(splits)}); add frames or raise "
                            f"systems.{system}.data.splits.{s}, then rerun `flowsci preprocess "
                            f"--system {system} --force`")
    return {s: torch.as_tensor(a, dtype=torch.float64) for s, a in data.items()}


def load_split(config: dict, system: str, split: str) -> torch.Tensor:
    """One split of the system's data as a float64 tensor [N, *event] (see load_splits)."""
    return load_splits(config, system, (split,))[split]


# Settings that may change between chunks of one training without invalidating it.
RESUMABLE_KEYS = ("steps", "val_every", "val_samples", "test_samples", "checkpoint_every",
                  "early_stopping")


def training_fingerprint(config: dict, run: str) -> str:
    """Hash of what a checkpoint depends on: the data file, the target and the model/training
    settings (minus RESUMABLE_KEYS), so a checkpoint is never resumed for other data, another
    target or other settings."""
    spec = config["runs"][run]
    training = {k: v for k, v in spec["training"].items() if k not in RESUMABLE_KEYS}
    key = json.dumps({"model": spec["model"], "prior": spec["prior"], "training": training,
                      "target": config["systems"][spec["system"]]["target"],
                      "data": sha256_of(paths.data_file(config, spec["system"])),
                      **({"init_from": sha256_of(paths.model_file(config, spec["init_from"]))}
                         if spec.get("init_from") else {})},
                     sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()


def _finished_model(config: dict, run: str) -> Path | None:
    """model.pt if it already holds this training's final result (same fingerprint, all
    training.steps), else None. Rewriting it would change its hash: the run's samples and the
    checkpoints of a second phase started from it would be redone for nothing."""
    path = paths.model_file(config, run)
    if not path.is_file():
        return None
    try:
        model = load_model_file(path)
        fingerprint = training_fingerprint(config, run)  # needs the data (and init_from) files
    except (DataError, OSError):
        return None
    done = model.stopped_early or model.step == config["runs"][run]["training"]["steps"]
    if not done or model.fingerprint != fingerprint:
        return None
    log.info("%s already holds this training (step %d); skipping", path, model.step)
    return path


def initial_weights(config: dict, run: str, flow: torch.nn.Module) -> Path:
    """Load the EMA weights of runs.<run>.init_from's model.pt into `flow` (which must be the
    same model and prior for the same target); returns that file's path."""
    source = config["runs"][run]["init_from"]
    path = paths.model_file(config, source)
    if not path.is_file():
        raise DataError(f"{path}: model file of run {source!r} not found; runs.{run}.init_from "
                        f"needs it trained first (`flowsci train --run {source}`)")
    model = load_model_file(path)
    check_matches(model, path, config, run)
    flow.load_state_dict(model.weights(use_ema=True))
    log.info("%s: starting from %s (run %s, step %d)", run, path, source, model.step)
    return path


def train(config: dict, run: str, progress: bool = True, device: str | None = None,
          stop_after: int | None = None) -> Path | None:
    """Train the run's flow; resumes from its checkpoints. Returns model.pt, or None when
    `stop_after` ended the run early (call again to continue).

    Started by `torchrun --nproc_per_node N` (WORLD_SIZE etc. set), the N processes train one
    model with DDP (NCCL on CUDA, each rank on cuda:LOCAL_RANK; gloo on CPU): each takes its
    slice of every global batch of training.batch_size; rank 0 alone writes checkpoints,
    train_log.csv and model.pt."""
    dev = resolve_device(device or config["device"])
    with distributed.session(dev) as where:
        if dev.type == "cuda" and where.world_size > 1:
            dev = torch.device("cuda", where.local_rank)
        return _train(config, run, progress, dev, stop_after, where)


def _train(config: dict, run: str, progress: bool, dev: torch.device,
           stop_after: int | None, where: distributed.DistInfo) -> Path | None:
    spec = config["runs"][run]
    system = spec["system"]
    target = build_target(config["systems"][system]["target"], f"systems.{system}.target")
    tr = spec["training"]
    done = _finished_model(config, run)
    if done is not None:
        return done
    dtype = resolve_dtype(tr["dtype"])
    torch.manual_seed(tr["seed"])
    flow = build_flow(spec, target, run).to(dev, dtype)
    if spec.get("init_from"):  # a second phase: start from another run's trained model
        initial_weights(config, run, flow)
    key = f"runs.{run}.training.objective"
    objective = OBJECTIVES.build(tr["objective"]["name"], tr["objective"].get("params", {}),
                                 config_key=key, target=target)
    if objective.needs_vector_field and not isinstance(flow, CNF):
        raise ConfigError(f"{key}: {tr['objective']['name']!r} trains a vector field, but model "
                          f"{spec['model']['name']!r} is a flow without one; use 'likelihood'")
    if tr["batch_size"] % where.world_size:
        raise ConfigError(f"runs.{run}.training.batch_size = {tr['batch_size']} must be "
                          f"divisible by the number of processes ({where.world_size})")
    data = load_splits(config, system, ("train", "val", "test"), target)
    train_x, val_x = data["train"].to(dev, dtype), data["val"].to(dev, dtype)
    out_dir = paths.run_dir(config, run)
    settings = TrainSettings.from_config(tr)
    fingerprint = training_fingerprint(config, run)
    if where.is_main:
        log.info("training %s on %s (%s, %s, %d process%s): %d train / %d val samples", run,
                 system, dev, dtype, where.world_size, "es" if where.world_size > 1 else "",
                 len(train_x), len(val_x))
    result = train_flow(flow, objective, train_x, settings, val_x=val_x, out_dir=out_dir,
                        progress=progress, stop_after=stop_after,
                        fingerprint=fingerprint, desc=f"train {run}")
    if not result["finished"]:
        return None
    path = paths.model_file(config, run)
    if where.is_main:
        test_x = data["test"][:tr["test_samples"]].to(dev, dtype)
        raw_state = {k: v.detach().cpu().clone() for k, v in flow.state_dict().items()}
        flow.load_state_dict({**flow.state_dict(), **result["ema"]})
        test_nll = validation_nll(flow, test_x)
        model = ModelFile.for_run(config, run, flow.state_dict(), raw_state,  # EMA, last weights
                                  step=result["step"], train_seconds=result["elapsed"],
                                  test_nll=test_nll, fingerprint=fingerprint,
                                  stopped_early=result["stopped_early"])
        path = save_model_file(path, model)
        stop = (f", stopped early at step {result['step']}: best validation at step "
                f"{result['best_step']}" if result["stopped_early"] else "")
        log.info("saved %s (test NLL %.4f, %.1f s%s%s)", path, test_nll, result["elapsed"],
                 f", {result['skipped_steps']} skipped steps" if result["skipped_steps"] else "",
                 stop)
    distributed.barrier()  # model.pt exists before any rank returns
    return path
