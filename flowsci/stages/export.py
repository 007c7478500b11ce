"""export stage: a run's samples (raw, or resampled by their importance weights into an
unweighted set) or its reference data, in the formats chemists' tools read.

Molecules (targets with a topology: ala2, OpenMM/prmtop targets, MD-trajectory inputs): DCD,
XTC or PDB through MDTraj, in nm, with the topology and the box where the system is periodic.
Particle systems: extxyz through ASE (element symbols where known, 'X' otherwise; 2-D systems
padded with z = 0). Lattice fields (and any system): .npy. Beside the file,
<output>.weights.csv holds, per frame, the stored sample's index, its log q, reduced energy and
normalised log-weight, so no weight is silently dropped. Every frame is a stored
configuration (up to the format's precision: float32 in DCD/XTC, 1e-4 nm in PDB).
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .. import paths
from ..errors import ConfigError, DataError
from ..io import atomic_output
from ..reweighting import log_weights, normalized_log_weights, systematic_resample
from ..systems import build_target
from .checks import check_data_file, check_samples_file
from .reweight import read_reference, read_samples

log = logging.getLogger(__name__)
SOURCES = ("samples", "reference")


@dataclass
class Frames:
    """What an export writes: x [M, *event_shape], index [M] into the source's stored
    configurations, and per frame log q, energy and normalised log-weight (nan where the
    source has none)."""

    x: np.ndarray
    index: np.ndarray
    log_q: np.ndarray
    energies: np.ndarray
    log_weights: np.ndarray


def export(config: dict, run: str, fmt: str, output: str | Path, resample: int | None = None,
           source: str = "samples", seed: int = 0) -> dict:
    """Write the run's `source` configurations to `output` in format `fmt` (see WRITERS),
    all of them (raw) or `resample` draws by systematic resampling of their importance
    weights (samples only). Returns {'output', 'weights', 'n_frames', 'n_distinct'}."""
    if run not in config["runs"]:
        raise ConfigError(f"--run {run!r}: no such run in the config (it has: "
                          f"{', '.join(config['runs']) or 'none'})")
    if fmt not in WRITERS:
        raise ConfigError(f"--format {fmt!r}: use one of {', '.join(WRITERS)}")
    if source not in SOURCES:
        raise ConfigError(f"--source {source!r}: use one of {', '.join(SOURCES)}")
    system = config["runs"][run]["system"]
    target = build_target(config["systems"][system]["target"], f"systems.{system}.target")
    writer = WRITERS[fmt]
    if target.kind not in writer.kinds:
        raise ConfigError(f"--format {fmt}: system {system!r} is a {target.kind} system; "
                          f"{fmt} holds {' or '.join(writer.kinds)} configurations (use "
                          f"{', '.join(f for f, w in WRITERS.items() if target.kind in w.kinds)})")
    frames = read_frames(config, run, target, source)
    if resample is not None:
        if source != "samples":
            raise ConfigError("--resample applies to the flow's weighted samples "
                              "(--source samples); reference data are already unweighted")
        frames = resampled(frames, int(resample), seed)
    output = Path(output)
    weights = weights_file(output)
    # The CSV's temporary is renamed only after the trajectory is in place: a failed write
    # leaves the old pair (or none), never a trajectory beside another export's weights.
    with atomic_output(weights) as tmp_weights:
        write_weights_csv(tmp_weights, frames)
        writer.write(output, frames.x, config, system, target)
    n_distinct = len(np.unique(frames.index))
    log.info("%s: %d frames (%s of %s), %d distinct configurations; weights and log q in %s",
             output, len(frames.x), "resampled" if resample is not None else "all", source,
             n_distinct, weights)
    return {"output": output, "weights": weights, "n_frames": len(frames.x),
            "n_distinct": n_distinct}


def weights_file(output: str | Path) -> Path:
    """The CSV of weights and log q beside an export: <output>.weights.csv."""
    return Path(f"{output}.weights.csv")


def read_frames(config: dict, run: str, target, source: str) -> Frames:
    """The run's stored samples (checked against the run and its model) or reference data
    (test split of data.h5, checked against the config), with their weights."""
    system = config["runs"][run]["system"]
    if source == "samples":
        path = paths.samples_file(config, run)
        s = read_samples(path)
        check_samples_file(config, run, path, s["attrs"])
        x, lq, u = s["x"], s["log_q"], s["energies"]
        lw = normalized_log_weights(log_weights(u, lq))
    else:
        path = paths.data_file(config, system)
        check_data_file(config, system, target, path)
        ref = read_reference(path, target)
        x, u = ref["x"], ref["u"]
        if len(x) == 0:
            raise DataError(f"{path}: no reference configuration to export")
        lq = np.full(len(x), np.nan)
        lw = np.full(len(x), -np.log(len(x)))
    if tuple(x.shape[1:]) != tuple(target.event_shape):
        raise DataError(f"{path}: configurations of shape {tuple(x.shape[1:])}, but target "
                        f"{target.name} has event shape {tuple(target.event_shape)}")
    return Frames(x, np.arange(len(x)), lq, u, lw)


def resampled(frames: Frames, n: int, seed: int) -> Frames:
    """n frames drawn by systematic resampling of the frames' weights (an unweighted set)."""
    if n < 1:
        raise ConfigError(f"--resample {n}: must be >= 1")
    try:
        idx = systematic_resample(frames.log_weights, n, seed=seed)
    except ValueError as e:
        raise DataError(f"cannot resample: {e}") from None
    return Frames(frames.x[idx], frames.index[idx], frames.log_q[idx], frames.energies[idx],
                  frames.log_weights[idx])


def write_weights_csv(path: Path, frames: Frames) -> Path:
    """frame, sample_index, log_q, energy (reduced), log_weight (normalised over the source).
    Writes `path` directly: the caller makes it atomic."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["frame", "sample_index", "log_q", "energy", "log_weight"])
        for i in range(len(frames.x)):
            w.writerow([i, int(frames.index[i]), repr(float(frames.log_q[i])),
                        repr(float(frames.energies[i])), repr(float(frames.log_weights[i]))])
    return path


# --- writers -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Writer:
    kinds: tuple[str, ...]
    write: Callable[[Path, np.ndarray, dict, str, object], None]


def mdtraj_topology(config: dict, system: str, target):
    """The system's mdtraj.Topology: the target's own (OpenMM targets) or that of the MD
    trajectory input (systems.<system>.data.input.topology, with its atom selection)."""
    from ..atom_selection import import_mdtraj, select_atoms

    md = import_mdtraj()
    if getattr(target, "topology", None) is not None:
        return md.Topology.from_openmm(target.topology)
    inp = config["systems"][system].get("data", {}).get("input") or {}
    if inp.get("topology"):
        from ..data.md_trajectory import load_topology
        top = load_topology(inp["topology"])
        atoms = inp.get("atoms", getattr(target, "atom_selection", None))
        if atoms is not None:
            top = top.subset(select_atoms(top, atoms, f"systems.{system}.data.input.atoms"))
        if top.n_atoms != target.n_particles:
            raise DataError(f"{inp['topology']}: {top.n_atoms} atoms selected, target "
                            f"{target.name} has {target.n_particles}")
        return top
    raise ConfigError(f"system {system!r} ({target.name}) has no molecular topology for "
                      "DCD/XTC/PDB; use --format extxyz or npy")


def has_topology(config: dict, system: str, target) -> bool:
    """Whether mdtraj_topology has a topology for the system (a molecule)."""
    inp = config["systems"][system].get("data", {}).get("input") or {}
    return getattr(target, "topology", None) is not None or bool(inp.get("topology"))


def _box_nm(target) -> np.ndarray | None:
    """[3, 3] periodic box vectors (nm) of an OpenMM target's System, or None."""
    system = getattr(target, "system", None)
    if system is None or not system.usesPeriodicBoundaryConditions():
        return None
    import openmm.unit as unit
    return np.array([v.value_in_unit(unit.nanometer)
                     for v in system.getDefaultPeriodicBoxVectors()])


def _write_mdtraj(path: Path, x: np.ndarray, config: dict, system: str, target) -> None:
    md = __import__("mdtraj")
    top = mdtraj_topology(config, system, target)
    unit = getattr(target, "length_unit", "nm")
    if unit != "nm":  # MDTraj formats are in nm; ASE targets are in Angstrom
        if unit != "angstrom":
            raise ConfigError(f"target {target.name} is in {unit} units; DCD/XTC/PDB need nm")
        x = x / 10.0
    traj = md.Trajectory(x.astype(np.float32), top)
    box = _box_nm(target)
    if box is not None:
        traj.unitcell_vectors = np.repeat(box[None].astype(np.float32), len(x), axis=0)
    with atomic_output(path, keep_suffix=True) as tmp:
        traj.save(str(tmp), force_overwrite=True)


def _write_extxyz(path: Path, x: np.ndarray, config: dict, system: str, target) -> None:
    import ase
    import ase.io

    dim = x.shape[-1]
    if dim == 2:
        log.info("%s: system %r is 2-D; positions padded with z = 0", path, system)
        x = np.concatenate([x, np.zeros(x.shape[:-1] + (1,))], axis=-1)
    elif dim != 3:
        raise ConfigError(f"--format extxyz: system {system!r} is {dim}-D; use npy")
    numbers = list(getattr(target, "atomic_numbers", [0] * x.shape[1]))
    base = getattr(target, "atoms", None)  # ASE targets: their cell and pbc
    frames = []
    for xi in x:
        a = ase.Atoms(numbers=numbers, positions=xi)
        if base is not None:
            a.cell, a.pbc = base.cell, base.pbc
        frames.append(a)
    with atomic_output(path) as tmp:
        ase.io.write(str(tmp), frames, format="extxyz")


def _write_npy(path: Path, x: np.ndarray, config: dict, system: str, target) -> None:
    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        np.save(f, np.ascontiguousarray(x))


WRITERS: dict[str, Writer] = {
    "dcd": Writer(("particles",), _write_mdtraj),
    "xtc": Writer(("particles",), _write_mdtraj),
    "pdb": Writer(("particles",), _write_mdtraj),
    "extxyz": Writer(("particles",), _write_extxyz),
    "npy": Writer(("particles", "lattice"), _write_npy),
}
