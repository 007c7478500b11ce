"""Multi-process training (issue 13): `flowsci train` under torchrun with 2 gloo processes on
CPU gives the parameters of 1 process on the same global batch, and a run resumed with another
number of processes equals an uninterrupted one. Float64, tiny DW4 flows."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys

import pytest
import torch
import yaml

from flowsci import paths
from flowsci.config import load_config
from flowsci.errors import ConfigError
from flowsci.model_file import load_model_file
from flowsci.stages.preprocess import preprocess
from flowsci.stages.train import train
from flowsci.training.distributed import DistInfo, rank_slice

pytestmark = pytest.mark.skipif(shutil.which("torchrun") is None or
                                not torch.distributed.is_available(),
                                reason="needs torch.distributed and torchrun")

TRAINING = {"dtype": "float64", "steps": 6, "batch_size": 16, "lr": 1.0e-2,
            "val_every": 3, "val_samples": 8, "checkpoint_every": 2, "ema_decay": 0.9,
            "seed": 3, "solver": {"method": "midpoint", "n_steps": 3, "adjoint": True}}
MLE = {"name": "likelihood", "params": {"divergence": "exact"}}  # deterministic given x
FM = {"name": "flow_matching", "params": {"sigma": 0.01}}  # x0, t, noise drawn globally


def _run(objective: dict) -> dict:
    return {"system": "dw4", "model": {"name": "egnn", "params": {"hidden": 8, "n_layers": 1}},
            "flow": {"method": "rk4", "n_steps": 3},
            "training": {**TRAINING, "objective": objective},
            "sampling": {"n_samples": 8, "batch_size": 8}}


RUNS = {"mle_ref": MLE, "mle_ddp": MLE, "mle_1to2": MLE, "mle_2to1": MLE,
        "fm_ref": FM, "fm_ddp": FM}


@pytest.fixture(scope="module")
def config_file(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    cfg = {"results_dir": str(tmp / "results"), "device": "cpu",
           "systems": {"dw4": {"target": {"name": "dw4"}, "data": {
               "source": "generate", "generator": {"name": "mcmc", "params": {
                   "n_samples": 120, "n_chains": 12, "burn_in": 50, "thin": 2}}}}},
           "runs": {name: _run(obj) for name, obj in RUNS.items()}}
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    preprocess(load_config(path), "dw4", progress=False)
    return path


def _torchrun(config_file, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FLOWSCI_PROGRESS_INTERVAL": "1000"}
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    # "--": torchrun would take "--run" for an abbreviation of its own --run-path
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           "2", "-m", "flowsci.cli", "--", "train", "-q", "-c", str(config_file), *args]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def _weights(cfg: dict, run: str) -> tuple[dict, dict]:
    m = load_model_file(paths.model_file(cfg, run))
    return m.raw_state_dict, m.state_dict


def _assert_same(cfg: dict, run: str, ref: str, atol: float = 1e-10) -> None:
    (raw, ema), (raw_ref, ema_ref) = _weights(cfg, run), _weights(cfg, ref)
    assert raw.keys() == raw_ref.keys()
    for k in raw:
        assert raw[k].dtype == torch.float64
        torch.testing.assert_close(raw[k], raw_ref[k], rtol=0, atol=atol, msg=f"{run} {k}")
        torch.testing.assert_close(ema[k], ema_ref[k], rtol=0, atol=atol, msg=f"{run} EMA {k}")


def _log(cfg: dict, run: str) -> list[dict]:
    with open(paths.run_dir(cfg, run) / "train_log.csv") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow  # two torchrun launches: ~20 s each on 2 loaded cores, mostly imports
def test_two_processes_equal_one_and_resume_across_process_counts(config_file):
    cfg = load_config(config_file)
    torch.set_num_threads(1)
    for ref in ("mle_ref", "fm_ref"):
        assert train(cfg, ref, progress=False) is not None
    # 1 process stops at step 3; 2 processes finish it. Together with two fresh 2-process runs.
    assert train(cfg, "mle_1to2", progress=False, stop_after=3) is None
    out = _torchrun(config_file, "--run", "mle_ddp", "--run", "mle_1to2", "--run", "fm_ddp")
    assert out.stderr.count("training mle_ddp on dw4 (cpu, torch.float64, 2 processes)") == 1
    # 2 processes stop at step 3; 1 process finishes it.
    _torchrun(config_file, "--run", "mle_2to1", "--stop-after", "3")
    assert not paths.model_file(cfg, "mle_2to1").exists()
    assert sorted(p.name for p in (paths.run_dir(cfg, "mle_2to1") / "checkpoints").iterdir()) \
        == ["ckpt-2.pt", "ckpt-3.pt"]
    assert train(cfg, "mle_2to1", progress=False) is not None

    # the two processes together saw the same global batches: the same parameters
    for run, ref in [("mle_ddp", "mle_ref"), ("fm_ddp", "fm_ref"), ("mle_1to2", "mle_ref"),
                     ("mle_2to1", "mle_ref")]:
        _assert_same(cfg, run, ref)
        rows, rows_ref = _log(cfg, run), _log(cfg, ref)
        assert [int(r["step"]) for r in rows] == list(range(1, 7))
        for r, r_ref in zip(rows, rows_ref):  # rank-averaged loss = the global-batch loss
            assert float(r["loss"]) == pytest.approx(float(r_ref["loss"]), rel=1e-12)
        assert rows[-1]["val_nll"] != ""
    # sanity: the runs moved away from the initialisation (the comparison is not vacuous)
    first = _log(cfg, "mle_ref")
    assert float(first[-1]["loss"]) < float(first[0]["loss"])


def test_global_batch_must_divide_by_the_number_of_processes():
    assert rank_slice(16, DistInfo(1, 2, 1)) == slice(8, 16)
    assert rank_slice(16, DistInfo(0, 1, 0)) == slice(0, 16)
    with pytest.raises(ConfigError, match="batch_size = 15 must be divisible by the number of "
                                          r"processes \(2\)"):
        rank_slice(15, DistInfo(0, 2, 0))
