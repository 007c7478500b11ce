"""Molecular file input: round trips per format, units, selection, splits, provenance, memory."""

import json
import tracemalloc

import ase.io
import h5py
import numpy as np
import pytest
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

from flowsci.config import validate_config
from flowsci.data.hdf5 import ROOT_ATTRS, validate_h5
from flowsci.stages.preprocess import preprocess

KB_EV = 8.617333262e-5
R_KJ = 8.314462618e-3


def make_frames(n=12, n_atoms=5, symbols="Cu", energies=True, seed=0, scale=2.0):
    rng = np.random.default_rng(seed)
    frames = []
    k = len(Atoms(symbols * n_atoms))
    for i in range(n):
        a = Atoms(symbols * n_atoms, positions=rng.normal(scale=scale, size=(k, 3)))
        if energies:
            a.calc = SinglePointCalculator(a, energy=-1.5 + 0.01 * i,
                                           forces=rng.normal(size=(k, 3)))
        frames.append(a)
    return frames


def config_for(path, structure, tmp_path, *, units=None, temperature=300.0, splits=None,
               **input_opts):
    system = {
        "target": {"name": "ase", "params": {"structure": str(structure), "calculator": "emt",
                                             "temperature": temperature}},
        "temperature": temperature,
        "data": {"source": "file", "input": {"path": str(path), **input_opts},
                 "splits": splits or {"train": 0.6, "val": 0.2, "test": 0.2}},
    }
    if units is not None:
        system["data"]["input"]["units"] = units
    return validate_config({"results_dir": str(tmp_path / "results"), "systems": {"s": system},
                            "runs": {"r": {"system": "s", "model": {"name": "egnn"}}}})


@pytest.mark.parametrize("ext,has_energy,decimals", [
    ("extxyz", True, 8), ("xyz", True, 8), ("traj", True, 12), ("pdb", False, 3)])
def test_round_trip_per_format(tmp_path, ext, has_energy, decimals):
    frames = make_frames(energies=has_energy)
    path = tmp_path / f"traj.{ext}"
    ase.io.write(path, frames)
    cfg = config_for(path, path, tmp_path)
    out = preprocess(cfg, "s", progress=False)
    attrs = validate_h5(out)
    assert set(ROOT_ATTRS) <= set(attrs)
    src = json.loads(attrs["source"])
    assert src["path"] == str(path) and len(src["sha256"]) == 64
    units = json.loads(attrs["units"])
    assert units["length"] == "angstrom" and units["energy"] == "kT"
    with h5py.File(out) as f:
        pos = f["positions"][()]
        ref = np.stack([a.positions for a in frames])
        ref = ref - ref.mean(1, keepdims=True)
        np.testing.assert_allclose(pos, ref, atol=1.5 * 10.0**-decimals)
        np.testing.assert_array_equal(f["atomic_numbers"][()], [29] * 5)
        assert ("energies" in f) == has_energy
        if has_energy:
            e = np.array([a.get_potential_energy() for a in frames])
            np.testing.assert_allclose(f["energies"][()], e / (KB_EV * 300.0), rtol=1e-9)
            fr = np.stack([a.get_forces() for a in frames])
            np.testing.assert_allclose(f["forces"][()], fr / (KB_EV * 300.0), rtol=1e-6)
        idx = np.concatenate([f[f"splits/{k}"][()] for k in ("train", "val", "test")])
        assert sorted(idx) == list(range(len(frames)))  # disjoint and covering
        assert (len(f["splits/train"]), len(f["splits/val"]), len(f["splits/test"])) == (8, 2, 2)


def test_units_nm_kjmol_selection_and_mass_com(tmp_path):
    frames = make_frames(n=20, symbols="CuH", n_atoms=2)  # Cu H Cu H
    path = tmp_path / "t.extxyz"
    ase.io.write(path, frames)
    structure = tmp_path / "s.xyz"
    ase.io.write(structure, frames[0])
    cfg = config_for(path, structure, tmp_path, units={"length": "nm", "energy": "kJ/mol"},
                     temperature=400.0, start=3, stop=17, stride=4, remove_com="mass",
                     splits={"train": 0.5, "val": 0.25, "test": 0.25, "method": "contiguous"})
    out = preprocess(cfg, "s", progress=False)
    sel = [3, 7, 11, 15]
    with h5py.File(out) as f:
        m = frames[0].get_masses()
        ref = np.stack([frames[i].positions for i in sel])
        ref = (ref - np.einsum("a,bai->bi", m, ref)[:, None] / m.sum()) * 10.0  # nm -> Å
        np.testing.assert_allclose(f["positions"][()], ref, atol=1e-6)
        e = np.array([frames[i].get_potential_energy() for i in sel])
        np.testing.assert_allclose(f["energies"][()], e / (R_KJ * 400.0), rtol=1e-9)
        fr = np.stack([frames[i].get_forces() for i in sel])  # kJ/mol/nm -> kT/Å
        np.testing.assert_allclose(f["forces"][()], fr / (R_KJ * 400.0) / 10.0, rtol=1e-6)
        assert list(f["splits/train"][()]) == [0, 1] and list(f["splits/test"][()]) == [3]
        assert json.loads(f.attrs["source"])["stride"] == 4


def test_reduced_units_into_lj_target(tmp_path):
    frames = make_frames(n=6, symbols="Ar", n_atoms=13, scale=1.0)
    path = tmp_path / "lj.extxyz"
    ase.io.write(path, frames)
    system = {"target": {"name": "lj13"},
              "data": {"source": "file", "input": {"path": str(path), "units": {
                  "length": "reduced", "energy": "reduced"}}}}
    cfg = validate_config({"results_dir": str(tmp_path), "systems": {"lj": system},
                           "runs": {"r": {"system": "lj", "model": {"name": "egnn"}}}})
    out = preprocess(cfg, "lj", progress=False)
    with h5py.File(out) as f:
        np.testing.assert_allclose(f["energies"][()], [a.get_potential_energy() for a in frames])
        assert f["positions"].shape == (6, 13, 3)


def write_fast_extxyz(path, n, n_atoms, seed=0):
    """Synthetic extxyz written directly (fast), with energies."""
    rng = np.random.default_rng(seed)
    with open(path, "w") as fh:
        for i in range(n):
            p = rng.normal(size=(n_atoms, 3))
            fh.write(f"{n_atoms}\nProperties=species:S:1:pos:R:3 energy={0.001 * i:.6f} "
                     'pbc="F F F"\n')
            fh.write("".join(f"Ar {a:.5f} {b:.5f} {c:.5f}\n" for a, b, c in p))


def stream_config(tmp_path, n, n_atoms, chunk):
    path = tmp_path / f"big{n}.extxyz"
    write_fast_extxyz(path, n, n_atoms)
    system = {"target": {"name": "lj", "params": {"n_particles": n_atoms, "dim": 3}},
              "data": {"source": "file", "input": {
                  "path": str(path), "chunk_frames": chunk,
                  "units": {"length": "reduced", "energy": "reduced"}}}}
    return validate_config({"results_dir": str(tmp_path / "results"), "systems": {"big": system},
                            "runs": {"r": {"system": "big", "model": {"name": "egnn"}}}})


def check_output(out, n, n_atoms, chunk):
    with h5py.File(out) as f:
        assert f["positions"].shape == (n, n_atoms, 3)
        assert f["positions"].compression == "gzip" and f["positions"].chunks[0] <= chunk
        assert f["energies"][-1] == pytest.approx(0.001 * (n - 1))


def record_blocks(monkeypatch):
    """Largest block (rows) handed to the chunked writer."""
    import flowsci.data.hdf5 as h
    seen = [0]
    orig = h.ChunkedWriter.append

    def append(self, name, block):
        seen[0] = max(seen[0], len(block))
        return orig(self, name, block)

    monkeypatch.setattr(h.ChunkedWriter, "append", append)
    return seen


def traced_peak(tmp_path, monkeypatch, n, n_atoms, chunk):
    """Peak traced (Python + numpy) memory of preprocess while reading and writing."""
    import flowsci.stages.preprocess as pp
    cfg = stream_config(tmp_path, n, n_atoms, chunk)
    peak = {}
    real_validate = pp.validate_h5

    def validate_untraced(path):  # measure the streaming phase only
        peak["bytes"] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return real_validate(path)

    monkeypatch.setattr(pp, "validate_h5", validate_untraced)
    tracemalloc.start()
    try:
        out = preprocess(cfg, "big", out=str(tmp_path / f"big{n}.h5"), progress=False)
    finally:
        tracemalloc.stop()
    check_output(out, n, n_atoms, chunk)
    return peak["bytes"]


def test_streamed_input_has_bounded_memory(tmp_path, monkeypatch):
    """Peak memory does not grow with the number of frames; blocks never exceed chunk_frames."""
    n_atoms, chunk = 300, 10
    blocks = record_blocks(monkeypatch)
    # warm-up: one-off allocations (lazy imports, caches) would otherwise land in one run only
    (tmp_path / "warm").mkdir()
    traced_peak(tmp_path / "warm", monkeypatch, 40, n_atoms, chunk)
    small = traced_peak(tmp_path, monkeypatch, 40, n_atoms, chunk)
    large = traced_peak(tmp_path, monkeypatch, 200, n_atoms, chunk)
    full_large = 200 * n_atoms * 3 * 8  # 1.44 MB of positions
    assert blocks[0] <= chunk
    # holding the frames would add >= 0.8 * 1.44 MB (positions of 160 more frames)
    assert large - small < 0.2 * full_large, (small, large, full_large)
    print(f"traced peak: {small} B (40 frames), {large} B (200 frames)")


@pytest.mark.slow
def test_1e5_frames_streamed_in_chunks(tmp_path, monkeypatch):
    """10^5 frames: written in blocks of <= chunk_frames into gzip chunks; the process's peak
    RSS grows by a bounded amount (validation reads 65536-row blocks, HDF5 keeps chunk caches),
    not by a multiple of the data. Size independence is tested exactly (tracemalloc) above."""
    import resource
    n, n_atoms, chunk = 100_000, 8, 4096
    cfg = stream_config(tmp_path, n, n_atoms, chunk)
    blocks = record_blocks(monkeypatch)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    out = preprocess(cfg, "big", out=str(tmp_path / "big.h5"), progress=False)
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss0
    check_output(out, n, n_atoms, chunk)
    assert blocks[0] <= chunk
    print(f"1e5 frames x {n_atoms} atoms: peak RSS grew {grown / 2**20:.1f} MiB "
          f"(positions: {n * n_atoms * 24 / 2**20:.1f} MiB)")
    assert grown < 64 * 2**20, grown
