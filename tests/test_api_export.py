"""flowsci.api (load_run and the Run object) and `flowsci export` on tiny trained runs: the API
draws exactly what the sample stage draws, log q of stored samples is reproduced, exports
round-trip through MDTraj / ASE / numpy, resampling is unbiased, bad input gets one error."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

import flowsci
from flowsci import paths
from flowsci.cli import main
from flowsci.config import dump_config, validate_config
from flowsci.errors import ConfigError, DataError
from flowsci.reweighting import normalized_weights, systematic_resample
from flowsci.stages.export import export
from flowsci.stages.preprocess import preprocess
from flowsci.stages.reweight import reweight
from flowsci.stages.sample import gather, sample
from flowsci.stages.train import train

ROOT = Path(__file__).resolve().parents[1]
TRAIN = {"solver": {"method": "euler", "n_steps": 2}, "steps": 2, "batch_size": 8,
         "val_every": 2, "val_samples": 4, "checkpoint_every": 2}
SYSTEMS = {
    "dw4": {"target": {"name": "dw4"},
            "data": {"source": "generate", "generator": {"name": "mcmc", "params": {
                "n_samples": 60, "n_chains": 6, "burn_in": 30, "thin": 2, "step_size": 0.1}}}},
    "phi4": {"target": {"name": "phi4", "params": {"shape": [4, 4], "m2": -4.0, "lam": 8.0}},
             "data": {"source": "generate", "generator": {"name": "hmc", "params": {
                 "n_samples": 60, "n_chains": 6, "burn_in": 20, "thin": 1}}}},
    "ala2": {"target": {"name": "ala2"}, "temperature": 300.0,
             "data": {"source": "generate", "generator": {"name": "openmm_md", "params": {
                 "n_samples": 30, "burn_in": 100, "thin": 10}}}},
}
EGNN = {"name": "egnn", "params": {"hidden": 8, "n_layers": 1}}
RUNS = {  # run: (system, model, flow solver, objective)
    # exact_trace pinned: 'auto' picks the fastest autograd strategy by timing it, so under load
    # the stage and the API can pick different ones whose float32 round-off steers dopri5's
    # step sizes apart (~1e-6); pinned, a shard is reproduced bit for bit
    "dw4_r": ("dw4", EGNN, {"method": "dopri5", "rtol": 1e-7, "atol": 1e-7,
                            "exact_trace": "vjp_batched"}, "flow_matching"),
    "phi4_r": ("phi4", {"name": "lattice_conv"}, {"method": "rk4", "n_steps": 3}, "likelihood"),
    "ala2_r": ("ala2", EGNN, {"method": "rk4", "n_steps": 2}, "flow_matching"),
}


def make_config(results: Path, runs=RUNS) -> dict:
    return validate_config({
        "results_dir": str(results), "device": "cpu",
        "systems": {RUNS[r][0]: SYSTEMS[RUNS[r][0]] for r in runs},
        "runs": {r: {"system": s, "model": m, "flow": fl,
                     "training": {"objective": {"name": o}, **TRAIN},
                     "sampling": {"n_samples": 12, "n_shards": 2, "batch_size": 4,
                                  "check_samples": 0},
                     "reweighting": {"n_bootstrap": 10, "mh_steps": 0}}
                 for r, (s, m, fl, o) in ((r, RUNS[r]) for r in runs)}})


def _pipeline(cfg: dict, run: str) -> None:
    preprocess(cfg, cfg["runs"][run]["system"], progress=False)
    train(cfg, run, progress=False)
    for shard in range(cfg["runs"][run]["sampling"]["n_shards"]):
        sample(cfg, run, shard=shard, progress=False)
    gather(cfg, run)
    reweight(cfg, run)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One config with a trained, sampled and reweighted run per system kind; built lazily."""
    cfg = make_config(tmp_path_factory.mktemp("api") / "results")
    done: set[str] = set()

    def get(run: str) -> dict:
        if run == "ala2_r":
            pytest.importorskip("openmm")
            pytest.importorskip("mdtraj")
        if run not in done:
            _pipeline(cfg, run)
            done.add(run)
        return cfg

    return get


def _stored(path: Path) -> dict:
    with h5py.File(path) as f:
        return {k: f[k][()] for k in ("x", "log_q", "energies")}


# --- the API against the stage outputs ---------------------------------------------------------

def test_api_sample_is_the_sample_stage_shard(trained):
    cfg = trained("dw4_r")
    run = flowsci.load_run(cfg, run="dw4_r")
    for shard in (0, 1):
        x, log_q = run.sample(shard=shard)
        ref = _stored(paths.shard_file(cfg, "dw4_r", shard))
        np.testing.assert_array_equal(x, ref["x"])
        np.testing.assert_array_equal(log_q, ref["log_q"])
    x2, _ = run.sample(6, seed=cfg["runs"]["dw4_r"]["sampling"]["seed"] + 1)
    assert not np.allclose(x2, x)  # another seed, other samples
    # the results directory a workflow ran in (it keeps its config in .flowsci/config.yaml)
    dump_config(cfg, Path(cfg["results_dir"]) / ".flowsci" / "config.yaml")
    again = flowsci.load_run(cfg["results_dir"], run="dw4_r")
    np.testing.assert_array_equal(again.sample(shard=1)[0], x)


def test_api_log_prob_energy_reweight_match_stage_outputs(trained):
    cfg = trained("dw4_r")
    run = flowsci.load_run(cfg, run="dw4_r")
    s = run.samples()
    assert s["x"].shape == (12, 4, 2)
    # exact log q by the reverse solve vs the sampling solve: dopri5 at 1e-7 agrees to 1e-4
    np.testing.assert_allclose(run.log_prob(s["x"]), s["log_q"], rtol=0, atol=1e-4)
    np.testing.assert_allclose(run.energy(s["x"]), s["energies"], rtol=1e-6)
    w = run.reweight(s["x"], s["log_q"])
    metrics = run.reweighted()["metrics"]
    assert w["ess"] == pytest.approx(metrics["ess"], rel=1e-6)
    assert w["k_hat"] == pytest.approx(metrics["pareto_k"], rel=1e-6, nan_ok=True)
    assert w["weights"].sum() == pytest.approx(1.0)
    stored = np.exp(run.reweighted()["log_weights"])
    np.testing.assert_allclose(w["weights"], stored, rtol=1e-6)
    scalars = run.observables.scalars(s["x"], s["energies"])
    assert scalars and all(len(v) == 12 for v in scalars.values())
    assert set(run.files) >= {"model", "samples", "reweight"} and run.files["model"].is_file()


def test_api_log_prob_has_the_sample_stage_chirality_handling(tmp_path):
    """With sampling.chirality the API's samples are all of the reference's handedness, their
    log q is the flow's + log 2 (reproduced by log_prob) and the mirror images get -inf."""
    import torch

    from flowsci.chirality import handedness

    atoms = [0, 1, 2, 3]
    cfg = validate_config({"results_dir": str(tmp_path), "device": "cpu", "systems": {"lj4": {
        "target": {"name": "lj", "params": {"n_particles": 4, "dim": 3}},
        "data": {"source": "generate", "generator": {"name": "mcmc", "params": {
            "n_samples": 32, "n_chains": 8, "burn_in": 100, "thin": 2, "step_size": 0.05,
            "drop_stuck_chains": True}}}}},
        "runs": {"r": {"system": "lj4", "model": EGNN,
                       "flow": {"method": "dopri5", "rtol": 1e-7, "atol": 1e-7},
                       "training": {"objective": {"name": "flow_matching"}, **TRAIN},
                       "sampling": {"n_samples": 8, "batch_size": 8, "check_samples": 0,
                                    "chirality": {"atoms": atoms}}}}})
    data = preprocess(cfg, "lj4", progress=False)
    with h5py.File(data, "a") as f:  # one enantiomer as reference (the energy is invariant)
        pos = f["positions"][()]
        wrong = handedness(torch.as_tensor(pos), tuple(atoms)).numpy() < 0
        f["positions"][wrong] = -pos[wrong]
    train(cfg, "r", progress=False)
    run = flowsci.load_run(cfg, run="r")
    x, log_q = run.sample(8, seed=3)
    sign = run._chirality_ref(4)[1]
    assert np.all(handedness(torch.as_tensor(x), tuple(atoms)).numpy() == sign)
    flow_lq = run.flow.double().log_prob(torch.as_tensor(x)).detach().numpy()
    run.flow.float()
    np.testing.assert_allclose(log_q, flow_lq + np.log(2), rtol=0, atol=1e-3)
    np.testing.assert_allclose(run.log_prob(x), log_q, rtol=0, atol=1e-3)
    assert np.all(run.log_prob(-x) == -np.inf)


def test_import_flowsci_is_light():
    code = "import sys, flowsci; assert 'torch' not in sys.modules; print(flowsci.load_run)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    assert "load_run" in out.stdout


# --- export round trips ------------------------------------------------------------------------

def _csv(path: Path) -> dict[str, np.ndarray]:
    with open(path) as f:
        rows = list(csv.DictReader(f))
    return {k: np.array([float(r[k]) for r in rows]) for k in rows[0]}


@pytest.mark.parametrize("fmt, atol", [("dcd", 1e-6), ("xtc", 6e-4), ("pdb", 1e-4)])
def test_export_molecule_round_trips_through_mdtraj(trained, tmp_path, fmt, atol):
    import mdtraj as md

    cfg = trained("ala2_r")
    run = flowsci.load_run(cfg, run="ala2_r")
    s = run.samples()
    out = export(cfg, "ala2_r", fmt, tmp_path / f"traj.{fmt}")
    top = md.Topology.from_openmm(run.target.topology)
    traj = md.load(str(out["output"]), top=top) if fmt != "pdb" else md.load(str(out["output"]))
    assert traj.n_frames == len(s["x"]) == out["n_frames"] == out["n_distinct"]
    np.testing.assert_allclose(traj.xyz, s["x"], rtol=0, atol=atol)  # nm, atom order kept
    assert [a.name for a in traj.topology.atoms] == [a.name for a in run.target.topology.atoms()]
    assert [a.element.atomic_number for a in traj.topology.atoms] == run.target.atomic_numbers
    assert traj.unitcell_vectors is None  # ala2 in vacuum has no box
    w = _csv(out["weights"])
    np.testing.assert_array_equal(w["sample_index"], np.arange(len(s["x"])))
    np.testing.assert_allclose(w["log_q"], s["log_q"])
    assert not list(tmp_path.glob(".*tmp*"))  # no temporary left


def test_export_resampled_frames_are_stored_configurations(trained, tmp_path, capsys):
    import mdtraj as md

    cfg = trained("ala2_r")
    config_file = tmp_path / "config.yaml"
    dump_config(cfg, config_file)
    out = tmp_path / "resampled.dcd"
    assert main(["export", "-c", str(config_file), "--run", "ala2_r", "--format", "dcd",
                 "--output", str(out), "--resample", "20", "-q"]) == 0
    printed = capsys.readouterr().out
    run = flowsci.load_run(config_file, run="ala2_r")
    s = run.samples()
    w = _csv(Path(f"{out}.weights.csv"))
    idx = w["sample_index"].astype(int)
    assert len(idx) == 20 and f"{len(np.unique(idx))} distinct configurations" in printed
    np.testing.assert_array_equal(idx, systematic_resample(
        run.reweight(s["x"], s["log_q"], s["energies"])["log_weights"], 20, seed=0))
    traj = md.load(str(out), top=md.Topology.from_openmm(run.target.topology))
    np.testing.assert_allclose(traj.xyz, s["x"][idx], rtol=0, atol=1e-6)


def test_export_2d_particles_through_ase_padded_with_zeros(trained, tmp_path, caplog):
    import ase.io

    cfg = trained("dw4_r")
    s = flowsci.load_run(cfg, run="dw4_r").samples()
    with caplog.at_level("INFO", logger="flowsci.stages.export"):
        out = export(cfg, "dw4_r", "extxyz", tmp_path / "dw4.extxyz")
    assert "padded with z = 0" in caplog.text
    frames = ase.io.read(str(out["output"]), index=":", format="extxyz")
    pos = np.stack([a.positions for a in frames])
    np.testing.assert_allclose(pos[..., :2], s["x"], rtol=0, atol=1e-7)
    assert np.all(pos[..., 2] == 0) and frames[0].get_chemical_symbols() == ["X"] * 4
    ref = export(cfg, "dw4_r", "extxyz", tmp_path / "ref.extxyz", source="reference")
    assert ref["n_frames"] == len(flowsci.load_run(cfg, run="dw4_r").reference()["x"])


def test_export_lattice_npy_and_refuses_dcd(trained, tmp_path, capsys):
    cfg = trained("phi4_r")
    s = flowsci.load_run(cfg, run="phi4_r").samples()
    out = export(cfg, "phi4_r", "npy", tmp_path / "fields.npy")
    np.testing.assert_array_equal(np.load(out["output"]), s["x"])
    config_file = tmp_path / "config.yaml"
    dump_config(cfg, config_file)
    bad = tmp_path / "fields.dcd"
    assert main(["export", "-c", str(config_file), "--run", "phi4_r", "--format", "dcd",
                 "--output", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "lattice system" in err and "npy" in err
    assert not bad.exists()


def test_export_reference_of_an_ase_system_keeps_elements_and_angstrom(tmp_path, monkeypatch):
    """--source reference needs no trained model: the Cu13 example's test split as extxyz,
    element symbols from the target, positions in Angstrom as stored."""
    import ase.io

    from flowsci.config import load_config

    monkeypatch.chdir(ROOT)
    cfg = load_config("config/examples/user_extxyz.yaml", [f"results_dir={tmp_path}"])
    preprocess(cfg, "cu13", progress=False)
    out = export(cfg, "cu13_egnn", "extxyz", tmp_path / "cu13.extxyz", source="reference")
    run_ref = read_reference_x(cfg)
    frames = ase.io.read(str(out["output"]), index=":")
    assert len(frames) == len(run_ref) == out["n_frames"]
    np.testing.assert_allclose(np.stack([a.positions for a in frames]), run_ref, atol=1e-7)
    assert frames[0].get_chemical_symbols() == ["Cu"] * 13
    w = _csv(out["weights"])
    assert np.all(np.isnan(w["log_q"]))  # reference data carry no log q; uniform weights
    np.testing.assert_allclose(np.exp(w["log_weight"]), 1 / len(w["frame"]))


def read_reference_x(cfg: dict) -> np.ndarray:
    from flowsci.stages.reweight import read_reference
    from flowsci.systems import build_target
    return read_reference(paths.data_file(cfg, "cu13"),
                          build_target(cfg["systems"]["cu13"]["target"]))["x"]


def test_export_md_input_of_a_periodic_system_keeps_topology_and_box(tmp_path):
    """A solvated (periodic) OpenMM system read from a DCD + PDB topology: --source reference
    exported as DCD opens in MDTraj with the same atoms, coordinates (nm) and box."""
    pytest.importorskip("openmm")
    md = pytest.importorskip("mdtraj")
    from test_md_inputs import BOX, solvated, write_traj

    import openmm
    top_path, x0 = solvated(tmp_path, openmm)
    x = x0 + np.random.default_rng(2).normal(scale=0.005, size=(5, *x0.shape))
    traj_in = write_traj(tmp_path / "in.dcd", x, top=top_path)
    cfg = validate_config({
        "results_dir": str(tmp_path / "results"),
        "systems": {"s": {"target": {"name": "openmm", "params": {
            "pdb": top_path, "forcefield": ["amber99sbildn.xml", "tip3p.xml"],
            "nonbonded_method": "CutoffPeriodic", "cutoff_nm": 0.9}}, "temperature": 300.0,
            "data": {"source": "file", "input": {"path": str(traj_in), "topology": top_path},
                     "splits": {"train": 0.6, "val": 0.2, "test": 0.2}}}},
        "runs": {"r": {"system": "s", "model": {"name": "egnn"}}}})
    preprocess(cfg, "s", progress=False)
    out = export(cfg, "r", "dcd", tmp_path / "ref.dcd", source="reference")
    from flowsci.stages.reweight import read_reference
    from flowsci.systems import build_target
    ref = read_reference(paths.data_file(cfg, "s"), build_target(cfg["systems"]["s"]["target"]))
    t = md.load(str(out["output"]), top=top_path)
    assert t.n_atoms == len(x0) and t.n_frames == len(ref["x"]) == out["n_frames"]
    np.testing.assert_allclose(t.xyz, ref["x"], rtol=0, atol=1e-5)
    np.testing.assert_allclose(t.unitcell_lengths, np.tile(BOX, (t.n_frames, 1)), atol=1e-5)


# --- bad input: one clear error ----------------------------------------------------------------

def test_bad_inputs_give_one_clear_error(trained, tmp_path):
    cfg = trained("dw4_r")
    with pytest.raises(ConfigError, match="run 'nope' is not in the config"):
        flowsci.load_run(cfg, run="nope")
    with pytest.raises(ConfigError, match="no such run"):
        export(cfg, "nope", "npy", tmp_path / "x.npy")
    with pytest.raises(ConfigError, match="config file not found"):
        flowsci.load_run(tmp_path / "missing.yaml")
    other = validate_config({**cfg, "runs": {"dw4_r": {
        **cfg["runs"]["dw4_r"], "model": {"name": "egnn", "params": {"hidden": 16}}}}})
    with pytest.raises(DataError, match=r"model.pt: trained with runs.dw4_r.model"):
        flowsci.load_run(other, run="dw4_r")
    # an empty sample file: the API and the export refuse it, nothing written
    empty = validate_config({**cfg, "results_dir": str(tmp_path / "res")})
    model = paths.model_file(empty, "dw4_r")
    model.parent.mkdir(parents=True)
    model.write_bytes(paths.model_file(cfg, "dw4_r").read_bytes())
    with h5py.File(paths.samples_file(empty, "dw4_r"), "w") as f:
        for k in ("x", "log_q", "energies"):
            f[k] = np.zeros((0, 4, 2) if k == "x" else (0,))
    with pytest.raises(DataError, match="samples.h5: x, log_q, energies must have the same "
                                        "non-zero length"):
        flowsci.load_run(empty, run="dw4_r").samples()
    with pytest.raises(DataError, match="non-zero length"):
        export(empty, "dw4_r", "extxyz", tmp_path / "e.extxyz")
    assert not (tmp_path / "e.extxyz").exists()
    with pytest.raises(ConfigError, match="--resample applies to the flow's weighted samples"):
        export(cfg, "dw4_r", "npy", tmp_path / "r.npy", resample=5, source="reference")
    with pytest.raises(ConfigError, match="no molecular topology"):
        export(cfg, "dw4_r", "pdb", tmp_path / "x.pdb")


@pytest.mark.parametrize("failing", ["trajectory", "weights"])
def test_a_failed_export_leaves_the_previous_trajectory_and_weights_pair(trained, tmp_path,
                                                                         monkeypatch, failing):
    from flowsci.io import atomic_output
    from flowsci.stages import export as export_stage

    cfg = trained("dw4_r")
    out = tmp_path / "x.extxyz"
    export(cfg, "dw4_r", "extxyz", out)
    before = {p.name: p.read_bytes() for p in (out, export_stage.weights_file(out))}

    def broken(path, *args):  # a disk that fills up midway through the file
        with atomic_output(path) as tmp:
            Path(tmp).write_text("half a file")
            raise OSError(28, "No space left on device")

    if failing == "trajectory":
        good = export_stage.WRITERS["extxyz"]
        monkeypatch.setitem(export_stage.WRITERS, "extxyz",
                            export_stage.Writer(good.kinds, broken))
    else:
        monkeypatch.setattr(export_stage, "write_weights_csv", broken)
    with pytest.raises(OSError):
        export(cfg, "dw4_r", "extxyz", out, resample=5)
    assert {p.name: p.read_bytes() for p in (out, export_stage.weights_file(out))} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(before)  # no temporary left


# --- systematic resampling -------------------------------------------------------------------

def test_systematic_resampling_is_unbiased_on_a_gaussian():
    """Proposal N(0, 1), target N(0.5, 1): log w = 0.5 x - 1/8. Over R resampling offsets the
    mean count of each sample is M w_i (each count is floor or ceil of M w_i, so its variance
    is at most 1/4) and the mean of the resampled means is the weighted mean."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal(400)
    log_w = 0.5 * x - 0.125
    w = normalized_weights(log_w)
    m, reps = 150, 4000
    counts = np.zeros(len(x))
    means = np.empty(reps)
    for r in range(reps):
        idx = systematic_resample(log_w, m, seed=r)
        c = np.bincount(idx, minlength=len(x))
        assert np.all((c == np.floor(m * w)) | (c == np.ceil(m * w)))
        counts += c
        means[r] = x[idx].mean()
    np.testing.assert_allclose(counts / reps, m * w, rtol=0, atol=5 * 0.5 / np.sqrt(reps))
    weighted = float(np.sum(w * x))
    # multinomial resampling's variance Var_w(x) / M bounds the systematic one here
    var_multinomial = float(np.sum(w * (x - weighted) ** 2)) / m
    assert means.var() <= var_multinomial
    assert abs(means.mean() - weighted) < 5 * np.sqrt(var_multinomial / reps)
    assert abs(weighted - 0.5) < 5 * np.sqrt(np.sum(w ** 2))  # 5 / sqrt(ESS) of the target mean


def test_systematic_resample_refuses_bad_input():
    with pytest.raises(ValueError, match="n must be >= 1"):
        systematic_resample(np.zeros(3), 0)
    with pytest.raises(ValueError, match="no sample has a finite weight"):
        systematic_resample(np.full(3, -np.inf), 2)
    assert set(systematic_resample(np.array([0.0, -np.inf, np.nan]), 5)) == {0}


# --- the tutorial --------------------------------------------------------------------------------

@pytest.mark.parametrize("run_name, pair", [("ala2_r", "1,18"), ("dw4_r", "0,1")])
def test_tutorial_runs_on_a_tiny_trained_run(trained, tmp_path, run_name, pair):
    """docs/tutorial.py runs as a script on a tiny trained molecule (DCD + PDB export) and
    2-D particle system (extxyz export)."""
    pytest.importorskip("matplotlib")
    cfg = trained(run_name)
    config_file = tmp_path / "config.yaml"
    dump_config(cfg, config_file)
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
           "MPLBACKEND": "Agg", "FLOWSCI_CONFIG": str(config_file), "FLOWSCI_RUN": run_name,
           "FLOWSCI_N_SAMPLES": "6", "FLOWSCI_PAIR": pair, "FLOWSCI_OUT": str(out)}
    res = subprocess.run([sys.executable, str(ROOT / "docs" / "tutorial.py")], env=env,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "ESS =" in res.stdout and "distinct" in res.stdout
    assert (out / "distance_histogram.png").stat().st_size > 0
    if run_name == "ala2_r":
        import mdtraj as md
        traj = md.load(str(out / "samples.dcd"), top=str(out / "samples.pdb"))
        assert traj.n_atoms == 22 and traj.n_frames == 12
    else:
        import ase.io
        assert len(ase.io.read(str(out / "samples.extxyz"), index=":")) == 12


# --- the on-demand Snakemake target ---------------------------------------------------------

def test_snakemake_export_target_resolves(tmp_path):
    """`snakemake results/{system}/{run}/export/resampled.{format}` plans the export after
    the sample stage (dry run), and the default target does not include it."""
    from test_workflow import TINY, _snakemake, _workdir

    wd = _workdir(tmp_path, TINY)
    target = "results/dw4/tiny/export/resampled.extxyz"
    r = _snakemake("-n", "-p", "--cores", "1", target, cwd=wd)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "rule export:" in r.stdout and "sample_gather" in r.stdout
    assert f"--format extxyz --output {target} --resample 200" in r.stdout
    default = _snakemake("-n", "--cores", "1", cwd=wd)
    assert "rule export:" not in default.stdout
