"""CI-size versions of the science presets (config/presets/*.yaml): each preset, shrunk to tiny
data, networks and step counts, runs every stage (the commands the workflow runs) on the CPU,
including its second training phase; Snakemake builds each preset's DAG (init_from included).
The real runs are benchmarks (benchmarks/run_preset.py), not tests."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from flowsci import paths
from flowsci.cli import main
from flowsci.config import load_config

ROOT = Path(__file__).resolve().parents[1]
PRESETS = sorted(p.stem for p in (ROOT / "config" / "presets").glob("*.yaml"))
SMALL_MODELS = {"egnn": {"hidden": 8, "n_layers": 1}, "pair_kernel": {"hidden": 8, "n_rbf": 6},
                "lattice_conv": {"n_fourier": 2}, "e3nn": {"n_layers": 1}}


def test_every_shipped_system_has_a_preset():
    assert set(PRESETS) == {"dw4", "lj13", "lj55", "ala2", "phi4_L8", "phi4_L16", "phi4_L32",
                            "phi4_L64"}


def shrink(config: dict, results: Path) -> dict:
    """The preset with tiny data, networks, step and sample counts (same components)."""
    cfg = copy.deepcopy(config)
    cfg["results_dir"] = str(results)
    cfg["device"] = "cpu"
    for spec in cfg["systems"].values():
        gen = spec["data"]["generator"]
        if gen["name"] == "openmm_md":
            gen["params"].update(n_samples=48, burn_in=20, thin=5)
        else:  # chains: short, so the mixing checks may drop a stuck one
            gen["params"].update(n_samples=48, n_chains=8, burn_in=300, thin=2,
                                 drop_stuck_chains=True)
        spec["data"]["splits"].update(train=2, val=1, test=1)
    for run in cfg["runs"].values():
        name = run["model"]["name"]
        run["model"]["params"] = {**run["model"].get("params", {}), **SMALL_MODELS.get(name, {})}
        run["flow"] = {"method": "dopri5", "rtol": 1e-3, "atol": 1e-3}
        run["training"].update(steps=2, batch_size=8, val_every=2, val_samples=4,
                               checkpoint_every=2, warmup_steps=0)
        if run["training"]["objective"]["name"] in ("reverse_kl", "forward_kl"):
            run["training"]["solver"] = {"method": "rk4", "n_steps": 2, "adjoint": False}
        run["sampling"] = {"n_samples": 8, "n_shards": 2, "batch_size": 4, "check_samples": 0,
                           **{k: v for k, v in run["sampling"].items() if k == "chirality"}}
        run["reweighting"] = {**run["reweighting"], "n_bootstrap": 10, "mh_steps": 0}
    return cfg


@pytest.mark.slow
@pytest.mark.parametrize("preset", PRESETS)
def test_preset_runs_end_to_end_at_ci_size(preset, tmp_path):
    if preset == "ala2":
        pytest.importorskip("openmm")
    config = load_config(ROOT / "config" / "presets" / f"{preset}.yaml")
    assert config["results_dir"] == f"results/presets/{preset}"  # own summary.csv
    small = shrink(config, tmp_path / "results")
    cfg_path = tmp_path / "config.yaml"
    cfg_path.write_text(yaml.safe_dump(small))
    for stage in ("preprocess", "train", "sample", "reweight", "report"):
        assert main([stage, "-c", str(cfg_path), "-q"]) == 0, f"{preset}: {stage}"
    cfg = load_config(cfg_path)
    for run, spec in cfg["runs"].items():
        metrics = json.loads(paths.metrics_file(cfg, run).read_text())
        assert metrics["n_requested"] == 8 and metrics["ess"] > 0, (run, metrics)
        if spec["sampling"].get("chirality"):
            assert 0 <= metrics["mirrored_fraction"] <= 1
        if spec.get("init_from"):  # the second phase started from the first phase's weights
            log = paths.train_log(cfg, run).read_text().splitlines()
            assert len(log) == 3  # header + 2 steps
            columns = {"reverse_kl": ",dropped,clipped", "forward_kl": ",clipped"}  # their own
            if spec["training"]["objective"]["name"] in columns:
                assert log[0].endswith(columns[spec["training"]["objective"]["name"]]), log[0]


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["lj13", "phi4_L8"])  # both have a second training phase
def test_preset_workflow_dag_builds(preset, tmp_path):
    for name in ("Snakefile", "workflow", "envs"):
        src = ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, tmp_path / name)
    (tmp_path / "config").mkdir()
    shutil.copy(ROOT / "config" / "presets" / f"{preset}.yaml", tmp_path / "config" / "p.yaml")
    r = subprocess.run(["snakemake", "-n", "--cores", "2", "--configfile", "config/p.yaml",
                        "--replace-workflow-config"], cwd=tmp_path, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    config = yaml.safe_load((tmp_path / "config" / "p.yaml").read_text())
    for run, spec in config["runs"].items():
        assert "model.pt" in r.stdout and run in r.stdout
        if spec.get("init_from"):  # trained after the run it starts from
            order = [line for line in r.stdout.splitlines() if "wildcards:" in line
                     and "run=" in line]
            first = next(i for i, line in enumerate(order) if f"run={spec['init_from']}" in line)
            second = next(i for i, line in enumerate(order) if f"run={run}" in line)
            assert first < second, order
