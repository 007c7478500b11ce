"""Each vector-field family and objective trains from the config on its systems, and each
system goes through sample -> reweight -> report (tiny sizes: this checks wiring, not quality)."""

import json

import pytest
import torch

from flowsci.config import validate_config
from flowsci.stages.preprocess import preprocess
from flowsci.stages.report import report
from flowsci.stages.reweight import reweight
from flowsci.stages.sample import gather, sample
from flowsci.stages.train import train

SYSTEMS = {
    "lj13": {"target": {"name": "lj13"},
             "data": {"source": "generate", "generator": {"name": "mcmc", "params": {
                 "n_samples": 120, "n_chains": 12, "burn_in": 50, "thin": 2,
                 "step_size": 0.02}}}},
    "phi4": {"target": {"name": "phi4", "params": {"shape": [4, 4], "m2": -4.0, "lam": 8.0}},
             "data": {"source": "generate", "generator": {"name": "hmc", "params": {
                 "n_samples": 120, "n_chains": 12, "burn_in": 20, "thin": 1}}}},
}

RUNS = {
    "lj13_egnn_fm": ("lj13", {"name": "egnn", "params": {"hidden": 8, "n_layers": 1}},
                     "equivariant_ot_flow_matching"),
    "lj13_e3nn_mle": ("lj13", {"name": "e3nn"}, "likelihood"),
    "phi4_conv_mle": ("phi4", {"name": "lattice_conv"}, "likelihood"),
    "phi4_conv_otfm": ("phi4", {"name": "lattice_conv"}, "ot_flow_matching"),
    "phi4_realnvp": ("phi4", {"name": "realnvp"}, "likelihood"),
    "lj13_pair_fkl": ("lj13", {"name": "pair_kernel"}, "forward_kl"),
    "phi4_realnvp_fkl": ("phi4", {"name": "realnvp"}, "forward_kl"),
}


def _config(tmp_path, run):
    system, model, objective = RUNS[run]
    return validate_config({
        "results_dir": str(tmp_path / "results"), "device": "cpu",
        "systems": {system: SYSTEMS[system]},
        "runs": {run: {"system": system, "model": model,
                       "flow": {"method": "rk4", "n_steps": 3},
                       "training": {"objective": {"name": objective},
                                    "solver": {"method": "euler", "n_steps": 2},
                                    "steps": 3, "batch_size": 8, "val_every": 3,
                                    "val_samples": 4, "checkpoint_every": 3},
                       "sampling": {"n_samples": 24, "batch_size": 12, "check_samples": 0},
                       "reweighting": {"n_bootstrap": 10, "mh_steps": 24}}}})


@pytest.mark.parametrize("run", list(RUNS))
def test_train_sample_reweight_report(tmp_path, run):
    cfg = _config(tmp_path, run)
    system = cfg["runs"][run]["system"]
    preprocess(cfg, system, progress=False)
    model = train(cfg, run, progress=False)
    assert model.exists()
    sample(cfg, run, shard=0, progress=False)
    gather(cfg, run)
    reweight(cfg, run)
    metrics = json.loads((model.parent / "metrics.json").read_text())
    assert metrics["n_samples"] + metrics["n_failed"] == 24
    assert 0.0 <= metrics["mh"]["acceptance"] <= 1.0
    outputs = report(cfg, runs=[run])
    assert all(p.exists() for p in outputs)


def test_train_stage_test_nll_uses_test_samples_and_keeps_checkpoints(tmp_path):
    """training.test_samples sets how many test configurations the stored test NLL averages;
    changing it (like steps or val_samples) does not invalidate the run's checkpoints."""
    from flowsci import paths
    from flowsci.model_file import load_model_file
    from flowsci.stages.sample import load_trained_flow
    from flowsci.stages.train import load_splits, training_fingerprint
    from flowsci.systems import build_target

    run = "phi4_conv_mle"
    cfg = _config(tmp_path, run)
    cfg["runs"][run]["training"]["test_samples"] = 5
    preprocess(cfg, "phi4", progress=False)
    before = training_fingerprint(cfg, run)
    model = load_model_file(train(cfg, run, progress=False))
    flow, _, _ = load_trained_flow(cfg, run, torch.device("cpu"), torch.float32)
    test = load_splits(cfg, "phi4", ("test",), build_target(SYSTEMS["phi4"]["target"]))["test"]
    assert len(test) > 5
    with torch.no_grad():
        expected = -flow.log_prob(test[:5].float()).mean().item()
        other = -flow.log_prob(test[:6].float()).mean().item()
    assert model.test_nll == pytest.approx(expected, rel=1e-5)
    assert model.test_nll != pytest.approx(other, rel=1e-5)
    cfg["runs"][run]["training"]["test_samples"] = 7
    assert training_fingerprint(cfg, run) == before
    assert paths.model_file(cfg, run).exists()


def test_a_finished_training_is_not_rewritten(tmp_path, caplog):
    """Training again with the same settings keeps model.pt byte for byte (its hash keys the
    run's samples and a second phase's checkpoints); more steps continue the training."""
    from flowsci.data.hdf5 import sha256_of
    from flowsci.model_file import load_model_file

    run = "phi4_conv_mle"
    cfg = _config(tmp_path, run)
    preprocess(cfg, "phi4", progress=False)
    path = train(cfg, run, progress=False)
    sha, mtime = sha256_of(path), path.stat().st_mtime_ns
    with caplog.at_level("INFO", logger="flowsci.stages.train"):
        assert train(cfg, run, progress=False) == path
    assert "already holds this training" in caplog.text
    assert (sha256_of(path), path.stat().st_mtime_ns) == (sha, mtime)
    cfg["runs"][run]["training"]["steps"] = 5
    train(cfg, run, progress=False)
    assert load_model_file(path).step == 5 and sha256_of(path) != sha
