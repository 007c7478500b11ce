"""The flowsci HDF5 schema: atomic writes, provenance and validation.

Root attrs: schema_version, kind ('particles' | 'lattice' | 'samples'), system, units,
temperature, created, flowsci_version, source (JSON: path, sha256), config (JSON).
Particles: positions [N, n_atoms, dim], atomic_numbers [n_atoms], optional energies [N]
(reduced), forces, cell, pbc. Lattice: fields [N, *shape], actions [N].
Splits: group splits/ with int64 index arrays train, val, test.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any, Iterator

import h5py
import numpy as np

from ..version import __version__
from ..errors import DataError
from ..io import atomic_output

SCHEMA_VERSION = 1
ROOT_ATTRS = ("schema_version", "kind", "system", "units", "temperature", "created",
              "flowsci_version", "source", "config")
MAIN_ARRAY = {"particles": "positions", "lattice": "fields", "samples": "x"}


def sha256_of(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def provenance(kind: str, system: str, *, units: str, temperature: float | None,
               source: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    """Root attrs for a new file. `source`: e.g. {'path': ..., 'sha256': ...} or generator info."""
    return {
        "schema_version": SCHEMA_VERSION,
        "kind": kind,
        "system": system,
        "units": units,
        "temperature": float("nan") if temperature is None else float(temperature),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "flowsci_version": __version__,
        "source": json.dumps(source, sort_keys=True, default=str),
        "config": json.dumps(config, sort_keys=True, default=str),
    }


@contextlib.contextmanager
def create_h5(tmp: str | os.PathLike) -> Iterator[h5py.File]:
    """A new HDF5 file at `tmp`, written through `_GuardedFile`; the first failed write
    (disk full, `ulimit -f`: OSError ENOSPC/EFBIG) is raised once the file is closed."""
    with open(tmp, "wb+") as raw:
        guarded = _GuardedFile(raw)
        try:
            with h5py.File(guarded, "w") as f:
                f._flowsci_guard = guarded  # lets long writers stop early (ChunkedWriter)
                yield f
        finally:
            if guarded.error is not None:
                raise guarded.error
    if guarded.error is not None:
        raise guarded.error


class _GuardedFile:
    """File object for h5py that never hands HDF5 a write error. With HDF5's own driver, or a
    plain Python file, a failed write surfaces while h5py closes the file and can crash the
    process (segfault); here the first failure is recorded, the file's bytes so far move to
    memory and writing goes on there, so HDF5 closes cleanly and create_h5 raises the error."""

    def __init__(self, raw):
        self.raw, self.error = raw, None

    def _fail(self, e: OSError) -> None:
        pos = self.raw.tell()
        self.raw.seek(0)
        self.error, self.raw = e, io.BytesIO(self.raw.read())
        self.raw.seek(pos)

    def write(self, data) -> int:
        pos = self.raw.tell()
        try:
            n = self.raw.write(data)
            self.raw.flush()  # a buffered write fails here, not later at close
            return n
        except OSError as e:
            if self.error is not None:
                raise
            self._fail(e)
            self.raw.seek(pos)
            return self.raw.write(data)

    def truncate(self, size=None):
        try:
            return self.raw.truncate(size)
        except OSError as e:
            if self.error is not None:
                raise
            self._fail(e)
            return self.raw.truncate(size)

    def flush(self) -> None:
        if self.error is None:
            try:
                self.raw.flush()
            except OSError as e:
                self._fail(e)

    def __getattr__(self, name):  # seek, tell, read, readinto
        return getattr(self.raw, name)


def write_h5(path: str | os.PathLike, arrays: dict[str, np.ndarray], attrs: dict[str, Any],
             groups: dict[str, dict[str, np.ndarray]] | None = None,
             compression: str | None = "gzip") -> Path:
    """Write arrays (and groups of arrays) with root attrs, atomically."""
    with atomic_output(path) as tmp:
        with create_h5(tmp) as f:
            for k, v in attrs.items():
                f.attrs[k] = v
            for name, arr in arrays.items():
                arr = np.asarray(arr)
                comp = compression if arr.size > 1024 else None
                f.create_dataset(name, data=arr, compression=comp)
            for gname, members in (groups or {}).items():
                g = f.require_group(gname)
                for name, arr in members.items():
                    g.create_dataset(name, data=np.asarray(arr))
    return Path(path)


def make_splits(n: int, fractions: dict[str, float], method: str = "random",
                seed: int = 0) -> dict[str, np.ndarray]:
    """Disjoint, covering index sets. method 'random' (seeded) or 'contiguous' (blocks in order)."""
    names = ("train", "val", "test")
    fr = np.array([float(fractions.get(k, 0.0)) for k in names])
    if n <= 0:
        raise DataError("cannot split an empty dataset")
    if np.any(fr < 0) or fr.sum() <= 0:
        raise DataError(f"split fractions must be non-negative with a positive sum: {fractions}")
    fr = fr / fr.sum()
    counts = np.floor(fr * n).astype(int)
    counts[0] += n - counts.sum()
    if method == "random":
        order = np.random.default_rng(seed).permutation(n)
    elif method == "contiguous":
        order = np.arange(n)
    else:
        raise DataError(f"unknown split method {method!r}; use 'random' or 'contiguous'")
    bounds = np.concatenate([[0], np.cumsum(counts)])
    return {k: np.sort(order[bounds[i]:bounds[i + 1]]).astype(np.int64)
            for i, k in enumerate(names)}


def validate_h5(path: str | os.PathLike) -> dict[str, Any]:
    """Check a flowsci HDF5 file against the schema; return its root attrs.

    Raises DataError naming the file and the first problem found.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file does not exist")
    if not path.is_file():
        raise DataError(f"{path}: is {'a directory' if path.is_dir() else 'not a regular file'}"
                        ", not an HDF5 file")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise DataError(f"{path}: not a readable HDF5 file ({e})") from None
    try:
        with f:
            return _validate_open(path, f)
    except (OSError, RuntimeError, KeyError) as e:  # a damaged chunk or object header
        raise DataError(f"{path}: unreadable HDF5 content ({type(e).__name__}: "
                        f"{(str(e).splitlines() or [''])[0][:160]})") from None


def _validate_open(path: Path, f: h5py.File) -> dict[str, Any]:
    missing = [a for a in ROOT_ATTRS if a not in f.attrs]
    if missing:
        raise DataError(f"{path}: missing root attribute(s) {missing}")
    attrs = {k: _py(v) for k, v in f.attrs.items()}
    for key, types in (("schema_version", (int,)), ("kind", (str,)), ("system", (str,))):
        if not isinstance(attrs[key], types) or isinstance(attrs[key], bool):
            raise DataError(f"{path}: root attribute {key!r} must be a "
                            f"{types[0].__name__}, found {type(attrs[key]).__name__}")
    if attrs["schema_version"] != SCHEMA_VERSION:
        raise DataError(f"{path}: schema_version {attrs['schema_version']!r}, this flowsci "
                        f"reads version {SCHEMA_VERSION}; remake the file with this version")
    kind = attrs["kind"]
    if kind not in MAIN_ARRAY:
        raise DataError(f"{path}: unknown kind {kind!r}")
    main = MAIN_ARRAY[kind]
    if main not in f:
        raise DataError(f"{path}: kind {kind!r} requires dataset {main!r}")
    for name, obj in f.items():
        if name in PER_FRAME or name in ("atomic_numbers", "pbc"):
            _check_dataset(path, obj, name, "float" if name in FLOAT_DATA else "number")
    n = f[main].shape[0] if f[main].ndim else 0
    if f[main].ndim == 0 or n == 0:
        raise DataError(f"{path}: dataset {main!r} is empty")
    for name, ds in f.items():
        if isinstance(ds, h5py.Dataset) and name in PER_FRAME:
            if ds.ndim == 0 or ds.shape[0] != n:
                raise DataError(f"{path}: {name!r} has shape {ds.shape}, {main!r} has {n} rows")
    _check_finite(path, f[main], main)
    if kind in ("particles", "lattice"):  # reference energies feed the data observables
        for name in ("energies", "actions"):
            if name in f:
                _check_finite(path, f[name], name)
    if kind == "particles":
        if f[main].ndim != 3:
            raise DataError(f"{path}: positions must be [N, n_atoms, dim], got {f[main].shape}")
        if "atomic_numbers" not in f or f["atomic_numbers"].shape != (f[main].shape[1],):
            raise DataError(f"{path}: atomic_numbers must be [n_atoms={f[main].shape[1]}]")
    if kind == "lattice" and "actions" not in f:
        raise DataError(f"{path}: lattice files require 'actions'")
    if "splits" in f:
        if not isinstance(f["splits"], h5py.Group):
            raise DataError(f"{path}: 'splits' must be a group of index arrays, "
                            "found a dataset")
        _check_splits(path, f["splits"], n)
    return attrs


PER_FRAME = {"positions", "fields", "x", "energies", "forces", "actions", "log_q", "log_weights",
             "cell"}
# Arrays that must be real floating point (integer or float is enough for the rest).
FLOAT_DATA = PER_FRAME


def _check_dataset(path: Path, obj: Any, name: str, kind: str) -> None:
    """`obj` is a dataset of real numbers: kind 'float' (floating point) or 'number' (integer
    or floating point); complex, boolean, string, compound and object data are refused."""
    if not isinstance(obj, h5py.Dataset):
        raise DataError(f"{path}: {name!r} must be a dataset, found a {type(obj).__name__.lower()}")
    dt = obj.dtype
    ok = (np.issubdtype(dt, np.floating) if kind == "float"
          else np.issubdtype(dt, np.floating) or np.issubdtype(dt, np.integer))
    if name == "pbc" and dt == np.bool_:
        ok = True
    if not ok:
        what = "real floating-point" if kind == "float" else "real numeric"
        raise DataError(f"{path}: {name!r} has dtype {_dtype_name(dt)}, expected {what} data")


def _dtype_name(dt: np.dtype) -> str:
    if h5py.check_string_dtype(dt) is not None or dt.kind in "SUO":
        return "string"
    if dt.kind == "c":
        return f"complex ({dt})"
    if dt.kind == "b":
        return "bool"
    if dt.names:
        return "compound"
    return str(dt)


# Coordinates and fields beyond this (in the file's units) are refused as out of range: no
# molecular or lattice system has them, and their energies overflow float32 (training would
# report a divergence instead of the broken input).
MAX_ABS_VALUE = 1e6


def out_of_range(block: np.ndarray, limit: float | None = MAX_ABS_VALUE) -> np.ndarray:
    """[k] bool: frames of `block` [k, ...] with a NaN/inf entry or, if limit, |value| > limit."""
    flat = np.asarray(block).reshape(len(block), -1)
    with np.errstate(invalid="ignore"):
        bad = ~np.isfinite(flat).all(axis=1)
        if limit is not None:
            bad |= (np.abs(np.nan_to_num(flat)) > limit).any(axis=1)
    return bad


def _check_finite(path: Path, ds: h5py.Dataset, name: str, rows: int = 65536) -> None:
    limit = MAX_ABS_VALUE if name in ("positions", "fields") else None
    for start in range(0, ds.shape[0], rows):
        block = ds[start:start + rows]
        bad = out_of_range(block, limit)
        if bad.any():
            frame = start + int(np.argmax(bad))
            what = ("NaN/Inf values" if not np.isfinite(block[frame - start]).all() else
                    f"values beyond +-{limit:g} (out of range)")
            raise DataError(f"{path}: {name!r} has {what} (first at frame {frame})")


def _check_splits(path: Path, g: h5py.Group, n: int) -> None:
    seen = np.zeros(n, dtype=bool)
    for k in ("train", "val", "test"):
        if k not in g:
            raise DataError(f"{path}: splits/{k} is missing")
        ds = g[k]
        if not isinstance(ds, h5py.Dataset):
            raise DataError(f"{path}: splits/{k} must be a dataset, found a group")
        if ds.ndim != 1 or not np.issubdtype(ds.dtype, np.integer):
            raise DataError(f"{path}: splits/{k} must be a 1-D integer index array, found shape "
                            f"{ds.shape} of dtype {_dtype_name(ds.dtype)}")
        idx = ds[()]
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            raise DataError(f"{path}: splits/{k} indexes outside [0, {n})")
        if seen[idx].any():
            raise DataError(f"{path}: splits overlap (in splits/{k})")
        seen[idx] = True
    if not seen.all():
        raise DataError(f"{path}: splits do not cover all {n} frames")


def _py(v: Any) -> Any:
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, np.generic):
        return v.item()
    return v


def read_attrs(path: str | os.PathLike) -> dict[str, Any]:
    with h5py.File(path, "r") as f:
        return {k: _py(v) for k, v in f.attrs.items()}


def read_array(path: str | os.PathLike, name: str, split: str | None = None) -> np.ndarray:
    """Read a dataset, optionally restricted to a split's indices."""
    if split is None:
        with h5py.File(path, "r") as f:
            return _dataset(f, path, name)[()]
    return read_splits(path, name, (split,))[split]


def _dataset(f: h5py.File, path: str | os.PathLike, name: str) -> h5py.Dataset:
    if name not in f:
        raise DataError(f"{path}: no dataset {name!r}")
    return f[name]


def read_splits(path: str | os.PathLike, name: str, splits: tuple[str, ...]
                ) -> dict[str, np.ndarray]:
    """A dataset restricted to each split's indices, the dataset read once."""
    with h5py.File(path, "r") as f:
        dataset = _dataset(f, path, name)
        missing = [s for s in splits if f"splits/{s}" not in f]
        if missing:
            raise DataError(f"{path}: no split {missing[0]!r}")
        index = {s: _index(f, path, s) for s in splits}
        data = dataset[()]
        return {s: data[idx] for s, idx in index.items()}


def _index(f: h5py.File, path: str | os.PathLike, split: str) -> np.ndarray:
    ds = f[f"splits/{split}"]
    if not isinstance(ds, h5py.Dataset) or ds.ndim != 1 or not np.issubdtype(ds.dtype, np.integer):
        raise DataError(f"{path}: splits/{split} must be a 1-D integer index array")
    return ds[()]


class ChunkedWriter:
    """Append row blocks to resizable, chunked, gzip-compressed datasets of an open file.

    Memory stays bounded by one block: use for inputs too large to hold whole (>= 1e6 frames).
    `append(name, block)` with block [k, ...]; the first block fixes the trailing shape/dtype.
    """

    def __init__(self, f: h5py.File, chunk_rows: int = 4096, compression: str | None = "gzip"):
        self.f = f
        self.chunk_rows = max(int(chunk_rows), 1)
        self.compression = compression
        self.rows: dict[str, int] = {}

    def append(self, name: str, block: np.ndarray) -> None:
        block = np.asarray(block)
        if name not in self.f:
            row = block.shape[1:]
            rows_per_chunk = max(1, min(self.chunk_rows, (1 << 20) // max(1, block[0].nbytes)))
            self.f.create_dataset(name, shape=(0, *row), maxshape=(None, *row),
                                  dtype=block.dtype, chunks=(rows_per_chunk, *row),
                                  compression=self.compression)
            self.rows[name] = 0
        guard = getattr(self.f, "_flowsci_guard", None)
        if guard is not None and guard.error is not None:
            raise guard.error  # the disk is full: stop instead of writing the rest to memory
        ds = self.f[name]
        if block.shape[1:] != ds.shape[1:]:
            raise DataError(f"{self.f.filename}: block for {name!r} has row shape "
                            f"{block.shape[1:]}, expected {ds.shape[1:]}")
        n0 = self.rows[name]
        ds.resize(n0 + len(block), axis=0)
        ds[n0:n0 + len(block)] = block
        self.rows[name] = n0 + len(block)


def h5_attr_value(v: Any) -> Any:
    """A value h5py can store as an attribute: scalars and strings as is, the rest as JSON."""
    if isinstance(v, (bool, int, float, str, np.generic)):
        return v
    return json.dumps(v, sort_keys=True, default=str)
