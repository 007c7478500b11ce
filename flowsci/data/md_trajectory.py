"""Binary MD trajectories (DCD, XTC, TRR, AMBER NetCDF, ...) plus a topology, read with MDTraj.

What OpenMM, GROMACS, AMBER, CHARMM/NAMD and LAMMPS write has no elements (and often no atom
count) in the trajectory itself, so a topology file is required: PDB/PDBx, AMBER prmtop,
CHARMM/X-PLOR psf, GROMACS gro, mol2, ... (anything `mdtraj.load_topology` reads).
The format comes from an explicit table (`FORMATS`, by extension, or `data.input.format`).

`stream_md` reads contiguous blocks of at most `chunk_frames` frames (and at most ~64 MiB of
raw coordinates) with MDTraj's file objects, so memory does not grow with the trajectory, and
yields, per block, the frames selected by start/stop/stride (file indices), restricted to the
selected atoms and converted to the target's length unit:
  positions [k, n_sel, 3] (centred unless remove_com is false), cell [k, 3, 3] (periodic files).
MDTraj returns nm whatever the format; `units.length` overrides the format's native unit
(e.g. a LAMMPS dump in `reduced` units). Constant data (atomic numbers, counts) lands in
`MDMeta`. Every problem raises DataError naming the file and the problem; nothing is written.

MDTraj is an optional dependency (`pip install flowsci[md]`), imported when a file is read.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from ..atom_selection import import_mdtraj as _import_mdtraj
from ..atom_selection import select_atoms
from ..errors import ConfigError, DataError
from . import units as U


@dataclass(frozen=True)
class MDFormat:
    extensions: tuple[str, ...]
    native_length: str  # the unit the format stores lengths in
    what: str


# name -> format; the extension table is explicit (no content sniffing)
FORMATS: dict[str, MDFormat] = {
    "dcd": MDFormat((".dcd",), "angstrom", "CHARMM/NAMD/OpenMM/LAMMPS DCD"),
    "xtc": MDFormat((".xtc",), "nm", "GROMACS XTC (compressed, ~0.001 nm precision)"),
    "trr": MDFormat((".trr",), "nm", "GROMACS TRR (positions only)"),
    "netcdf": MDFormat((".nc", ".ncdf", ".netcdf"), "angstrom", "AMBER NetCDF trajectory"),
    "lammpstrj": MDFormat((".lammpstrj",), "angstrom", "LAMMPS text dump (id type x y z)"),
    "mdcrd": MDFormat((".mdcrd",), "angstrom", "AMBER ASCII trajectory (atom count from the "
                                               "topology)"),
}
EXTENSIONS = {ext: name for name, f in FORMATS.items() for ext in f.extensions}
TOPOLOGY_EXTENSIONS = (".pdb", ".pdb.gz", ".pdbx", ".cif", ".mmcif", ".prmtop", ".parm7",
                       ".prm7", ".psf", ".gro", ".mol2", ".h5", ".hdf5", ".arc", ".hoomdxml")
BLOCK_BYTES = 64 << 20  # raw coordinates read at once, at most


@dataclass
class MDMeta:
    """Filled while streaming: atomic numbers [n_sel], indices read, counts, box presence."""

    path: str
    format: str
    topology: str
    atomic_numbers: np.ndarray | None = None
    masses: np.ndarray | None = None
    atom_indices: np.ndarray | None = None
    n_atoms_file: int = 0
    n_frames: int = 0
    has_cell: bool | None = None
    pbc: np.ndarray | None = None
    units: dict[str, Any] = field(default_factory=dict)
    has_energy: bool = False
    has_forces: bool = False


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return ".pdb.gz" if name.endswith(".pdb.gz") else path.suffix.lower()


def md_format(path: str | os.PathLike, fmt: str | None = None,
              topology: str | None = None) -> str | None:
    """The MD format that reads `path`, or None when it is not an MD trajectory (ASE reads it).

    fmt: data.input.format (a key of FORMATS, else an ASE format name). A trajectory with a
    topology must be in FORMATS; one in FORMATS without a topology is an error.
    """
    path = Path(path)
    name = fmt if fmt is not None else EXTENSIONS.get(_suffix(path))
    if name is None or name not in FORMATS:
        if topology is None:
            return None
        how = f"format {fmt!r}" if fmt is not None else f"extension {path.suffix or '(none)'!r}"
        raise DataError(f"{path}: unknown trajectory format ({how}); with a topology flowsci "
                        f"reads {', '.join(sorted(EXTENSIONS))} (data.input.format: "
                        f"{', '.join(FORMATS)})")
    if topology is None:
        ase = " (an ASE-written one: set data.input.format: netcdftrajectory)" \
            if name == "netcdf" else ""
        raise DataError(f"{path}: a {name.upper()} trajectory has no elements or atom names; "
                        f"set data.input.topology (PDB, prmtop, psf, gro, ...){ase}")
    return name


def load_topology(topology: str | os.PathLike) -> Any:
    """mdtraj.Topology of a topology file; DataError naming the file if it cannot be read."""
    md = _import_mdtraj()
    topology = Path(topology)
    if not topology.is_file():
        raise DataError(f"{topology}: topology file does not exist (data.input.topology)")
    if _suffix(topology) not in TOPOLOGY_EXTENSIONS:
        raise DataError(f"{topology}: unknown topology format {topology.suffix!r} "
                        f"(data.input.topology); use {', '.join(TOPOLOGY_EXTENSIONS)}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return md.load_topology(str(topology))
    except Exception as e:  # parsers raise ValueError, IOError, KeyError, ...
        raise DataError(f"{topology}: cannot read the topology ({type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else ''})") from None


def _elements(top: Any, idx: np.ndarray, topology: str) -> tuple[np.ndarray, np.ndarray]:
    atoms = list(top.atoms)
    numbers, masses = [], []
    for i in idx:
        el = atoms[i].element
        z = getattr(el, "atomic_number", 0) or 0
        if z <= 0 or z > 118:
            raise DataError(f"{topology}: atom {int(i)} ({atoms[i]}) has no element (virtual "
                            "site or unknown type); exclude it with data.input.atoms")
        numbers.append(z)
        masses.append(el.mass)
    return np.asarray(numbers, dtype=np.int64), np.asarray(masses, dtype=np.float64)


def _open(md: Any, path: Path, fmt: str, n_atoms: int) -> Any:
    cls = md.formats.registry.FormatRegistry.fileobjects[FORMATS[fmt].extensions[0]]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "netCDF4 not installed, using scipy"
            return cls(str(path), n_atoms=n_atoms) if fmt == "mdcrd" else cls(str(path))
    except Exception as e:
        raise DataError(f"{path}: cannot open as {fmt} ({type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else ''})") from None


def _file_atoms(f: Any, path: Path, fmt: str) -> int:
    """Atoms per frame stored in the file (reads frame 0; 0 if the file has no frames)."""
    try:
        raw = f.read(n_frames=1)
    except Exception as e:
        raise DataError(f"{path}: cannot read as {fmt} ({type(e).__name__}: {e})") from None
    xyz = raw[0] if isinstance(raw, tuple) else raw
    return 0 if len(xyz) == 0 else int(xyz.shape[1])


def stream_md(path: str | os.PathLike, meta: MDMeta, *, length_unit: str,
              units: dict[str, str] | None = None, atoms: str | Sequence[int] | None = None,
              start: int = 0, stop: int | None = None, stride: int = 1,
              remove_com: bool | str = True, chunk_frames: int = 4096,
              make_whole: bool = False) -> Iterator[dict[str, np.ndarray]]:
    """Yield blocks of converted frames (see module doc); fills `meta` as it goes.

    units: {length: ...} the file's length unit (default: the format's own, FORMATS);
    atoms: selection (select_atoms); make_whole: rejoin molecules split by the periodic box
    (MDTraj make_molecules_whole, needs bonds in the topology and a box in the file).
    """
    md = _import_mdtraj()
    path = Path(path)
    fmt = meta.format
    if not path.is_file():
        raise DataError(f"{path}: input file does not exist")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: empty trajectory (the file is empty)")
    if start < 0 or stride < 1 or (stop is not None and stop < start):
        raise DataError(f"{path}: bad frame selection start={start} stop={stop} stride={stride}")
    unknown = set(units or {}) - {"length", "energy"}
    if unknown or (units or {}).get("energy"):
        raise ConfigError(f"{path}: data.input.units: {fmt} trajectories are read as positions "
                          f"only; give units.length at most (got {dict(units or {})})")
    top = load_topology(meta.topology)
    idx = select_atoms(top, atoms, f"{path} with topology {meta.topology}")
    meta.atom_indices = idx
    meta.atomic_numbers, meta.masses = _elements(top, idx, meta.topology)
    native = FORMATS[fmt].native_length
    file_unit = U.norm_length((units or {}).get("length") or native)
    # MDTraj multiplied the stored numbers by length_factor(native, nm); undo, then convert
    c = U.length_factor(file_unit, length_unit) / U.length_factor(native, "nm")
    meta.units = {"input": {"length": file_unit, "format_native": native},
                  "length": U.norm_length(length_unit), "energy": "kT",
                  "length_factor": U.length_factor(file_unit, length_unit)}
    f = _open(md, path, fmt, top.n_atoms)
    with f:
        meta.n_atoms_file = _file_atoms(f, path, fmt)
        if meta.n_atoms_file and meta.n_atoms_file != top.n_atoms:
            raise DataError(f"{path}: frames have {meta.n_atoms_file} atoms, the topology "
                            f"{meta.topology} has {top.n_atoms} (wrong topology for this "
                            "trajectory?)")
        read_idx = None if len(idx) == top.n_atoms else idx
        w = np.ones(len(idx)) if remove_com != "mass" else meta.masses
        block = max(1, min(chunk_frames, BLOCK_BYTES // max(1, 12 * top.n_atoms)))
        pos, more = start, meta.n_atoms_file > 0
        if more:
            try:
                f.seek(start)
            except Exception:  # start beyond the last frame: an empty selection
                more = False
        while more and (stop is None or pos < stop):
            n = block if stop is None else min(block, stop - pos)
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    traj = f.read_as_traj(top, n_frames=n, atom_indices=read_idx)
            except Exception as e:
                raise DataError(f"{path}: cannot read frames {pos}-{pos + n - 1} as {fmt} "
                                f"({type(e).__name__}: {e})") from None
            if len(traj) == 0:
                break
            out = _convert(traj, path, pos, start, stride, idx, meta, c, w, remove_com,
                           make_whole)
            pos += len(traj)
            if len(out["positions"]):
                yield out
    if meta.n_frames == 0:
        sel = "" if (start, stop, stride) == (0, None, 1) else " in the selection"
        raise DataError(f"{path}: empty trajectory (no frames{sel})")


def _convert(traj: Any, path: Path, pos: int, start: int, stride: int, idx: np.ndarray,
             meta: MDMeta, c: float, w: np.ndarray, remove_com: bool | str,
             make_whole: bool) -> dict[str, np.ndarray]:
    """One read block -> the kept frames, converted (positions, cell)."""
    box = traj.unitcell_vectors
    if box is not None and not np.any(box):
        box = None  # XTC/TRR store a zero box for non-periodic runs
    has_cell = box is not None
    if meta.has_cell is None:
        meta.has_cell = has_cell
        meta.pbc = np.full(3, has_cell)
    elif meta.has_cell != has_cell:
        raise DataError(f"{path}: frame {pos}: periodic box {'present' if has_cell else 'missing'}"
                        ", unlike earlier frames")
    if make_whole:
        if not has_cell:
            raise DataError(f"{path}: make_whole needs a periodic box, the file has none")
        if traj.topology.n_bonds == 0:
            raise DataError(f"{path}: make_whole needs bonds, topology {meta.topology} has none")
        traj.make_molecules_whole(inplace=True)
    first = (-(pos - start)) % stride
    xyz = np.asarray(traj.xyz[first::stride], dtype=np.float64)
    bad = ~np.isfinite(xyz).all(axis=2)
    if bad.any():
        k, a = np.argwhere(bad)[0]
        raise DataError(f"{path}: frame {pos + first + stride * int(k)}: NaN/Inf coordinates "
                        f"(atom {int(idx[a])})")
    if remove_com:
        xyz = xyz - np.einsum("a,kad->kd", w, xyz)[:, None] / w.sum()
    out = {"positions": xyz * c}
    if has_cell:
        out["cell"] = np.asarray(box[first::stride], dtype=np.float64) * c
    meta.n_frames += len(xyz)
    return out
