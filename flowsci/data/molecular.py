"""Molecular trajectories from any file ASE reads (extxyz, xyz, .traj, PDB, ...), streamed.

`stream_frames` reads with ase.io.iread (one frame in memory at a time) and yields blocks of at
most `chunk_frames` frames, converted to the target's units:
  positions [k, n, 3] (target length unit, optionally centred), energies [k] (kT, when the
  file has them), forces [k, n, 3] (kT / length), cell [k, 3, 3] (length).
Constant per-file data (atomic numbers, pbc) and counts land in the returned `MolecularMeta`.
Every problem raises DataError naming the file, the frame (index in the file) and the issue.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ..errors import DataError
from . import units as U

DEFAULT_UNITS = {"length": "angstrom", "energy": "eV"}  # ASE's own units


@dataclass
class MolecularMeta:
    """Filled while streaming: atomic_numbers [n], pbc [3], frame counts, what was present."""

    path: str
    format: str
    atomic_numbers: np.ndarray | None = None
    pbc: np.ndarray | None = None
    masses: np.ndarray | None = None
    n_frames: int = 0
    has_energy: bool | None = None
    has_forces: bool | None = None
    has_cell: bool = False
    units: dict[str, Any] = field(default_factory=dict)


def detect_format(path: str | os.PathLike, fmt: str | None = None) -> str:
    """ASE format name from `fmt` or the extension; DataError if ASE cannot read it."""
    from ase.io.formats import filetype, ioformats

    path = Path(path)
    if fmt is None:
        if not path.suffix:
            raise DataError(f"{path}: no file extension; set data.input.format "
                            "(an ASE format name, e.g. extxyz, traj, proteindatabank)")
        fmt = filetype(str(path), read=False)
    if fmt not in ioformats or not ioformats[fmt].can_read:
        raise DataError(f"{path}: format {fmt!r} (from {'the extension' if path.suffix else 'config'})"
                        f" is not a trajectory format ASE can read; use e.g. .extxyz, .xyz, "
                        ".traj or .pdb, or set data.input.format")
    return fmt


def _frame_arrays(atoms: Any, path: Path, frame: int, meta: MolecularMeta) -> dict[str, Any]:
    numbers = np.asarray(atoms.numbers, dtype=np.int64)
    pos = np.asarray(atoms.positions, dtype=np.float64)
    where = f"{path}: frame {frame}"
    if meta.atomic_numbers is None:
        if len(numbers) == 0:
            raise DataError(f"{where}: frame has no atoms")
        bad = (numbers <= 0) | (numbers > 118)
        if bad.any():
            raise DataError(f"{where}: unknown element (atomic number {numbers[bad][0]}) "
                            f"at atom {int(np.argmax(bad))}")
        meta.atomic_numbers, meta.pbc = numbers, np.asarray(atoms.pbc, dtype=bool)
        meta.masses = np.asarray(atoms.get_masses(), dtype=np.float64)
    elif len(numbers) != len(meta.atomic_numbers):
        raise DataError(f"{where}: has {len(numbers)} atoms, earlier frames have "
                        f"{len(meta.atomic_numbers)} (all frames must have the same atoms)")
    elif not np.array_equal(numbers, meta.atomic_numbers):
        i = int(np.argmax(numbers != meta.atomic_numbers))
        raise DataError(f"{where}: atom {i} is element {numbers[i]}, earlier frames have "
                        f"{meta.atomic_numbers[i]} (atom order must not change)")
    if not np.isfinite(pos).all():
        i = int(np.argmax(~np.isfinite(pos).all(axis=1)))
        raise DataError(f"{where}: NaN/Inf coordinates (atom {i})")
    out: dict[str, Any] = {"positions": pos}
    results = getattr(atoms.calc, "results", {}) if atoms.calc is not None else {}
    energy = results.get("energy", results.get("free_energy"))
    forces = results.get("forces")
    for key, value, flag in (("energies", energy, "has_energy"), ("forces", forces, "has_forces")):
        present = value is not None
        if getattr(meta, flag) is None:
            setattr(meta, flag, present)
        elif getattr(meta, flag) != present:
            raise DataError(f"{where}: {key} {'present' if present else 'missing'}, unlike "
                            "earlier frames (all frames or none must have them)")
        if present:
            arr = np.asarray(value, dtype=np.float64)
            if not np.isfinite(arr).all():
                raise DataError(f"{where}: NaN/Inf {key}")
            out[key] = arr
    if meta.pbc is not None and meta.pbc.any():
        out["cell"] = np.asarray(atoms.cell.array, dtype=np.float64)
    return out


def stream_frames(path: str | os.PathLike, meta: MolecularMeta, *, length_unit: str,
                  temperature: float | None, units: dict[str, str] | None = None,
                  start: int = 0, stop: int | None = None, stride: int = 1,
                  remove_com: bool | str = True, chunk_frames: int = 4096,
                  read_kwargs: dict[str, Any] | None = None) -> Iterator[dict[str, np.ndarray]]:
    """Yield blocks of converted frames (see module doc); fills `meta` as it goes.

    units: input units {length, energy} (default Å, eV); length_unit: the target's;
    remove_com: True/'centroid' (subtract the centroid, flowsci's convention), 'mass'
    (mass-weighted centre), False. start/stop/stride select frames (file indices).
    """
    import ase.io

    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: input file does not exist")
    if path.is_file() and path.stat().st_size == 0:
        raise DataError(f"{path}: empty trajectory (the file is empty)")
    if start < 0 or stride < 1 or (stop is not None and stop < start):
        raise DataError(f"{path}: bad frame selection start={start} stop={stop} stride={stride}")
    units = {**DEFAULT_UNITS, **(units or {})}
    c = U.length_factor(units["length"], length_unit)
    kt = U.kT(units["energy"], temperature) if units.get("energy") else None
    meta.units = {"input": units, "length": U.norm_length(length_unit), "energy": "kT",
                  "length_factor": c, "kT_in_input_energy_unit": kt}
    buf: dict[str, list[np.ndarray]] = {}
    frame = start
    it = ase.io.iread(str(path), index=slice(start, stop, stride), format=meta.format,
                      **(read_kwargs or {}))
    while True:
        try:
            atoms = next(it)
        except StopIteration:
            break
        except DataError:
            raise
        except Exception as e:  # ASE raises KeyError, ValueError, ... for malformed frames
            msg = f"unknown element {e}" if isinstance(e, KeyError) else f"{type(e).__name__}: {e}"
            raise DataError(f"{path}: frame {frame}: cannot read ({msg})") from None
        arrays = _frame_arrays(atoms, path, frame, meta)
        if remove_com:
            w = meta.masses if remove_com == "mass" else np.ones(len(arrays["positions"]))
            arrays["positions"] = arrays["positions"] - (w @ arrays["positions"]) / w.sum()
        arrays["positions"] = arrays["positions"] * c
        if "cell" in arrays:
            arrays["cell"] = arrays["cell"] * c
        if "energies" in arrays or "forces" in arrays:
            if kt is None:
                raise DataError(f"{path}: the file has energies/forces; set "
                                "data.input.units.energy")
            if "energies" in arrays:
                arrays["energies"] = arrays["energies"] / kt
            if "forces" in arrays:
                arrays["forces"] = arrays["forces"] / (kt * c)
        for k, v in arrays.items():
            buf.setdefault(k, []).append(v)
        meta.n_frames += 1
        frame += stride
        if meta.n_frames % chunk_frames == 0:
            yield {k: np.stack(v) for k, v in buf.items()}
            buf = {}
    if buf:
        yield {k: np.stack(v) for k, v in buf.items()}
    if meta.n_frames == 0:
        raise DataError(f"{path}: empty trajectory (no frames"
                        f"{'' if (start, stop, stride) == (0, None, 1) else ' in the selection'})")
