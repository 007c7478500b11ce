"""training.early_stopping: stops on a validation metric, keeps the best weights, resumes
exactly, and the train stage treats a stopped run as finished."""

from __future__ import annotations

import math

import pytest
import torch

from _tiny_training import tiny_dw4
from flowsci.config import ConfigError, validate_config
from flowsci.systems import build_target
from flowsci.training import OBJECTIVES
from flowsci.training.early_stopping import EarlyStopping, validation_loss
from flowsci.training.loop import TrainSettings, train_flow


def test_patience_min_delta_and_best_weights():
    stop = EarlyStopping(patience=2, min_delta=0.1)
    w = lambda v: {"a": torch.tensor([v])}  # noqa: E731
    stop.observe(1, 5.0, w(1.0))  # first: always an improvement
    stop.observe(2, 4.95, w(2.0))  # not by more than min_delta
    assert (stop.best, stop.best_step, stop.bad, stop.should_stop) == (5.0, 1, 1, False)
    stop.observe(3, 4.8, w(3.0))  # improves: count reset
    assert (stop.best_step, stop.bad) == (3, 0) and stop.best_weights["a"].item() == 3.0
    stop.observe(4, math.nan, w(4.0))  # a NaN validation never counts as better
    stop.observe(5, 4.79, w(5.0))
    assert stop.should_stop and stop.best_weights["a"].item() == 3.0
    again = EarlyStopping(patience=2, min_delta=0.1)
    again.load(stop.state())
    assert (again.best, again.best_step, again.bad) == (stop.best, 3, 2) and again.should_stop
    for bad in ({"patience": 0}, {"patience": 1, "min_delta": -1.0},
                {"patience": 1, "min_delta": math.nan}, {"patience": 1, "metric": "loss"}):
        with pytest.raises(ValueError, match="early_stopping"):
            EarlyStopping(**bad)


def test_schema_validates_the_section(tmp_path):
    from test_systems_end_to_end import _config

    base = _config(tmp_path, "phi4_conv_otfm")
    training = base["runs"]["phi4_conv_otfm"]["training"]
    training["early_stopping"] = {"patience": 3}
    cfg = validate_config(base)
    assert cfg["runs"]["phi4_conv_otfm"]["training"]["early_stopping"] == {
        "patience": 3, "metric": "val_nll", "min_delta": 0.0}
    for bad in ({"patience": 0}, {"metric": "val_nll"}, {"patience": 2, "metric": "nll"},
                {"patience": 2, "delta": 1.0}):
        training["early_stopping"] = bad
        with pytest.raises(ConfigError, match="early_stopping"):
            validate_config(base)


def _fm_setup():
    flow, _, x = tiny_dw4(n=64)
    obj = OBJECTIVES.build("flow_matching", {}, target=build_target({"name": "dw4"}))
    return flow, obj, x


def _settings(**kw) -> TrainSettings:
    base = dict(steps=100, batch_size=16, lr=1e-3, val_every=2, val_samples=16,
                checkpoint_every=2, ema_decay=0.9, lr_schedule="constant")
    return TrainSettings(**{**base, **kw})


def test_training_stops_and_returns_the_best_weights(tmp_path):
    # min_delta so large that only the first validation improves: stop after 2 more
    stopping = {"metric": "val_loss", "patience": 2, "min_delta": 1e9}
    flow, obj, x = _fm_setup()
    out = train_flow(flow, obj, x, _settings(early_stopping=stopping), val_x=x,
                     out_dir=tmp_path / "a", progress=False)
    assert out["finished"] and out["stopped_early"] and out["step"] == 6 and out["best_step"] == 2
    # the kept weights are the EMA at step 2: a plain 2-step run gives the same
    ref_flow, _, _ = _fm_setup()
    ref = train_flow(ref_flow, obj, x, _settings(steps=2), val_x=x, progress=False)
    for k, v in ref["ema"].items():
        assert torch.equal(out["ema"][k], v), k
    log = (tmp_path / "a" / "train_log.csv").read_text().splitlines()
    assert "val_loss" in log[0].split(",") and len(log) == 1 + 6


def test_resumed_run_stops_where_an_uninterrupted_one_does(tmp_path):
    stopping = {"metric": "val_loss", "patience": 3, "min_delta": 1e-3}
    flow, obj, x = _fm_setup()
    whole = train_flow(flow, obj, x, _settings(steps=40, early_stopping=stopping), val_x=x,
                       out_dir=tmp_path / "whole", progress=False)
    flow, obj, x = _fm_setup()
    part = train_flow(flow, obj, x, _settings(steps=40, early_stopping=stopping), val_x=x,
                      out_dir=tmp_path / "parts", progress=False, stop_after=4)
    assert not part["finished"]
    flow, obj, x = _fm_setup()
    rest = train_flow(flow, obj, x, _settings(steps=40, early_stopping=stopping), val_x=x,
                      out_dir=tmp_path / "parts", progress=False)
    assert (rest["step"], rest["best_step"], rest["stopped_early"]) == (
        whole["step"], whole["best_step"], whole["stopped_early"])
    for k, v in whole["ema"].items():
        assert torch.equal(rest["ema"][k], v), k


def test_validation_loss_is_seeded_and_leaves_the_training_rng_alone():
    flow, obj, x = _fm_setup()
    torch.manual_seed(5)
    before = torch.get_rng_state()
    a, b = validation_loss(obj, flow, x), validation_loss(obj, flow, x)
    assert a == b and math.isfinite(a)
    assert torch.equal(torch.get_rng_state(), before)
    assert validation_loss(obj, flow, x, seed=1) != a
    assert math.isnan(validation_loss(obj, flow, x[:0]))


def test_train_stage_keeps_an_early_stopped_model(tmp_path, caplog):
    from flowsci.data.hdf5 import sha256_of
    from flowsci.model_file import load_model_file
    from flowsci.stages.preprocess import preprocess
    from flowsci.stages.train import train
    from test_systems_end_to_end import _config

    run = "phi4_conv_otfm"
    cfg = _config(tmp_path, run)
    cfg["runs"][run]["training"].update(
        steps=50, val_every=1, early_stopping={"metric": "val_loss", "patience": 1,
                                               "min_delta": 1e9})
    preprocess(cfg, "phi4", progress=False)
    with caplog.at_level("INFO", logger="flowsci.stages.train"):
        path = train(cfg, run, progress=False)
    model = load_model_file(path)
    assert model.stopped_early and model.step == 2
    assert "stopped early at step 2: best validation at step 1" in caplog.text
    sha = sha256_of(path)
    assert train(cfg, run, progress=False) == path and sha256_of(path) == sha


def test_a_rollback_forgets_the_validations_of_the_rolled_back_steps(tmp_path):
    """Steps 5-6 are validated, then three non-finite steps roll back to the checkpoint of step
    4: early stopping must count as if steps 5-6 had never run (as a clean run does)."""
    from flowsci.training.checkpoint import latest_checkpoint
    from flowsci.training.guard import GuardSettings
    from test_training_failures import Poisoned

    stopping = {"metric": "val_nll", "patience": 100, "min_delta": 1e9}
    settings = _settings(steps=8, val_every=1, checkpoint_every=4, early_stopping=stopping)
    counts = {}
    for name, bad in (("clean", lambda call: False), ("rolled", lambda call: 7 <= call <= 9)):
        flow, obj, x = tiny_dw4(n=64)
        out = train_flow(flow, Poisoned(obj, bad), x, settings, val_x=x[:8],
                         out_dir=tmp_path / name, progress=False,
                         guard=GuardSettings(max_bad_steps=3, max_rollbacks=2))
        assert out["step"] == 8 and out["rollbacks"] == (name == "rolled")
        state = torch.load(latest_checkpoint(tmp_path / name / "checkpoints"), weights_only=True)
        counts[name] = state["early_stopping"]["bad"]
    assert counts == {"clean": 7, "rolled": 7}  # 8 validations, the first the best
