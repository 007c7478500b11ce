"""Lattice field configurations from .npy, .npz or HDF5, checked against the target's action.

Layouts (fields_key / actions_key rename the arrays, default 'fields' / 'actions'):
  .npy            fields [N, *shape] (memory-mapped)
  .npz            fields [N, *shape], optional actions [N], optional couplings (e.g. m2, lam)
  .h5 / .hdf5     datasets fields, optional actions; couplings as root attrs
Read in blocks of `chunk_frames`; the actions are recomputed with target.action (float64) and
compared with any stored ones: |S_stored - S| <= action_rtol * (|S| + V) per frame.
Couplings stored in the file (keys matching the target's attrs, e.g. m2, lam) must agree.
"""

from __future__ import annotations

import contextlib
import os
import zipfile
from pathlib import Path
from typing import Any, Iterator

import h5py
import numpy as np
import torch

from ..errors import DataError

FORMATS = {".npy": "npy", ".npz": "npz", ".h5": "hdf5", ".hdf5": "hdf5"}


def detect_format(path: str | os.PathLike, fmt: str | None = None) -> str:
    path = Path(path)
    fmt = fmt or FORMATS.get(path.suffix.lower())
    if fmt == "h5":
        fmt = "hdf5"
    if fmt not in ("npy", "npz", "hdf5"):
        raise DataError(f"{path}: lattice input must be .npy, .npz or .h5/.hdf5 (got "
                        f"{path.suffix or 'no extension'}); or set data.input.format")
    return fmt


@contextlib.contextmanager
def _open(path: Path, fmt: str, fields_key: str, actions_key: str):
    """Yield (fields array-like, actions array-like or None, couplings dict)."""
    try:
        if fmt == "npy":
            yield np.load(path, mmap_mode="r", allow_pickle=False), None, {}
        elif fmt == "npz":
            with np.load(path, allow_pickle=False) as z:
                if fields_key not in z.files:
                    raise DataError(f"{path}: no array {fields_key!r} (has {z.files})")
                couplings = {k: z[k].item() for k in z.files
                             if k not in (fields_key, actions_key) and z[k].size == 1}
                yield z[fields_key], (z[actions_key] if actions_key in z.files else None), couplings
        else:
            with h5py.File(path, "r") as f:
                if fields_key not in f:
                    raise DataError(f"{path}: no dataset {fields_key!r} (has {list(f)})")
                couplings = {k: (v.item() if isinstance(v, np.generic) else v)
                             for k, v in f.attrs.items()}
                yield f[fields_key], (f[actions_key] if actions_key in f else None), couplings
    except DataError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise DataError(f"{path}: cannot read as {fmt} ({type(e).__name__}: {e})") from None


def _check_couplings(path: Path, stored: dict[str, Any], target) -> dict[str, Any]:
    expected = target.attrs()
    for k, v in stored.items():
        if k in expected and k != "shape" and isinstance(v, (int, float, np.number)):
            if not np.isclose(float(v), float(expected[k]), rtol=1e-9, atol=1e-12):
                raise DataError(f"{path}: coupling {k} = {v} in the file, but the target "
                                f"{target.name} has {k} = {expected[k]}")
    return {k: v for k, v in stored.items() if k in expected}


def stream_fields(path: str | os.PathLike, target, *, fmt: str | None = None,
                  start: int = 0, stop: int | None = None, stride: int = 1,
                  chunk_frames: int = 4096, fields_key: str = "fields",
                  actions_key: str = "actions", action_rtol: float = 1e-5,
                  info: dict[str, Any] | None = None) -> Iterator[dict[str, np.ndarray]]:
    """Yield blocks {'fields' [k, *shape] float64, 'actions' [k]} (actions recomputed).

    `info` (if given) receives format, couplings found, n_frames and whether actions were stored.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: input file does not exist")
    fmt = detect_format(path, fmt)
    info = {} if info is None else info
    with _open(path, fmt, fields_key, actions_key) as (fields, actions, couplings):
        shape = tuple(target.event_shape)
        if fields.ndim != len(shape) + 1 or tuple(fields.shape[1:]) != shape:
            raise DataError(f"{path}: fields have shape {tuple(fields.shape)}, expected "
                            f"[N, {', '.join(map(str, shape))}] for target {target.name} "
                            "(lattice shape mismatch)")
        for what, arr in (("fields", fields), ("actions", actions)):
            dt = np.dtype(getattr(arr, "dtype", np.float64))
            if arr is not None and not (np.issubdtype(dt, np.floating)
                                        or np.issubdtype(dt, np.integer)):
                raise DataError(f"{path}: {what} have dtype {dt}, expected real numbers (complex, "
                                "boolean and string arrays are refused, not converted)")
        if actions is not None and actions.shape != (fields.shape[0],):
            raise DataError(f"{path}: actions have shape {actions.shape}, expected "
                            f"({fields.shape[0]},)")
        info.update(format=fmt, couplings=_check_couplings(path, couplings, target),
                    stored_actions=actions is not None)
        n = fields.shape[0]
        idx = np.arange(start, n if stop is None else min(stop, n), stride)
        if len(idx) == 0:
            raise DataError(f"{path}: no field configurations (file has {n}; selection "
                            f"start={start} stop={stop} stride={stride})")
        volume = int(np.prod(shape))
        for b in range(0, len(idx), chunk_frames):
            sel = idx[b:b + chunk_frames]
            lo, hi = int(sel[0]), int(sel[-1]) + 1
            block = np.ascontiguousarray(np.array(fields[lo:hi], dtype=np.float64)[::stride])
            bad = ~np.isfinite(block.reshape(len(block), -1)).all(axis=1)
            if bad.any():
                raise DataError(f"{path}: frame {int(sel[np.argmax(bad)])}: NaN/Inf field values")
            with torch.no_grad():
                s = getattr(target, "action", target.energy)(torch.as_tensor(block)).numpy()
            if actions is not None:
                stored = np.asarray(actions[lo:hi], dtype=np.float64)[::stride]
                tol = action_rtol * (np.abs(s) + volume)
                wrong = ~(np.abs(stored - s) <= tol)
                if wrong.any():
                    i = int(np.argmax(wrong))
                    raise DataError(f"{path}: frame {int(sel[i])}: stored action {stored[i]:.8g} "
                                    f"disagrees with the recomputed {s[i]:.8g} (target "
                                    f"{target.name}, {target.attrs()})")
            yield {"fields": block, "actions": s, "energies": s}
        info["n_frames"] = len(idx)
