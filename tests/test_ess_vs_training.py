"""benchmarks/ess_vs_training.py on a tiny DW4 run: one row per stop, the pieces add up to one
ordinary training (the same weights as training straight through), a rerun skips what is done."""

import csv
import importlib.util
import shutil
from pathlib import Path

import torch

from flowsci import paths
from flowsci.config import dump_config, validate_config
from flowsci.model_file import load_model_file
from flowsci.stages.train import train

ROOT = Path(__file__).resolve().parents[1]


def _config(results: Path) -> dict:
    return validate_config({
        "results_dir": str(results), "device": "cpu",
        "systems": {"dw4": {"target": {"name": "dw4"}, "data": {
            "source": "generate", "generator": {"name": "mcmc", "params": {
                "n_samples": 120, "n_chains": 6, "burn_in": 30, "thin": 2, "step_size": 0.1}}}}},
        "runs": {"r": {"system": "dw4", "model": {"name": "egnn", "params": {"hidden": 8,
                                                                            "n_layers": 1}},
                       "flow": {"method": "rk4", "n_steps": 4},
                       "training": {"objective": {"name": "flow_matching"}, "steps": 12,
                                    "batch_size": 8, "val_every": 4, "val_samples": 8,
                                    "checkpoint_every": 4},
                       "sampling": {"n_samples": 16, "n_shards": 1, "batch_size": 8}}}})


def _script():
    spec = importlib.util.spec_from_file_location("ess_vs_training",
                                                  ROOT / "benchmarks" / "ess_vs_training.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_ess_curve_rows_resume_and_equal_one_straight_training(tmp_path):
    cfg = _config(tmp_path / "pieces")
    config_file = tmp_path / "config.yaml"
    dump_config(cfg, config_file)
    out = tmp_path / "curve.csv"
    script = _script()
    assert script.main([str(config_file), "--run", "r", "--stops", "4", "8",
                        "--n-samples", "16", "--out", str(out)]) == 0
    with open(out, newline="") as f:
        first = list(csv.DictReader(f))
    assert script.main([str(config_file), "--run", "r", "--stops", "4", "8", "20",
                        "--n-samples", "16", "--out", str(out)]) == 0
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [4, 8, 12]  # 20 > steps: ends at the last step
    assert rows[:2] == first  # the recorded stops are kept, not redone
    for r in rows:
        assert 0 < float(r["ess_pct"]) <= 100 and int(r["n_failed"]) == 0 and r["val_nll"]
    # the pieces are one ordinary training: the same final weights as training straight through
    straight = validate_config({**cfg, "results_dir": str(tmp_path / "straight")})
    data = paths.data_file(straight, "dw4")
    data.parent.mkdir(parents=True)
    shutil.copyfile(paths.data_file(cfg, "dw4"), data)
    train(straight, "r", progress=False)
    a = load_model_file(paths.model_file(cfg, "r")).weights(True)
    b = load_model_file(paths.model_file(straight, "r")).weights(True)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
