"""Training loop: exact resume after interruption, logs, EMA, and a likelihood that improves."""

import csv

import torch

from flowsci.training import TrainSettings, train_flow
from flowsci.training.checkpoint import latest_checkpoint

from _tiny_training import tiny_dw4


def _setup():
    return tiny_dw4()


SETTINGS = dict(steps=6, batch_size=16, lr=1e-2, val_every=3, val_samples=8,
                checkpoint_every=2, ema_decay=0.9, seed=3)


def test_resume_gives_identical_parameters(tmp_path):
    flow_a, obj, x = _setup()
    train_flow(flow_a, obj, x, TrainSettings(**SETTINGS), val_x=x[:8], out_dir=tmp_path / "a",
               progress=False)
    flow_b, obj, _ = _setup()
    res = train_flow(flow_b, obj, x, TrainSettings(**SETTINGS), val_x=x[:8],
                     out_dir=tmp_path / "b", progress=False, stop_after=3)
    assert not res["finished"]
    flow_c, obj, _ = _setup()  # a fresh process would rebuild everything from the config
    res = train_flow(flow_c, obj, x, TrainSettings(**SETTINGS), val_x=x[:8],
                     out_dir=tmp_path / "b", progress=False)
    assert res["finished"] and res["step"] == 6
    for (k, pa), pc in zip(flow_a.state_dict().items(), flow_c.state_dict().values()):
        torch.testing.assert_close(pa, pc, rtol=0, atol=0, msg=k)
    with open(tmp_path / "b" / "train_log.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == list(range(1, 7))
    with open(tmp_path / "a" / "train_log.csv") as f:
        rows_a = list(csv.DictReader(f))
    assert [r["loss"] for r in rows] == [r["loss"] for r in rows_a]
    assert rows[2]["val_nll"] != "" and rows[1]["val_nll"] == ""
    assert latest_checkpoint(tmp_path / "b" / "checkpoints").name == "ckpt-6.pt"


def test_ema_and_training_lower_the_loss():
    flow, obj, x = _setup()
    before = -flow.log_prob(x).mean().item()
    res = train_flow(flow, obj, x, TrainSettings(**{**SETTINGS, "steps": 30, "ema_decay": 0.5}),
                     progress=False)
    after = -flow.log_prob(x).mean().item()
    assert after < before - 0.5
    assert set(res["ema"]) <= set(flow.state_dict())


def test_ema_warmup_tracks_short_runs():
    from torch import nn

    from flowsci.training.ema import EMA

    m = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        m.weight.fill_(0.0)
    ema = EMA(m, decay=0.999)
    with torch.no_grad():
        m.weight.fill_(1.0)
    for _ in range(50):
        ema.update(m)
    # without warm-up the average would still be 1 - 0.999^50 = 0.049
    assert ema.weights()["weight"].item() > 0.9
    state = ema.state_dict()
    ema2 = EMA(m, decay=0.999)
    ema2.load_state_dict(state)
    assert ema2.updates == 50


def test_checkpoint_of_other_settings_is_refused(tmp_path):
    import pytest

    from flowsci.errors import DataError

    flow, obj, x = _setup()
    train_flow(flow, obj, x, TrainSettings(**SETTINGS), out_dir=tmp_path, progress=False,
               stop_after=2, fingerprint="data-A")
    flow, obj, _ = _setup()
    with pytest.raises(DataError, match="other data or training settings"):
        train_flow(flow, obj, x, TrainSettings(**SETTINGS), out_dir=tmp_path, progress=False,
                   fingerprint="data-B")
    res = train_flow(flow, obj, x, TrainSettings(**SETTINGS), out_dir=tmp_path,
                     progress=False, fingerprint="data-A")
    assert res["finished"]


def test_empty_validation_split_is_skipped():
    import math

    from flowsci.training.loop import validation_nll

    flow, obj, x = _setup()
    res = train_flow(flow, obj, x, TrainSettings(**{**SETTINGS, "steps": 3}),
                     val_x=x[:0], progress=False)
    assert res["finished"]
    assert math.isnan(validation_nll(flow, x[:0]))
