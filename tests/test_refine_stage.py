"""The refine stage end to end on tiny trained DW4 and phi^4 runs: outputs and metrics,
resume after a stop (and after kill -9) bit-identical, bad settings refused in one line."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from flowsci import paths
from flowsci.cli import main
from flowsci.config import dump_config, validate_config
from flowsci.stages.preprocess import preprocess
from flowsci.stages.refine import refine
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
}
RUNS = {
    "dw4_r": ("dw4", {"name": "egnn", "params": {"hidden": 8, "n_layers": 1}},
              {"method": "rk4", "n_steps": 3}),
    "phi4_r": ("phi4", {"name": "lattice_conv"}, {"method": "rk4", "n_steps": 2}),
}
REFINE = {"enabled": True, "n_chains": 4, "n_local": 3, "n_cycles": 10, "burn_in": 4,
          "step_size": 0.05, "checkpoint_every": 3}


def make_config(results: Path, refine_settings: dict | None = None) -> dict:
    return validate_config({
        "results_dir": str(results), "device": "cpu", "systems": SYSTEMS,
        "runs": {r: {"system": s, "model": m, "flow": fl,
                     "training": {"objective": {"name": "flow_matching"}, **TRAIN},
                     "sampling": {"n_samples": 120, "batch_size": 60, "check_samples": 0},
                     "refine": {**REFINE, **(refine_settings or {})}}
                 for r, (s, m, fl) in RUNS.items()}})


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """Trained and sampled tiny runs (one per target kind); refine outputs are per test."""
    res = tmp_path_factory.mktemp("refine") / "results"
    cfg = make_config(res)
    for run, (system, _, _) in RUNS.items():
        preprocess(cfg, system, progress=False)
        train(cfg, run, progress=False)
        sample(cfg, run, shard=0, progress=False)
        gather(cfg, run)
    return res


def _cfg(results: Path, **settings) -> dict:
    cfg = make_config(results, settings)
    for run in RUNS:  # each test starts without refine outputs
        d = paths.refine_dir(cfg, run)
        if d.is_dir():
            for f in d.iterdir():
                f.unlink()
    return cfg


def _read(path: Path) -> dict:
    with h5py.File(path) as f:
        out = {k: f[k][()] for k in f if isinstance(f[k], h5py.Dataset)}
        for g in f:
            if isinstance(f[g], h5py.Group):
                out.update({f"{g}/{k}": f[g][k][()] for k in f[g]})
    return out


@pytest.mark.parametrize("run,kernel", [("dw4_r", "mala"), ("phi4_r", "hmc")])
def test_flow_mcmc_end_to_end(results, run, kernel):
    cfg = _cfg(results, kernel=kernel, n_leapfrog=2)
    out = refine(cfg, run, progress=False)
    assert out == paths.refine_dir(cfg, run) / "chains.h5"
    arrays = _read(out)
    assert arrays["x"].shape[:2] == (10, 4) and arrays["baseline/x"].shape[:2] == (10, 4)
    if run == "dw4_r":  # local moves stay on the flow's zero-centroid subspace
        assert np.ptp(arrays["x"].mean(2), axis=(0, 1)).max() < 1e-6  # float32 samples
    m = json.loads(paths.refine_metrics(cfg, run).read_text())
    r, b = m["refine"], m["baseline"]
    assert len(r["local_accept"]) == 4 and 0 <= r["local_accept_mean"] <= 1
    assert r["global_accept_mean"] is not None and r["pool_used"] == 4 * 14
    # the flow samples charged: the initial block and the proposals, at the sample stage's rate
    with h5py.File(paths.samples_file(cfg, run)) as f:
        assert 0 < f.attrs["sample_cpu_seconds"] and f.attrs["device"] == "cpu"
        per_sample = float(f.attrs["sample_cpu_seconds"]) / len(f["x"])  # CPU time, as the chains
    assert r["cost"]["pool_sampling_cpu_seconds"] == pytest.approx(
        per_sample * (r["pool_used"] + r["pool_init"]))
    assert r["cost"]["log_q_solves"] > 0 and b["cost"]["log_q_solves"] == 0
    # evaluations: 4 initial + 4 chains x 14 cycles x K=3 steps x (1 or 2 leapfrog) + accepted
    per_step = 1 if kernel == "mala" else 2
    assert b["cost"]["energy_force_evals"] == 4 + 4 * 14 * 3 * per_step
    assert r["cost"]["energy_force_evals"] >= b["cost"]["energy_force_evals"]
    obs = r["observables"]
    assert {"energy"} <= set(obs) and {"mean", "err", "tau", "ess", "rhat"} <= set(obs["energy"])
    if run == "phi4_r":
        assert "abs_magnetization" in obs
    assert m["reweighting"]["ess_energy"] > 0 and set(m["speedup"]) == {"over_baseline",
                                                                      "over_reweighting"}
    assert not list(paths.refine_dir(cfg, run).glob("checkpoint-*"))


def test_resample_move_end_to_end(results):
    cfg = _cfg(results, method="resample_move", n_cycles=3, burn_in=1, n_particles=50,
               baseline=False)
    out = refine(cfg, "dw4_r", progress=False)
    assert out.name == "particles.h5"
    arrays = _read(out)
    assert arrays["x"].shape == (50, 4, 2) and arrays["ancestors"].shape == (50,)
    m = json.loads(paths.refine_metrics(cfg, "dw4_r").read_text())["refine"]
    rounds = len(m["distinct_ancestors"])
    assert 2 <= rounds <= 4 and m["distinct_ancestors"][0] == len(set(arrays["ancestors"]))
    assert m["cost"]["log_q_solves"] == 0 and m["observables"]["energy"]["err"] > 0


def test_resume_after_stop_is_bit_identical(results):
    cfg = _cfg(results)
    ref = _read(refine(cfg, "dw4_r", progress=False))
    assert refine(cfg, "dw4_r", progress=False, stop_after=7) is None
    assert (paths.refine_dir(cfg, "dw4_r") / "checkpoint-refine.pt").is_file()
    resumed = _read(refine(cfg, "dw4_r", progress=False))
    assert ref.keys() == resumed.keys()
    for k in ref:
        np.testing.assert_array_equal(ref[k], resumed[k], err_msg=k)


def test_kill_9_then_rerun_resumes_bit_identically(results, tmp_path):
    cfg = _cfg(results, n_cycles=40, checkpoint_every=2)
    config_file = tmp_path / "config.yaml"
    dump_config(cfg, config_file)
    ref = _read(refine(cfg, "dw4_r", progress=False))
    for f in paths.refine_dir(cfg, "dw4_r").iterdir():
        f.unlink()
    cmd = [sys.executable, "-m", "flowsci.cli", "refine", "-c", str(config_file), "--run",
           "dw4_r", "--quiet"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    ckpt = paths.refine_dir(cfg, "dw4_r") / "checkpoint-refine.pt"
    deadline = time.time() + 120
    while not ckpt.is_file() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert ckpt.is_file() and not paths.refine_output(cfg, "dw4_r").exists()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "resuming at cycle" in r.stderr
    resumed = _read(paths.refine_output(cfg, "dw4_r"))
    for k in ref:
        np.testing.assert_array_equal(ref[k], resumed[k], err_msg=k)


@pytest.mark.parametrize("run,override,message", [
    ("dw4_r", ["n_local=0", "global_moves=false"], "runs.dw4_r.refine: n_local = 0 and "
                                                   "global_moves = false"),
    ("phi4_r", ["kernel=hmc", "mass=atomic"], "molecular-only"),
    ("dw4_r", ["kernel=hmc", "mass=atomic"], "needs a molecular target"),
    ("dw4_r", ["n_chains=0"], "runs.dw4_r.refine.n_chains"),
    ("dw4_r", ["kernel=nuts"], "unknown refine kernel 'nuts'"),
    ("dw4_r", ["method=resample_move", "n_local=0"], "resample_move needs local steps"),
    ("dw4_r", ["mass=atomic"], "masses apply to kernel hmc only"),
])
def test_bad_settings_are_one_line_errors(results, tmp_path, capsys, run, override, message):
    cfg = _cfg(results)
    config_file = tmp_path / "config.yaml"
    dump_config(cfg, config_file)
    sets = sum((["--set", f"runs.{run}.refine.{o}"] for o in override), [])
    assert main(["refine", "-c", str(config_file), "--run", run, "-q", *sets]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("flowsci refine: error: ") and message in err[0]
    assert not paths.refine_output(cfg, run).exists()
    assert not list(paths.refine_dir(cfg, run).glob("*")) if paths.refine_dir(cfg, run).exists() \
        else True


def test_disabled_runs_are_skipped_by_default(results, tmp_path, capsys):
    cfg = _cfg(results, enabled=False)
    config_file = tmp_path / "config.yaml"
    dump_config(cfg, config_file)
    assert main(["refine", "-c", str(config_file), "-q"]) == 0
    assert not paths.refine_output(cfg, "dw4_r").exists()


def test_status_knows_the_refine_stage(results):
    from flowsci.stages.status import run_status
    cfg = _cfg(results)
    assert not run_status(cfg, "dw4_r").stage.endswith("refined")
    refine(cfg, "dw4_r", progress=False)
    assert run_status(cfg, "dw4_r").stage == "sampled+refined"
    off = _cfg(results, enabled=False)
    assert "refin" not in run_status(off, "dw4_r").stage


@pytest.mark.parametrize("run", list(RUNS))
def test_log_q_at_the_chains_state_matches_the_stored_log_q(results, run):
    """The global move compares the stored log q of proposals with a fresh solve at the
    current state: on stored samples the two agree to the solver's accuracy."""
    from flowsci.stages.refine import _log_q_fn
    from flowsci.stages.reweight import read_samples
    cfg = _cfg(results)
    flow = read_samples(paths.samples_file(cfg, run))
    fresh = _log_q_fn(cfg, run)(__import__("torch").as_tensor(flow["x"][:6], dtype=float))
    np.testing.assert_allclose(fresh.numpy(), flow["log_q"][:6], atol=2e-2)
