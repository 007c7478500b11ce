"""Atom selection on MDTraj topologies: a leaf below both `data` (trajectory readers) and
`systems` (OpenMM targets restricted to some atoms), so neither package imports the other
for it. MDTraj is optional (`pip install flowsci[md]`) and imported only when needed."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .errors import DataError


def import_mdtraj() -> Any:
    """The mdtraj module, or ImportError saying how to install it."""
    try:
        import mdtraj
    except ImportError:
        raise ImportError("reading or writing DCD/XTC/TRR/NetCDF trajectories needs MDTraj: "
                          "pip install 'flowsci[md]' (or pip install mdtraj)") from None
    return mdtraj


def select_atoms(top: Any, atoms: str | Sequence[int] | None, where: str) -> np.ndarray:
    """Indices of the atoms an MDTraj selection string (or an index list) picks, sorted.

    e.g. 'not element H' (heavy atoms), 'resid 0 to 2' (0-based residues), 'protein',
    'not water and not type Na Cl'. DataError (naming `where`) if it is malformed or matches
    nothing.
    """
    if atoms is None:
        return np.arange(top.n_atoms)
    if isinstance(atoms, str):
        try:
            idx = np.asarray(top.select(atoms), dtype=np.int64)
        except Exception as e:
            raise DataError(f"{where}: bad atom selection {atoms!r} ({type(e).__name__}: "
                            f"{str(e).splitlines()[0] if str(e) else ''})") from None
    else:
        idx = np.asarray(list(atoms), dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= top.n_atoms):
            raise DataError(f"{where}: atom indices {list(atoms)[:5]}... outside "
                            f"[0, {top.n_atoms}) of the topology")
        if len(np.unique(idx)) != len(idx):
            raise DataError(f"{where}: atom indices repeat an atom")
        idx = np.sort(idx)
    if idx.size == 0:
        raise DataError(f"{where}: atom selection {atoms!r} matches no atom of the topology "
                        f"({top.n_atoms} atoms)")
    return idx
