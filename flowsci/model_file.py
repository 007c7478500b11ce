"""The model file (`model.pt`): one save/load pair owns its format.

A model file holds plain tensors, numbers and strings only (loaded with
torch.load(weights_only=True), so a file can never run code), with a format version:
  version          MODEL_FILE_VERSION
  state_dict       EMA weights (what is sampled); raw_state_dict: the last optimiser weights
  run, system      names in the config it was trained with
  run_config       JSON of runs.<run> at training time
  target           JSON of systems.<system>.target at training time
  step, train_seconds, test_nll, dtype
  fingerprint      the training fingerprint (stages/train.py) it was trained under ('' if unknown)
  stopped_early    training.early_stopping ended it before training.steps (step: where)
`check_matches` refuses a model file made for another model, prior or target than the current
config (sampling settings such as the ODE solver may differ: they are not part of the model).
"""

from __future__ import annotations

import json
import os
import pickle
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch

from .config import canonical_json, short_json
from .errors import DataError
from .io import atomic_output

MODEL_FILE_VERSION = 2
# What makes a trained model this run's model: the keys of runs.<run> that define the density.
MODEL_KEYS = ("model", "prior")


@dataclass
class ModelFile:
    """Contents of model.pt (see the module docstring)."""

    state_dict: dict[str, torch.Tensor]
    raw_state_dict: dict[str, torch.Tensor]
    run: str
    system: str
    run_config: str
    target: str
    step: int
    train_seconds: float
    test_nll: float
    dtype: str
    fingerprint: str = ""
    stopped_early: bool = False
    version: int = MODEL_FILE_VERSION

    @classmethod
    def for_run(cls, config: dict, run: str, state_dict: dict[str, torch.Tensor],
                raw_state_dict: dict[str, torch.Tensor] | None = None, step: int = 0,
                train_seconds: float = float("nan"), test_nll: float = float("nan"),
                fingerprint: str = "", stopped_early: bool = False) -> "ModelFile":
        """A model file for config's run (names, run config and target taken from `config`)."""
        spec = config["runs"][run]
        cpu = lambda sd: {k: v.detach().cpu() for k, v in sd.items()}  # noqa: E731
        return cls(state_dict=cpu(state_dict), raw_state_dict=cpu(raw_state_dict or state_dict),
                   run=run, system=spec["system"], run_config=canonical_json(spec),
                   target=canonical_json(config["systems"][spec["system"]]["target"]), step=int(step),
                   train_seconds=float(train_seconds), test_nll=float(test_nll),
                   dtype=spec.get("training", {}).get("dtype", "float32"),
                   fingerprint=fingerprint, stopped_early=bool(stopped_early))

    def weights(self, use_ema: bool = True) -> dict[str, torch.Tensor]:
        return self.state_dict if use_ema else self.raw_state_dict


def save_model_file(path: str | os.PathLike, model: ModelFile) -> Path:
    """Write `model` atomically; returns the path."""
    path = Path(path)
    with atomic_output(path) as tmp:
        torch.save(asdict(model), tmp)
    os.utime(path)
    return path


def load_plain(path: str | os.PathLike, what: str) -> Any:
    """torch.load with weights_only=True (tensors, numbers, strings: a file never runs code);
    DataError naming the file and, in one short line, why it cannot be read."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        why = ("it holds objects other than tensors, numbers and strings, which flowsci never "
               "unpickles (a file could run code)")
    except Exception as e:  # noqa: BLE001 - any other failure means a corrupt file
        why = f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:200]}"
    raise DataError(f"{path}: cannot read {what} ({why})")


def load_model_file(path: str | os.PathLike) -> ModelFile:
    """Read a model file; DataError naming the file if missing, unreadable or of another format."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: model file not found (run `flowsci train` first)")
    raw = load_plain(path, "model file")
    if not isinstance(raw, dict) or raw.get("version") != MODEL_FILE_VERSION:
        found = raw.get("version") if isinstance(raw, dict) else type(raw).__name__
        raise DataError(f"{path}: model file format version {found!r}, this flowsci reads "
                        f"version {MODEL_FILE_VERSION}; retrain (delete the file)")
    names = {f.name for f in fields(ModelFile)}
    required = {f.name for f in fields(ModelFile) if f.default is MISSING}
    missing = sorted(required - set(raw))
    if missing:
        raise DataError(f"{path}: model file lacks {missing}")
    for key, types in FIELD_TYPES.items():
        if key in raw and (not isinstance(raw[key], types)
                           or (isinstance(raw[key], bool) and bool not in types)):
            raise DataError(f"{path}: model file entry {key!r} is a {type(raw[key]).__name__}, "
                            f"expected {' or '.join(t.__name__ for t in types)}; retrain "
                            "(delete the file)")
    for key in ("state_dict", "raw_state_dict"):
        if not all(isinstance(k, str) and torch.is_tensor(v) for k, v in raw[key].items()):
            raise DataError(f"{path}: model file {key!r} holds non-tensor weights; retrain "
                            "(delete the file)")
    for key in ("run_config", "target"):
        try:
            value = json.loads(raw[key])
        except ValueError:
            raise DataError(f"{path}: model file entry {key!r} is not valid JSON; retrain "
                            "(delete the file)") from None
        if not isinstance(value, dict):
            raise DataError(f"{path}: model file entry {key!r} is not a JSON object; retrain "
                            "(delete the file)")
    return ModelFile(**{k: raw[k] for k in names if k in raw})


# The type each model-file entry must have (checked on load: a file is data, not trusted).
FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "state_dict": (dict,), "raw_state_dict": (dict,), "run": (str,), "system": (str,),
    "run_config": (str,), "target": (str,), "step": (int,), "train_seconds": (int, float),
    "test_nll": (int, float), "dtype": (str,), "fingerprint": (str,), "stopped_early": (bool,),
    "version": (int,)}


def check_matches(model: ModelFile, path: str | os.PathLike, config: dict, run: str) -> None:
    """Refuse a model file trained for another model, prior or target than config's run."""
    spec = config["runs"][run]
    stored = json.loads(model.run_config)
    current_target = config["systems"][spec["system"]]["target"]
    pairs: list[tuple[str, Any, Any]] = [("system", model.system, spec["system"])]
    pairs += [(f"runs.{run}.{k}", stored.get(k), spec.get(k)) for k in MODEL_KEYS]
    pairs.append((f"systems.{spec['system']}.target", json.loads(model.target), current_target))
    for key, was, now in pairs:
        if canonical_json(was) != canonical_json(now):
            raise DataError(f"{path}: trained with {key} = {short_json(was)}, the config now has "
                            f"{short_json(now)}; retrain (delete the file) or restore the setting")
