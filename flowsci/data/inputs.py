"""Checks of a user's input file before it is read: a regular file (not a directory or FIFO,
which would block the checksum), a plausible xyz header, and per-block coordinate ranges.
Each refusal is a DataError naming the input file (never the temporary output)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np

from ..errors import DataError
from .hdf5 import MAX_ABS_VALUE, out_of_range

# The shortest possible atom line of an xyz file ("H 0 0 0\n"): a frame of n atoms takes at
# least n times this many bytes, so a larger count than the file can hold is refused at once
# instead of letting the reader loop over a billion missing lines.
MIN_XYZ_ATOM_BYTES = 8


def regular_file(path: str | os.PathLike, key: str) -> Path:
    """`path` as a Path if it is an existing regular file; DataError naming it and `key` (the
    config key it came from) otherwise."""
    path = Path(path)
    what = "topology file" if key.endswith("topology") else "input file"
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise DataError(f"{path}: {what} does not exist ({key})") from None
    except OSError as e:
        raise DataError(f"{path}: cannot open {what} ({e.strerror}; {key})") from None
    if stat.S_ISDIR(mode):
        raise DataError(f"{path}: is a directory, not an {what} ({key})")
    if not stat.S_ISREG(mode):
        raise DataError(f"{path}: is not a regular file (a FIFO, socket or device; {key})")
    return path


def check_xyz_header(path: Path, fmt: str) -> None:
    """For xyz/extxyz: the first line's atom count fits in the file (see MIN_XYZ_ATOM_BYTES)."""
    if fmt not in ("xyz", "extxyz"):
        return
    with open(path, "rb") as f:
        first = f.readline(256).strip()
    try:
        n = int(first)
    except ValueError:
        return  # not a count: the reader reports the malformed frame itself
    size = path.stat().st_size
    if n < 0 or n * MIN_XYZ_ATOM_BYTES > size:
        raise DataError(f"{path}: first line says {n} atoms, but the file holds only {size} "
                        "bytes (a wrong atom count or a truncated file)")


def check_block(path: Path, block: np.ndarray, first_frame: int, stride: int, name: str) -> None:
    """Refuse NaN/inf or out-of-range (|value| > MAX_ABS_VALUE) entries of `block` [k, ...]
    (converted coordinates or fields of input frames first_frame, first_frame + stride, ...)."""
    bad = out_of_range(block)
    if bad.any():
        i = int(np.argmax(bad))
        frame = first_frame + i * stride
        row = np.asarray(block[i])
        what = ("NaN/Inf" if not np.isfinite(row).all() else
                f"out of range (|value| up to {np.max(np.abs(row)):.3g}, the limit is "
                f"{MAX_ABS_VALUE:g})")
        raise DataError(f"{path}: frame {frame}: {name} {what}")
