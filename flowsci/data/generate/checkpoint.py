"""Generator checkpoints as plain HDF5: data only, nothing in the file is ever executed.

File layout (h5py): root attrs `format` = FORMAT, `version` = VERSION, `key` (JSON of the
settings that must match to resume). The state dict is stored as a tree: a dict is a group,
each leaf a dataset with attr `kind`:
  tensor -- a torch.Tensor (dtype and shape kept; e.g. chain states, the torch RNG state as
            uint8), array -- a numpy array, bytes -- raw bytes as uint8 (e.g. an OpenMM
            checkpoint), json -- a JSON string (numbers, strings, lists of them; Python ints of
            any size, floats exactly).
A file that cannot be read this way (not HDF5, foreign or older format -- including the
torch.save files of earlier flowsci versions, which are not opened) is ignored with a warning and the
run starts over; it is replaced by the next checkpoint.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from ...io import atomic_output

FORMAT = "flowsci generator checkpoint"
VERSION = 1


def _write(group: h5py.Group, state: dict[str, Any]) -> None:
    for name, value in state.items():
        if not isinstance(name, str) or not name or "/" in name or name == ".":
            raise ValueError(f"checkpoint: state keys must be plain strings, got {name!r}")
        if isinstance(value, dict):
            _write(group.create_group(name), value)
            continue
        if isinstance(value, torch.Tensor):
            ds, kind = group.create_dataset(name, data=value.detach().cpu().numpy()), "tensor"
        elif isinstance(value, np.ndarray):
            if value.dtype.kind not in "biufc":
                raise ValueError(f"checkpoint: array {name!r} has unsupported dtype {value.dtype}")
            ds, kind = group.create_dataset(name, data=value), "array"
        elif isinstance(value, (bytes, bytearray)):
            ds, kind = group.create_dataset(name, data=np.frombuffer(bytes(value), np.uint8)), "bytes"
        else:
            text = json.dumps(value, default=_json_scalar)
            ds, kind = group.create_dataset(name, data=text), "json"
        ds.attrs["kind"] = kind


def _json_scalar(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    raise TypeError(f"checkpoint: cannot store a {type(v).__name__}")


def _read(group: h5py.Group) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, item in group.items():
        if isinstance(item, h5py.Group):
            out[name] = _read(item)
            continue
        kind = item.attrs.get("kind")
        if kind == "tensor":
            out[name] = torch.from_numpy(np.array(_numeric(item), copy=True))
        elif kind == "array":
            out[name] = _numeric(item)
        elif kind == "bytes":
            out[name] = _numeric(item).astype(np.uint8).tobytes()
        elif kind == "json":
            raw = item[()]
            out[name] = json.loads(raw.decode() if isinstance(raw, bytes) else str(raw))
        else:
            raise ValueError(f"dataset {item.name!r} has unknown kind {kind!r}")
    return out


def _numeric(ds: h5py.Dataset) -> np.ndarray:
    if ds.dtype.kind not in "biufc":
        raise ValueError(f"dataset {ds.name!r} is not numeric ({ds.dtype})")
    return np.asarray(ds[()])


def save_state(path: str | os.PathLike, state: dict[str, Any], key: str) -> None:
    """Write `state` (nested dict of tensors, arrays, bytes, JSON values) atomically to path."""
    with atomic_output(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.attrs["format"] = FORMAT
            f.attrs["version"] = VERSION
            f.attrs["key"] = key
            _write(f, state)


def load_state(path: str | os.PathLike) -> tuple[str, dict[str, Any]]:
    """(key, state) from a file written by save_state; ValueError/OSError if it is not one."""
    with h5py.File(path, "r") as f:
        if f.attrs.get("format") != FORMAT:
            raise ValueError("not a flowsci generator checkpoint")
        if f.attrs.get("version") != VERSION:
            raise ValueError(f"checkpoint version {f.attrs.get('version')} != {VERSION}")
        key = f.attrs.get("key")
        return (key.decode() if isinstance(key, bytes) else str(key)), _read(f)


class Checkpoint:
    """Periodic chain-state checkpoint next to a generator's output, reused when rerun.

    path: file to write (None disables checkpointing); key: JSON-able settings that must match
    for a saved state to be resumed (generator name, params, target attrs); every: steps.
    Saved atomically (unique temporary file + rename); `clear()` after the output is written.
    An unreadable file is ignored with a warning (the run starts over), never executed.
    """

    def __init__(self, path: str | os.PathLike | None, key: dict[str, Any], every: int = 1000):
        self.path = Path(path) if path else None
        self.key = json.dumps(key, sort_keys=True, default=str)
        self.every = max(int(every), 1)

    def load(self) -> dict[str, Any] | None:
        """The saved state if it exists and was written with the same key, else None."""
        if self.path is None or not self.path.exists():
            return None
        try:
            key, state = load_state(self.path)
        except Exception as e:  # corrupt, foreign or crafted file: start over
            warnings.warn(f"{self.path}: unreadable generator checkpoint ignored, starting over "
                          f"({type(e).__name__}: {e})", stacklevel=2)
            return None
        if key != self.key:
            warnings.warn(f"{self.path}: checkpoint from different settings ignored", stacklevel=2)
            return None
        return state

    def due(self, step: int) -> bool:
        return self.path is not None and step % self.every == 0

    def save(self, state: dict[str, Any]) -> None:
        if self.path is not None:
            save_state(self.path, state, self.key)

    def clear(self) -> None:
        if self.path is not None and self.path.exists():
            self.path.unlink()

    def ignore(self, reason: str) -> None:
        """Warn that a loaded state does not fit this run (it will be overwritten)."""
        warnings.warn(f"{self.path}: unusable generator checkpoint ignored, starting over "
                      f"({reason})", stacklevel=2)
