"""MD engine trajectories (DCD, XTC, TRR, NetCDF, ...) + topology, and OpenMM/Amber targets.

Round trips per format on files written here by OpenMM's reporters or MDTraj's writers,
frame/atom selection, units, periodic boxes, bad inputs, bounded memory on 1e5 frames, prmtop
and System-XML targets against OpenMM's own energies, and the worked DCD example.
"""

import json
import time
import tracemalloc
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from flowsci.config import load_config, validate_config
from flowsci.data.hdf5 import validate_h5
from flowsci.errors import ConfigError, DataError
from flowsci.stages.preprocess import preprocess
from flowsci.systems import build_target

md = pytest.importorskip("mdtraj")

ROOT = Path(__file__).resolve().parents[1]
PDB = str(ROOT / "data" / "alanine-dipeptide.pdb")
BOX = np.array([2.0, 2.1, 2.2])  # nm
R_KJ = 8.314462618e-3


@pytest.fixture
def openmm():
    return pytest.importorskip("openmm")


def frames(n=13, seed=0):
    """n noisy copies of the alanine dipeptide PDB structure [n, 22, 3] (nm)."""
    x0 = md.load(PDB).xyz[0].astype(np.float64)
    return x0 + np.random.default_rng(seed).normal(scale=0.02, size=(n, *x0.shape))


def write_traj(path, x, box=True, top=PDB):
    """OpenMM's reporters for .dcd/.xtc (when openmm is there), MDTraj's writers otherwise."""
    path = Path(path)
    if path.suffix in (".dcd", ".xtc"):
        try:
            import openmm
            from openmm import app, unit

            from flowsci.data.md_record import write_with_reporter
        except ImportError:
            openmm = None
        if openmm is not None:
            pdb = app.PDBFile(top)
            pdb.topology.setPeriodicBoxVectors(
                np.diag(BOX) * unit.nanometer if box else None)
            system = openmm.System()
            for _ in range(pdb.topology.getNumAtoms()):
                system.addParticle(1.0)
            if box:
                system.setDefaultPeriodicBoxVectors(*(np.diag(BOX) * unit.nanometer))
            return write_with_reporter(path, pdb.topology, system, x)
    t = md.Trajectory(x.astype(np.float32), md.load_topology(top),
                      unitcell_lengths=np.tile(BOX, (len(x), 1)) if box else None,
                      unitcell_angles=np.full((len(x), 3), 90.0) if box else None)
    t.save(str(path))
    return path


def config(tmp_path, inp, target=None, temperature=300.0):
    target = target or {"name": "openmm", "params": {"pdb": PDB, "temperature": temperature}}
    return validate_config({
        "results_dir": str(tmp_path / "results"),
        "systems": {"s": {"target": target, "temperature": temperature,
                          "data": {"source": "file", "input": inp,
                                   "splits": {"train": 0.6, "val": 0.2, "test": 0.2}}}},
        "runs": {"r": {"system": "s", "model": {"name": "egnn"}}}})


def centred(x):
    return x - x.mean(axis=1, keepdims=True)


@pytest.mark.parametrize("ext,atol", [("dcd", 1e-5), ("xtc", 1e-3), ("trr", 1e-6),
                                      ("nc", 1e-5), ("lammpstrj", 1e-4), ("mdcrd", 1e-4)])
def test_round_trip_per_format(tmp_path, openmm, ext, atol):
    x = frames()
    path = write_traj(tmp_path / f"traj.{ext}", x)
    cfg = config(tmp_path, {"path": str(path), "topology": PDB, "start": 1, "stop": 12,
                            "stride": 2, "chunk_frames": 4})
    out = preprocess(cfg, "s", progress=False)
    attrs = validate_h5(out)
    with h5py.File(out) as f:
        pos, cell, pbc, z = f["positions"][()], f["cell"][()], f["pbc"][()], f["atomic_numbers"][()]
    np.testing.assert_allclose(pos, centred(x[1:12:2]), atol=atol)
    assert np.allclose(pos.mean(axis=1), 0, atol=1e-9)
    np.testing.assert_allclose(cell, np.tile(np.diag(BOX), (6, 1, 1)), atol=1e-4)
    assert pbc.tolist() == [True] * 3
    assert z.tolist() == build_target(cfg["systems"]["s"]["target"]).atomic_numbers
    src = json.loads(attrs["source"])
    fmt = {"nc": "netcdf"}.get(ext, ext)
    assert (src["format"], src["n_frames"], src["topology"], src["n_atoms_file"]) == \
        (fmt, 6, PDB, 22)
    assert len(src["sha256"]) == len(src["topology_sha256"]) == 64
    assert json.loads(attrs["units"])["length"] == "nm"


def test_units_heavy_atoms_and_angstrom_target_without_openmm(tmp_path):
    """An `ase` target (Å) of the 10 heavy atoms, read from an MDTraj-written DCD (no box)."""
    import ase.io
    x = frames(7)
    path = write_traj(tmp_path / "traj.nc", x, box=False)
    heavy = md.load_topology(PDB).select("not element H")
    atoms = ase.io.read(PDB)[heavy]
    ase.io.write(tmp_path / "heavy.xyz", atoms)
    target = {"name": "ase", "params": {"structure": str(tmp_path / "heavy.xyz"),
                                        "calculator": "lj", "temperature": 300.0}}
    cfg = config(tmp_path, {"path": str(path), "topology": PDB, "atoms": "not element H"},
                 target=target)
    out = preprocess(cfg, "s", progress=False)
    with h5py.File(out) as f:
        pos = f["positions"][()]
        assert "cell" not in f and "pbc" not in f
        assert f["atomic_numbers"][()].tolist() == atoms.numbers.tolist()
    np.testing.assert_allclose(pos, 10 * centred(x[:, heavy]), atol=1e-4)
    # an index list selects the same atoms; units.length overrides NetCDF's own Å
    cfg = config(tmp_path, {"path": str(path), "topology": PDB, "atoms": heavy.tolist(),
                            "units": {"length": "nm"}}, target=target)
    out2 = preprocess(cfg, "s", out=str(tmp_path / "nm.h5"), progress=False)
    with h5py.File(out2) as f:
        np.testing.assert_allclose(f["positions"][()], 10 * pos, rtol=1e-6)


def test_residue_selection_and_mass_centre_in_reader(tmp_path):
    from flowsci.data.md_trajectory import MDMeta, stream_md
    x = frames(9)
    path = write_traj(tmp_path / "traj.trr", x)
    top = md.load_topology(PDB)
    meta = MDMeta(str(path), "trr", PDB)
    blocks = list(stream_md(path, meta, length_unit="angstrom", atoms="resid 1",
                            remove_com="mass", chunk_frames=2, stride=3))
    idx = top.select("resid 1")
    assert [len(b["positions"]) for b in blocks] == [1, 1, 1]  # frames 0, 3, 6 of 2-blocks
    got = np.concatenate([b["positions"] for b in blocks])
    m = np.array([a.element.mass for a in top.atoms])[idx]
    ref = x[::3][:, idx]
    ref = ref - (m @ ref / m.sum())[:, None]
    np.testing.assert_allclose(got, 10 * ref, atol=1e-5)
    assert meta.n_frames == 3 and len(meta.atom_indices) == len(idx) == 10


def solvated(tmp_path, openmm):
    """Alanine dipeptide in a small water box: a periodic PDB with ~1000 atoms."""
    from openmm import app, unit
    pdb = app.PDBFile(PDB)
    mod = app.Modeller(pdb.topology, pdb.positions)
    mod.addSolvent(app.ForceField("amber99sbildn.xml", "tip3p.xml"),
                   boxSize=openmm.Vec3(*BOX) * unit.nanometer)
    path = tmp_path / "solvated.pdb"
    with open(path, "w") as f:
        app.PDBFile.writeFile(mod.topology, mod.positions, f)
    return str(path), np.asarray(mod.getPositions().value_in_unit(unit.nanometer))


def test_target_selection_is_used_by_the_reader_and_make_whole(tmp_path, openmm):
    """Target `atoms: not water` on a solvated PDB: the reader keeps the same 22 atoms, the
    target is the dipeptide in vacuum; make_whole rejoins a molecule split by the box."""
    top_path, x0 = solvated(tmp_path, openmm)
    x = x0 + np.random.default_rng(1).normal(scale=0.01, size=(5, *x0.shape))
    x[2, 0] += [BOX[0], 0, 0]  # atom 0 of the dipeptide wrapped into the next image
    path = write_traj(tmp_path / "traj.dcd", x, top=top_path)
    target = {"name": "openmm", "params": {"pdb": top_path, "atoms": "not water"}}
    for whole in (False, True):
        cfg = config(tmp_path, {"path": str(path), "topology": top_path, "make_whole": whole},
                     target=target)
        out = preprocess(cfg, "s", out=str(tmp_path / f"w{whole}.h5"), progress=False)
        with h5py.File(out) as f:
            pos, cell = f["positions"][()], f["cell"][()]
            assert json.loads(f.attrs["source"])["n_atoms_file"] == len(x0)
        ref = x[:, :22].copy()
        if whole:
            ref[2, 0] -= [BOX[0], 0, 0]
        np.testing.assert_allclose(pos, centred(ref), atol=1e-5)
        np.testing.assert_allclose(cell[0], np.diag(BOX), atol=1e-4)
    t, ala2 = build_target(target), build_target({"name": "ala2"})
    assert t.n_particles == 22 and t.atomic_numbers == ala2.atomic_numbers
    xt = torch.as_tensor(pos)
    np.testing.assert_allclose(t.energy(xt).numpy(), ala2.energy(xt).numpy(), rtol=1e-10)


def _fails(cfg, tmp_path, err, match):
    out = tmp_path / "results" / "s" / "data.h5"
    with pytest.raises(err, match=match) as e:
        preprocess(cfg, "s", out=str(out), progress=False)
    assert "\n" not in str(e.value)
    assert not out.exists()
    assert not out.parent.exists() or not list(out.parent.iterdir())  # no temporary left over
    return str(e.value)


def test_bad_inputs_one_line_errors_nothing_written(tmp_path, openmm):
    x = frames(6)
    dcd = write_traj(tmp_path / "traj.dcd", x)
    top_path, x0 = solvated(tmp_path, openmm)
    big = write_traj(tmp_path / "big.dcd", x0[None].repeat(2, 0), top=top_path)
    cases = [
        ({"path": str(big), "topology": PDB}, DataError,
         rf"{big}: frames have {len(x0)} atoms, the topology .* has 22"),
        ({"path": str(dcd)}, DataError, rf"{dcd}: a DCD trajectory .* set data.input.topology"),
        ({"path": str(dcd), "topology": str(tmp_path / "nope.pdb")}, DataError,
         "nope.pdb: topology file does not exist"),
        ({"path": str(dcd), "topology": str(dcd)}, DataError, "unknown topology format"),
        ({"path": str(dcd), "topology": PDB, "atoms": "resname XYZ"}, DataError,
         rf"{dcd} with topology .*: atom selection 'resname XYZ' matches no atom"),
        ({"path": str(dcd), "topology": PDB, "atoms": "resname and and"}, DataError,
         "bad atom selection"),
        ({"path": str(dcd), "topology": PDB, "atoms": [0, 99]}, DataError, "outside"),
        ({"path": str(dcd), "topology": PDB, "start": 6}, DataError,
         "empty trajectory .*in the selection"),
        ({"path": str(dcd), "topology": PDB, "units": {"energy": "eV"}}, ConfigError,
         "positions only"),
    ]
    odd = tmp_path / "traj.foo"
    odd.write_bytes(dcd.read_bytes())
    cases.append(({"path": str(odd), "topology": PDB}, DataError,
                  rf"{odd}: unknown trajectory format \(extension '.foo'\)"))
    xnan = x.copy()
    xnan[3, 5, 1] = np.nan
    nan = tmp_path / "nan.dcd"
    md.Trajectory(xnan.astype(np.float32), md.load_topology(PDB)).save(str(nan))
    cases.append(({"path": str(nan), "topology": PDB, "chunk_frames": 2}, DataError,
                  rf"{nan}: frame 3: NaN/Inf coordinates \(atom 5\)"))
    cases.append(({"path": str(dcd), "topology": PDB, "atoms": "not element H"}, DataError,
                  "10 atoms selected .* target openmm has 22"))
    ext = tmp_path / "t.extxyz"
    import ase.io
    ase.io.write(ext, ase.io.read(PDB))
    cases.append(({"path": str(ext), "atoms": "all"}, ConfigError,
                  "data.input.atoms applies to MD trajectories"))
    for inp, err, match in cases:
        _fails(config(tmp_path, inp), tmp_path, err, match)
    # an existing output is left byte-identical by a failing rerun
    out = preprocess(config(tmp_path, {"path": str(dcd), "topology": PDB}), "s", progress=False)
    before = out.read_bytes()
    with pytest.raises(DataError, match="NaN"):
        preprocess(config(tmp_path, {"path": str(nan), "topology": PDB}), "s", force=True,
                   progress=False)
    assert out.read_bytes() == before


def test_1e5_frame_dcd_streams_with_bounded_memory(tmp_path):
    from flowsci.data.md_trajectory import MDMeta, stream_md
    n, n_atoms = 100_000, 22
    path = tmp_path / "long.dcd"
    rng = np.random.default_rng(0)
    base = rng.normal(size=(n_atoms, 3)).astype(np.float32) * 5  # Å
    with md.formats.DCDTrajectoryFile(str(path), "w") as f:
        for k in range(0, n, 10_000):
            block = base + np.arange(k, k + 10_000, dtype=np.float32)[:, None, None] * 1e-4
            f.write(block)
    full_bytes = n * n_atoms * 3 * 8  # the float64 array the stream never holds: 52.8 MB
    t0 = time.perf_counter()
    meta = MDMeta(str(path), "dcd", PDB)
    tracemalloc.start()
    count, last = 0, None
    try:
        for b in stream_md(path, meta, length_unit="angstrom", remove_com=False,
                           chunk_frames=1024):
            count += len(b["positions"])
            last = b["positions"][-1]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert count == meta.n_frames == n
    np.testing.assert_allclose(last, base + (n - 1) * 1e-4, atol=1e-3)
    assert peak < full_bytes / 10, f"peak {peak / 1e6:.1f} MB for a {full_bytes / 1e6:.0f} MB array"
    assert time.perf_counter() - t0 < 30


def _omm_energies(openmm, system, x):
    from openmm import unit
    ctx = openmm.Context(system, openmm.VerletIntegrator(0.001),
                         openmm.Platform.getPlatformByName("Reference"))
    out = []
    for xb in x:
        ctx.setPositions(xb)
        s = ctx.getState(getEnergy=True, getForces=True)
        kj = unit.kilojoule_per_mole
        out.append((s.getPotentialEnergy().value_in_unit(kj),
                    s.getForces(asNumpy=True).value_in_unit(kj / unit.nanometer)))
    return np.array([e for e, _ in out]), np.stack([f for _, f in out])


@pytest.fixture
def ala2_prmtop(tmp_path, openmm):
    from openmm import app
    from _amber_prmtop import write_inpcrd, write_prmtop
    pdb = app.PDBFile(PDB)
    system = app.ForceField("amber99sbildn.xml").createSystem(
        pdb.topology, nonbondedMethod=app.NoCutoff, constraints=None)
    write_prmtop(tmp_path / "ala2.prmtop", pdb.topology, system)
    write_inpcrd(tmp_path / "ala2.inpcrd", frames(1, seed=5)[0])
    return tmp_path / "ala2.prmtop", tmp_path / "ala2.inpcrd"


@pytest.mark.parametrize("solvent", ["vacuum", "OBC2", "GBn2"])
def test_prmtop_target_energy_equals_openmm(ala2_prmtop, openmm, solvent):
    from openmm import app
    prmtop, inpcrd = ala2_prmtop
    t = build_target({"name": "openmm", "params": {"prmtop": str(prmtop), "inpcrd": str(inpcrd),
                                                   "solvent": solvent, "temperature": 310.0}})
    ref_system = app.AmberPrmtopFile(str(prmtop)).createSystem(
        nonbondedMethod=app.NoCutoff, constraints=None,
        implicitSolvent=None if solvent == "vacuum" else getattr(app, solvent))
    x = torch.as_tensor(frames(3, seed=2)).requires_grad_(True)
    u = t.energy(x)
    u.sum().backward()
    e, f = _omm_energies(openmm, ref_system, x.detach().numpy())
    kT = R_KJ * 310.0
    np.testing.assert_allclose(u.detach().numpy() * kT, e, rtol=1e-10, atol=1e-8)
    np.testing.assert_allclose(x.grad.numpy(), -f / kT, rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(t.positions0, frames(1, seed=5)[0], atol=1e-6)
    assert t.atomic_numbers == build_target({"name": "ala2"}).atomic_numbers
    if solvent == "vacuum":  # the helper's prmtop is ff99SB-ILDN itself (charges to 1e-8 e)
        ala2 = build_target({"name": "ala2", "params": {"temperature": 310.0}})
        np.testing.assert_allclose(u.detach().numpy(), ala2.energy(x.detach()).numpy(),
                                   rtol=1e-6, atol=1e-4)


def test_system_xml_target_equals_forcefield_target(tmp_path, openmm):
    ala2 = build_target({"name": "ala2", "params": {"solvent": "implicit"}})
    xml = tmp_path / "system.xml"
    xml.write_text(openmm.XmlSerializer.serialize(ala2.system))
    t = build_target({"name": "openmm", "params": {"system_xml": str(xml), "pdb": PDB}})
    x = torch.as_tensor(frames(4, seed=3))
    np.testing.assert_array_equal(t.energy(x).numpy(), ala2.energy(x).numpy())
    assert t.attrs()["system_xml"] == str(xml) and t.attrs()["source"] == "system_xml"
    integ = tmp_path / "integrator.xml"
    integ.write_text(openmm.XmlSerializer.serialize(openmm.VerletIntegrator(0.001)))
    bad = [({"system_xml": str(xml)}, "system_xml needs pdb"),
           ({"system_xml": str(integ), "pdb": PDB}, "not a System"),
           ({"system_xml": str(xml), "pdb": PDB, "solvent": "OBC2"}, "carries its own"),
           ({"system_xml": str(xml), "prmtop": str(xml), "pdb": PDB}, "not both"),
           ({"prmtop": str(tmp_path / "none.prmtop")}, "none.prmtop does not exist"),
           ({"prmtop": str(xml), "atoms": "protein"}, "atoms applies to pdb"),
           ({"pdb": PDB, "atoms": "not element H"}, "cannot build a System .* restricted"),
           ({"pdb": PDB, "solvent": "water"}, "solvent must be one of"),
           ({}, "give pdb")]
    for params, match in bad:
        with pytest.raises(ConfigError, match=match):
            build_target({"name": "openmm", "params": params})


def test_netcdf_with_prmtop_topology_into_prmtop_target(tmp_path, ala2_prmtop):
    """The AMBER path end to end: NetCDF trajectory + prmtop topology, prmtop target."""
    prmtop, inpcrd = ala2_prmtop
    x = frames(8)
    path = write_traj(tmp_path / "md.nc", x)
    target = {"name": "openmm", "params": {"prmtop": str(prmtop), "solvent": "OBC2"}}
    out = preprocess(config(tmp_path, {"path": str(path), "topology": str(prmtop)},
                            target=target), "s", progress=False)
    with h5py.File(out) as f:
        np.testing.assert_allclose(f["positions"][()], centred(x), atol=1e-5)


def _example_config(tmp_path, n=20):
    dcd = tmp_path / "inputs" / "ala2_md.dcd"
    return load_config(ROOT / "config" / "examples" / "ala2_dcd.yaml", [
        f"results_dir={tmp_path / 'results'}", "device=cpu",
        f"systems.ala2_dcd.data.input.path={dcd}",
        f"systems.ala2_dcd.data.input.topology={PDB}",
        f"systems.ala2_dcd.target.params.pdb={PDB}", f"systems.ala2_md.target.params.pdb={PDB}",
        f"systems.ala2_md.data.generator.params.n_samples={n}",
        "systems.ala2_md.data.generator.params.burn_in=100",
        "systems.ala2_md.data.generator.params.thin=10"]), dcd


def test_example_dcd_path_equals_generator_path(tmp_path, openmm):
    """config/examples/ala2_dcd.yaml: openmm_md frames written by OpenMM's DCDReporter and read
    back give the same data.h5 positions as the generator's own path."""
    from flowsci.data.md_record import main as record
    cfg, dcd = _example_config(tmp_path)
    cfg_file = tmp_path / "example.yaml"
    import yaml
    cfg_file.write_text(yaml.safe_dump(json.loads(json.dumps(cfg))))
    record([str(cfg_file), "--system", "ala2_md", "--out", str(dcd)])
    assert md.load(str(dcd), top=PDB).n_frames == 20
    a = preprocess(cfg, "ala2_dcd", progress=False)
    b = preprocess(cfg, "ala2_md", progress=False)
    with h5py.File(a) as fa, h5py.File(b) as fb:
        assert fa["positions"].shape == fb["positions"].shape == (20, 22, 3)
        np.testing.assert_allclose(fa["positions"][()], fb["positions"][()], atol=1e-5)
        assert fa["atomic_numbers"][()].tolist() == fb["atomic_numbers"][()].tolist()
        for k in ("train", "val", "test"):
            assert fa[f"splits/{k}"][()].tolist() == fb[f"splits/{k}"][()].tolist()


@pytest.mark.slow
def test_example_trains_samples_reweights(tmp_path, openmm):
    from flowsci.data.md_record import record_openmm_md
    from flowsci.stages.reweight import reweight
    from flowsci.stages.sample import gather, sample
    from flowsci.stages.train import train
    cfg, dcd = _example_config(tmp_path, n=40)
    spec = cfg["systems"]["ala2_md"]
    record_openmm_md(build_target(spec["target"]), dcd, spec["data"]["generator"]["params"],
                     progress=False)
    run = cfg["runs"]["ala2_dcd_egnn"]
    run["model"]["params"] = {"hidden": 8, "n_layers": 1}
    run["flow"].update(method="rk4", n_steps=3)
    run["training"].update(steps=3, batch_size=8, val_every=3, val_samples=4,
                           checkpoint_every=3, solver={"method": "euler", "n_steps": 2})
    run["sampling"].update(n_samples=24, batch_size=12)
    run["reweighting"].update(n_bootstrap=10)
    preprocess(cfg, "ala2_dcd", progress=False)
    assert train(cfg, "ala2_dcd_egnn", progress=False).exists()
    sample(cfg, "ala2_dcd_egnn", shard=0, progress=False)
    gather(cfg, "ala2_dcd_egnn")
    assert Path(reweight(cfg, "ala2_dcd_egnn")).exists()
