"""Training failures (issue 12, item 3): non-finite steps are skipped, never checkpointed,
rolled back with a lower learning rate and finally reported; non-finite checkpoints are
refused; a dead network (zero gradients) is reported. Real `train_flow` on a tiny DW4 CNF."""

from __future__ import annotations

import logging
import math

import pytest
import torch

from flowsci.errors import DataError, FlowsciError
from flowsci.training import TrainSettings, train_flow
from flowsci.training import loop as loop_module
from flowsci.training.checkpoint import first_non_finite, latest_checkpoint, save_checkpoint
from flowsci.training.guard import GuardSettings, NonFiniteError, TrainingDivergedError

from _tiny_training import tiny_dw4


SETTINGS = dict(steps=8, batch_size=8, lr=1e-2, val_every=100, checkpoint_every=2,
                ema_decay=0.9, seed=3, lr_schedule="constant")


def _setup():
    return tiny_dw4("euler", 2, "exact", 32)


class Poisoned:
    """Wraps an objective: on the chosen calls (1-based) the loss stays finite but its gradient
    is NaN (d sqrt(z)/dz = inf at z = 0, times dz/dtheta = 0)."""

    needs_vector_field = False

    def __init__(self, inner, bad):
        self.inner, self.bad, self.calls = inner, bad, 0

    def __call__(self, flow, x):
        self.calls += 1
        loss, stats = self.inner(flow, x)
        if self.bad(self.calls):
            p = next(flow.parameters())
            loss = loss + torch.sqrt((p * 0).sum())
        return loss, stats


class Dead:
    """An objective whose gradient is exactly 0 (as for a network killed by lr = 10)."""

    needs_vector_field = False

    def __init__(self, inner):
        self.inner = inner

    def __call__(self, flow, x):
        loss, stats = self.inner(flow, x)
        return loss * 0.0, stats


@pytest.fixture
def checked_writes(monkeypatch):
    """Every checkpoint the loop writes, re-read from disk and checked finite at write time."""
    written = []
    write = loop_module.write_state

    def checking(ckpt_dir, state, keep=2):
        path = write(ckpt_dir, state, keep)
        on_disk = torch.load(path, weights_only=True)
        assert first_non_finite(on_disk) is None, path
        written.append((path.name, on_disk["guard"]))
        return path

    monkeypatch.setattr(loop_module, "write_state", checking)
    return written


def test_nan_gradient_with_finite_loss_is_skipped(tmp_path, checked_writes, caplog):
    flow, obj, x = _setup()
    poisoned = Poisoned(obj, lambda call: call in (2, 3, 7))
    with caplog.at_level(logging.WARNING):
        res = train_flow(flow, poisoned, x, TrainSettings(**SETTINGS), out_dir=tmp_path,
                         progress=False, desc="train r")
    assert res["finished"] and res["step"] == 8
    assert res["skipped_steps"] == 3 and res["rollbacks"] == 0 and poisoned.calls == 11
    assert caplog.text.count("skipped: non-finite gradient norm") == 3
    assert "train r: step 2 skipped" in caplog.text
    assert [name for name, _ in checked_writes] == [f"ckpt-{s}.pt" for s in (2, 4, 6, 8)]
    assert all(torch.isfinite(p).all() for p in flow.parameters())
    assert all(torch.isfinite(v).all() for v in res["ema"].values())
    rows = (tmp_path / "train_log.csv").read_text().splitlines()[1:]
    assert [int(r.split(",")[0]) for r in rows] == list(range(1, 9))
    assert all(math.isfinite(float(r.split(",")[4])) for r in rows)  # grad_norm column


def test_persistent_nan_rolls_back_then_stops_with_a_clear_error(tmp_path, checked_writes,
                                                                 caplog):
    flow, obj, x = _setup()
    guard = GuardSettings(max_bad_steps=3, max_rollbacks=2)
    poisoned = Poisoned(obj, lambda call: call >= 5)
    with caplog.at_level(logging.WARNING), pytest.raises(TrainingDivergedError) as err:
        train_flow(flow, poisoned, x, TrainSettings(**{**SETTINGS, "steps": 20}),
                   out_dir=tmp_path, progress=False, desc="train r", guard=guard)
    assert isinstance(err.value, FloatingPointError) and isinstance(err.value, FlowsciError)
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith("train r: training diverged at step 5:") and "lower training.lr" in msg
    assert poisoned.calls == 4 + 3 * 3  # 4 good steps, then 3 bad ones per attempt
    assert "rolled back to step 4 with the learning rate x0.5 (lr now 0.005); rollback 1 of 2" \
        in caplog.text
    assert "x0.25 (lr now 0.0025); rollback 2 of 2" in caplog.text
    # the checkpoint on disk is the finite one of step 4, with the lowered learning rate
    ckpt = latest_checkpoint(tmp_path / "checkpoints")
    assert ckpt.name == "ckpt-4.pt"
    state = torch.load(ckpt, weights_only=True)
    assert first_non_finite(state) is None
    assert state["guard"] == {"lr_scale": 0.25, "rollbacks": 2}
    assert state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.0025)
    rows = (tmp_path / "train_log.csv").read_text().splitlines()[1:]
    assert [int(r.split(",")[0]) for r in rows] == [1, 2, 3, 4]
    # ... and resumable: a rerun (here with the problem gone) continues at the lower rate
    flow2, obj2, _ = _setup()
    res = train_flow(flow2, obj2, x, TrainSettings(**{**SETTINGS, "steps": 6}),
                     out_dir=tmp_path, progress=False, guard=guard)
    assert res["finished"] and res["step"] == 6 and res["lr_scale"] == 0.25
    last = (tmp_path / "train_log.csv").read_text().splitlines()[-1].split(",")
    assert float(last[5]) == pytest.approx(0.0025)  # lr column


def test_non_finite_checkpoints_are_neither_written_nor_resumed(tmp_path):
    flow, obj, x = _setup()
    train_flow(flow, obj, x, TrainSettings(**SETTINGS), out_dir=tmp_path, progress=False,
               stop_after=2)
    ckpt = tmp_path / "checkpoints" / "ckpt-2.pt"
    state = torch.load(ckpt, weights_only=True)
    key = next(iter(state["model"]))
    state["model"][key] = torch.full_like(state["model"][key], float("nan"))
    torch.save(state, ckpt)
    flow2, obj2, _ = _setup()
    with pytest.raises(DataError, match=rf"{ckpt}: checkpoint holds non-finite weights "
                                        rf"\(model\.{key}\)"):
        train_flow(flow2, obj2, x, TrainSettings(**SETTINGS), out_dir=tmp_path, progress=False)
    # writing one is refused too, and nothing is written
    with torch.no_grad():
        next(flow2.parameters()).fill_(float("inf"))
    opt = torch.optim.AdamW(flow2.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    from flowsci.training.ema import EMA

    with pytest.raises(NonFiniteError, match="refusing to write a checkpoint with non-finite"):
        save_checkpoint(tmp_path / "other", 7, 0.0, flow2, opt, sched, EMA(flow2, 0.9),
                        torch.Generator())
    assert not (tmp_path / "other" / "ckpt-7.pt").exists()


def test_dead_network_is_reported_once(caplog):
    flow, obj, x = _setup()
    with caplog.at_level(logging.WARNING):
        res = train_flow(flow, Dead(obj), x, TrainSettings(**SETTINGS), progress=False,
                         desc="train r", guard=GuardSettings(dead_steps=5))
    assert res["finished"]
    warning = "train r: gradient norm has been 0 for 5 steps (step 5): the network may be dead"
    assert caplog.text.count("gradient norm has been 0") == 1 and warning in caplog.text
    assert res["warnings"] == [warning + "; lower training.lr"]
    # a run shorter than dead_steps is judged on all its steps; a live network is not reported
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        res = train_flow(flow, Dead(obj), x, TrainSettings(**{**SETTINGS, "steps": 3}),
                         progress=False)
        assert "gradient norm has been 0 for 3 steps" in caplog.text
        caplog.clear()
        res = train_flow(flow, obj, x, TrainSettings(**{**SETTINGS, "steps": 3}),
                         progress=False)
    assert res["warnings"] == [] and "gradient norm" not in caplog.text
