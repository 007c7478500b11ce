"""The Snakemake workflow: lint, dry run of the default config, and a tiny end-to-end run."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import h5py
import pytest
import yaml

from flowsci.data.hdf5 import validate_h5

ROOT = Path(__file__).resolve().parents[1]

TINY = {
    "results_dir": "results",
    "device": "cpu",
    "systems": {"dw4": {
        "target": {"name": "dw4"},
        "data": {"source": "generate", "generator": {"name": "mcmc", "params": {
            "n_samples": 400, "n_chains": 20, "burn_in": 200, "thin": 10, "step_size": 0.2}}}}},
    "runs": {"tiny": {
        "system": "dw4",
        "model": {"name": "egnn", "params": {"hidden": 8, "n_layers": 1}},
        "flow": {"method": "dopri5", "rtol": 1e-4, "atol": 1e-4},
        "training": {"objective": {"name": "likelihood", "params": {"divergence": "hutchinson"}},
                     "solver": {"method": "midpoint", "n_steps": 3}, "steps": 4,
                     "batch_size": 32, "val_every": 2, "val_samples": 16,
                     "checkpoint_every": 2},
        "sampling": {"n_samples": 200, "n_shards": 2, "batch_size": 100},
        "reweighting": {"n_bootstrap": 20},
        "refine": {"enabled": True, "n_chains": 4, "n_local": 2, "n_cycles": 10, "burn_in": 2,
                   "step_size": 0.05}}},
}


def _snakemake(*args, cwd=ROOT, timeout=900):
    return subprocess.run(["snakemake", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


def _workdir(tmp_path: Path, config: dict) -> Path:
    for name in ("Snakefile", "workflow", "envs"):
        src = ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, tmp_path / name)
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    return tmp_path


def test_lint_is_clean(tmp_path):
    wd = _workdir(tmp_path, TINY)
    r = _snakemake("--lint", cwd=wd)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Lints for" not in r.stdout + r.stderr


def test_dry_run_of_default_config(tmp_path):
    wd = _workdir(tmp_path, yaml.safe_load((ROOT / "config" / "config.yaml").read_text()))
    r = _snakemake("-n", "--cores", "2", cwd=wd)
    assert r.returncode == 0, r.stderr
    for rule in ("preprocess", "train", "sample_shard", "sample_gather", "reweight",
                 "report_run", "report_summary"):
        assert rule in r.stdout


def test_bad_config_stops_the_workflow_with_the_key(tmp_path):
    bad = json.loads(json.dumps(TINY))
    bad["runs"]["tiny"]["training"]["steps"] = 0
    r = _snakemake("-n", "--cores", "1", cwd=_workdir(tmp_path, bad))
    assert r.returncode != 0
    assert "runs.tiny.training.steps" in r.stdout + r.stderr


def test_tiny_workflow_end_to_end(tmp_path):
    wd = _workdir(tmp_path, TINY)
    r = _snakemake("--cores", "2", cwd=wd)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    res = wd / "results" / "dw4"
    assert validate_h5(res / "data.h5")["kind"] == "particles"
    run = res / "tiny"
    for shard in (0, 1):
        validate_h5(run / "samples" / f"shard-{shard}.h5")
    with h5py.File(run / "samples.h5") as f:
        assert f["x"].shape[1:] == (4, 2)
        assert f["x"].shape[0] + f.attrs["n_failed"] == 200
        assert f.attrs["model_sha256"] and json.loads(f.attrs["solver"])["method"] == "dopri5"
    metrics = json.loads((run / "metrics.json").read_text())
    assert 1.0 <= metrics["ess"] <= metrics["n_samples"]
    assert set(metrics["observables"]["mean_energy"]) >= {"data", "flow", "reweighted",
                                                          "reweighted_err"}
    for fig in ("energy", "weights", "training", "observables"):
        assert (run / "figures" / f"{fig}.png").stat().st_size > 1000
    log = (run / "train_log.csv").read_text().splitlines()
    assert log[0].startswith("step,loss,nll,nfe") and len(log) == 5
    assert (wd / "results" / "summary.csv").exists()
    for rule_log in ("train.log", "reweight.log", "sample-0.log"):
        assert (run / "logs" / rule_log).exists()
    # the stages' progress lines land in the rules' logs (no terminal under Snakemake)
    from flowsci.progress import parse_line
    for rule_log, total in (("train.log", 4), ("sample-0.log", 100), ("reweight.log", 3)):
        lines = [p for line in (run / "logs" / rule_log).read_text().splitlines()
                 if (p := parse_line(line))]
        done = [p["done"] for p in lines]
        assert len(lines) >= 2 and done == sorted(done) and done[-1] == total, rule_log
        assert lines[-1]["total"] == total and lines[-1]["state"] == "done"
    train_lines = [p for line in (run / "logs" / "train.log").read_text().splitlines()
                   if (p := parse_line(line))]
    assert {"loss", "val_nll"} <= set(train_lines[-1]["figures"])
    assert any(p["eta"] is not None and p["state"] == "running" for p in train_lines)
    status = subprocess.run(["flowsci", "status", "-c", "config/config.yaml"], cwd=wd,
                            capture_output=True, text=True, timeout=120)
    assert status.returncode == 0, status.stderr
    rows = {tuple(line.split()[:3]) for line in status.stdout.splitlines()[2:]}
    assert rows == {("dw4", "-", "preprocessed"), ("dw4", "tiny", "reported+refined")}, \
        status.stdout
    # the refine rule ran after sample: chains, metrics with the baseline, progress lines
    refined = json.loads((run / "refine" / "metrics.json").read_text())
    assert refined["method"] == "flow_mcmc" and refined["baseline"]["cost"]["log_q_solves"] == 0
    with h5py.File(run / "refine" / "chains.h5") as f:
        assert f["x"].shape[:2] == (10, 4)
    lines = [p for line in (run / "logs" / "refine.log").read_text().splitlines()
             if (p := parse_line(line))]
    assert lines and lines[-1]["state"] == "done"
    assert (run / "benchmarks" / "train.tsv").exists()
    r = _snakemake("--report", "report.html", cwd=wd)
    assert r.returncode == 0, r.stderr[-3000:]
    html = (wd / "report.html").read_text(errors="ignore")
    assert len(html) > 50_000 and "tiny" in html
    # the kind-specific captions come from the observable set
    from flowsci.analysis.observables import ParticleObservables
    assert ParticleObservables.captions["correlations"][:40] in html
    # everything is up to date: a second run does nothing
    r = _snakemake("--cores", "2", "-n", cwd=wd)
    assert "Nothing to be done" in r.stdout + r.stderr


def test_rule_paths_are_the_stages_paths(tmp_path):
    """The rules spell no stage path of their own: every output of the dry run is one of
    flowsci.paths' files for the config's systems and runs."""
    from flowsci import paths
    from flowsci.config import validate_config

    cfg = validate_config(yaml.safe_load((ROOT / "config" / "config.yaml").read_text()))
    expected = {str(paths.data_file(cfg, s)) for s in cfg["systems"]}
    for run, spec in cfg["runs"].items():
        expected |= {str(p) for p in (paths.model_file(cfg, run), paths.samples_file(cfg, run),
                                      paths.reweight_file(cfg, run), paths.metrics_file(cfg, run),
                                      *paths.table_files(cfg, run))}
        expected |= {str(paths.shard_file(cfg, run, i))
                     for i in range(spec["sampling"]["n_shards"])}
        expected |= {str(paths.figures_dir(cfg, run) / f"{f}.png") for f in
                     ("energy", "weights", "training", "observables", "correlations")}
    expected.add(str(paths.summary_file(cfg)))
    wd = _workdir(tmp_path, yaml.safe_load((ROOT / "config" / "config.yaml").read_text()))
    r = _snakemake("--summary", "--cores", "1", cwd=wd)
    assert r.returncode == 0, r.stderr
    outputs = {line.split("\t")[0] for line in r.stdout.splitlines()[1:] if line.strip()}
    stage_outputs = {o for o in outputs if "/logs/" not in o and "/benchmarks/" not in o}
    assert stage_outputs == expected


def test_train_launches_torchrun_when_its_gpu_resource_is_above_one(tmp_path):
    """gpu > 1 runs `torchrun --standalone --nproc_per_node N -m flowsci.cli -- train ...`. A
    stand-in torchrun on PATH records its arguments and, as torchrun does, drops the "--" that
    ends its own options and runs the module (one process, no GPU here)."""
    wd = _workdir(tmp_path, TINY)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "torchrun"
    fake.write_text('#!/bin/sh\necho "$@" > "$TORCHRUN_ARGS"\n'
                    'while [ "$1" != "-m" ]; do shift; done\nshift\nm="$1"\nshift\n'
                    '[ "$1" = "--" ] && shift\nexec python -m "$m" "$@"\n')
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}",
           "TORCHRUN_ARGS": str(tmp_path / "args.txt"), "OMP_NUM_THREADS": "1"}
    model = "results/dw4/tiny/model.pt"
    r = subprocess.run(["snakemake", model, "--cores", "2", "--set-resources", "train:gpu=2"],
                       cwd=wd, capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert (wd / model).stat().st_size > 1000
    args = (tmp_path / "args.txt").read_text().split()
    assert args[:6] == ["--standalone", "--nproc_per_node", "2", "-m", "flowsci.cli", "--"], args
    assert args[6:] == ["train", "--config", "results/.flowsci/config.yaml", "--quiet",
                        "--run", "tiny"], args


def test_refine_rule_runs_only_for_enabled_runs(tmp_path):
    """refine is off by default (no job); enabled, its rule (linted clean) writes the
    method's file and metrics.json after sample."""
    for sub in ("off", "on"):
        (tmp_path / sub).mkdir()
    off = json.loads(json.dumps(TINY))
    off["runs"]["tiny"]["refine"]["enabled"] = False
    r = _snakemake("-n", "--cores", "1", cwd=_workdir(tmp_path / "off", off))
    assert r.returncode == 0, r.stderr
    assert "rule refine_" not in r.stdout and "tiny/refine/" not in r.stdout
    on = json.loads(json.dumps(TINY))
    on["runs"]["tiny"]["refine"]["method"] = "resample_move"
    wd = _workdir(tmp_path / "on", on)
    r = _snakemake("-n", "--cores", "1", cwd=wd)
    assert r.returncode == 0, r.stderr
    assert "rule refine_tiny" in r.stdout
    assert "results/dw4/tiny/refine/particles.h5" in r.stdout
    assert "results/dw4/tiny/refine/metrics.json" in r.stdout
    r = _snakemake("--lint", cwd=wd)
    assert r.returncode == 0 and "Lints for" not in r.stdout + r.stderr, r.stdout + r.stderr
