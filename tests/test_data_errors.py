"""Bad inputs stop with a DataError naming the file, frame and problem; outputs stay untouched."""

import ase.io
import h5py
import numpy as np
import pytest
from ase import Atoms

from flowsci.config import validate_config
from flowsci.errors import DataError
from flowsci.stages.preprocess import preprocess


@pytest.fixture
def existing(tmp_path):
    """An output file that must survive every failed attempt byte for byte."""
    out = tmp_path / "out.h5"
    with h5py.File(out, "w") as f:
        f["x"] = np.arange(5)
    return out, out.read_bytes()


def lj_config(path, tmp_path, n_particles=3, **inp):
    system = {"target": {"name": "lj", "params": {"n_particles": n_particles, "dim": 3}},
              "data": {"source": "file", "input": {
                  "path": str(path), "units": {"length": "reduced", "energy": "reduced"},
                  **inp}}}
    return validate_config({"results_dir": str(tmp_path / "results"), "systems": {"s": system},
                            "runs": {"r": {"system": "s", "model": {"name": "egnn"}}}})


def xyz_text(frames):
    """frames: list of (symbols, positions) -> extxyz text."""
    out = []
    for syms, pos in frames:
        out.append(f"{len(syms)}\nProperties=species:S:1:pos:R:3 pbc=\"F F F\"\n")
        out += [f"{s} {x} {y} {z}\n" for s, (x, y, z) in zip(syms, pos)]
    return "".join(out)


GOOD = (["Ar"] * 3, [(0, 0, 0), (1, 0, 0), (0, 1, 0)])


def expect_failure(cfg, existing, *patterns):
    out, before = existing
    with pytest.raises(DataError) as err:
        preprocess(cfg, "s", out=str(out), force=True, progress=False)
    msg = str(err.value)
    for p in patterns:
        assert p in msg, msg
    assert out.read_bytes() == before  # untouched
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(".out.h5")] == []
    return msg


def test_missing_file(tmp_path, existing):
    p = tmp_path / "nope.extxyz"
    expect_failure(lj_config(p, tmp_path), existing, str(p), "does not exist")


def test_unreadable_file(tmp_path, existing):
    p = tmp_path / "garbage.extxyz"
    p.write_text("this is not\nan xyz file\n")
    expect_failure(lj_config(p, tmp_path), existing, str(p), "frame 0", "cannot read")


def test_wrong_extension(tmp_path, existing):
    p = tmp_path / "traj.foo"
    p.write_text(xyz_text([GOOD]))
    expect_failure(lj_config(p, tmp_path), existing, str(p), "'foo'", "format")


def test_differing_atom_counts(tmp_path, existing):
    p = tmp_path / "t.extxyz"
    p.write_text(xyz_text([GOOD, GOOD, (["Ar"] * 2, [(0, 0, 0), (1, 0, 0)])]))
    expect_failure(lj_config(p, tmp_path), existing, str(p), "frame 2", "2 atoms")


def test_nan_coordinates(tmp_path, existing):
    p = tmp_path / "t.extxyz"
    bad = (["Ar"] * 3, [(0, 0, 0), (1, "nan", 0), (0, 1, 0)])
    p.write_text(xyz_text([GOOD, bad]))
    expect_failure(lj_config(p, tmp_path), existing, str(p), "frame 1", "NaN/Inf", "atom 1")


def test_inf_coordinates_in_traj(tmp_path, existing):
    p = tmp_path / "t.traj"
    frames = [Atoms("Ar3", positions=np.eye(3)) for _ in range(3)]
    frames[2].positions[0, 0] = np.inf
    ase.io.write(p, frames)
    expect_failure(lj_config(p, tmp_path), existing, str(p), "frame 2", "NaN/Inf")


def test_unknown_element(tmp_path, existing):
    p = tmp_path / "t.extxyz"
    p.write_text(xyz_text([GOOD, (["Ar", "Xq", "Ar"], GOOD[1])]))
    expect_failure(lj_config(p, tmp_path), existing, str(p), "frame 1", "unknown element")


def test_unknown_element_pdb(tmp_path, existing):
    p = tmp_path / "t.pdb"
    ase.io.write(p, Atoms("X3", positions=np.eye(3)))  # ASE writes the dummy element X
    expect_failure(lj_config(p, tmp_path), existing, str(p), "frame 0", "unknown element")


def test_empty_trajectory(tmp_path, existing):
    p = tmp_path / "t.extxyz"
    p.write_text("")
    expect_failure(lj_config(p, tmp_path), existing, str(p), "empty")
    p.write_text(xyz_text([GOOD]))
    expect_failure(lj_config(p, tmp_path, start=5), existing, str(p), "empty", "selection")


def test_atom_count_differs_from_target(tmp_path, existing):
    p = tmp_path / "t.extxyz"
    p.write_text(xyz_text([GOOD]))
    expect_failure(lj_config(p, tmp_path, n_particles=4), existing, str(p), "3 atoms", "4")


def test_energy_missing_in_some_frames(tmp_path, existing):
    p = tmp_path / "t.extxyz"
    text = xyz_text([GOOD, GOOD]).replace('pbc="F F F"', 'energy=1.0 pbc="F F F"', 1)
    p.write_text(text)
    expect_failure(lj_config(p, tmp_path), existing, str(p), "frame 1", "energies missing")


def test_output_holding_a_different_dataset_needs_force(tmp_path, existing):
    out, before = existing
    p = tmp_path / "t.extxyz"
    p.write_text(xyz_text([GOOD] * 4))
    cfg = lj_config(p, tmp_path)
    with pytest.raises(DataError, match="--force") as err:
        preprocess(cfg, "s", out=str(out), progress=False)
    assert str(out) in str(err.value) and "different dataset" in str(err.value)
    assert out.read_bytes() == before
    # with force it is replaced; rerunning the same request keeps the file (same dataset)
    preprocess(cfg, "s", out=str(out), force=True, progress=False)
    written = out.read_bytes()
    assert written != before
    preprocess(cfg, "s", out=str(out), progress=False)
    assert out.read_bytes() == written
    # a changed input is a different dataset again
    p.write_text(xyz_text([GOOD] * 5))
    with pytest.raises(DataError, match="different dataset"):
        preprocess(cfg, "s", out=str(out), progress=False)
    assert out.read_bytes() == written
