"""Progress lines in the stages' logs (flowsci.progress) and `flowsci status`."""

from __future__ import annotations

import io
import logging
import sys
import time
from pathlib import Path

import pytest

from flowsci import cli, paths
from flowsci.config import validate_config
from flowsci.progress import (ENV_INTERVAL, Progress, format_duration, format_line,
                              interval_from_env, parse_duration, parse_line)
from flowsci.stages import preprocess as pp
from flowsci.stages import sample as sample_stage
from flowsci.stages import status as st
from flowsci.stages import train as train_stage


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def _lines(caplog) -> list[dict]:
    return [p for r in caplog.records if (p := parse_line(r.getMessage())) is not None]


def test_lines_every_interval_and_every_tenth_of_the_work(caplog):
    clock = Clock()
    caplog.set_level(logging.INFO, logger="flowsci.progress")
    bar = Progress(1000, "train r", unit="step", bar=False, interval=30.0, clock=clock,
                   heartbeat=False)
    assert bar.writes_lines
    for _ in range(1000):  # 1 step/s: a line every 30 s, and at 100, 200, ... steps
        clock.t += 1.0
        bar.update(1, loss=0.5)
    bar.close()
    lines = _lines(caplog)
    assert lines[0]["done"] == 0 and lines[0]["state"] == "started"
    assert lines[-1]["done"] == 1000 and lines[-1]["state"] == "done"
    running = lines[1:-1]
    done = [p["done"] for p in running]
    assert done == sorted(done) and all(b - a <= 30 for a, b in zip([0] + done, done))
    assert {100, 200, 500, 900} <= set(done)
    assert len(running) == 39  # per 100 steps: at 30, 60, 90 s and the 10 % mark; 1000: close
    mid = next(p for p in running if p["done"] == 500)
    assert mid["total"] == 1000 and mid["elapsed"] == 500 and mid["eta"] == 500
    assert mid["rate"] == "1 step/s" and mid["figures"] == {"loss": "0.5"}


def test_a_slow_loop_writes_a_line_per_interval(caplog):
    clock = Clock()
    caplog.set_level(logging.INFO, logger="flowsci.progress")
    bar = Progress(None, "read x.xyz", unit="frame", bar=False, interval=10.0, clock=clock,
                   heartbeat=False)
    for _ in range(6):  # unknown total: time lines only, no ETA
        clock.t += 4.0
        bar.update(100)
    bar.close()
    lines = _lines(caplog)
    assert [p["done"] for p in lines] == [0, 300, 600, 600]
    assert lines[1]["eta"] is None and lines[1]["total"] is None


def test_a_unit_longer_than_the_interval_still_gets_a_line_per_interval(caplog):
    """The heartbeat repeats the line while one unit (a sampling batch, a validation) runs,
    and stops when the loop ends, also by an error."""
    caplog.set_level(logging.INFO, logger="flowsci.progress")

    def wait_for(n_lines):  # polls; the 30 s bound only guards against a hang
        for _ in range(3000):
            if len(_lines(caplog)) >= n_lines:
                return
            time.sleep(0.01)
        raise AssertionError(f"fewer than {n_lines} progress lines")

    with Progress(4, "sample r shard 0", unit="sample", bar=False, interval=0.02) as bar:
        bar.update(1, failed=0)
        wait_for(4)  # started, 1 (25 % mark), then heartbeats while "the next batch runs"
        beats = _lines(caplog)[2:]
        assert all(p["done"] == 1 and p["eta"] is not None for p in beats)
        bar.update(3)
    assert not bar._thread.is_alive()
    n = len(_lines(caplog))
    assert _lines(caplog)[-1]["state"] == "done"
    with pytest.raises(RuntimeError):
        with Progress(4, "train r", bar=False, interval=0.02) as failing:
            raise RuntimeError("solver failed")
    assert not failing._thread.is_alive()
    after = len(_lines(caplog))
    assert after == n + 1  # its "started" line, no heartbeat after the failure
    time.sleep(0.1)
    assert len(_lines(caplog)) == after
    dropped = Progress(4, "dropped", bar=False, interval=0.01)  # never closed: no thread left
    thread = dropped._thread
    del dropped
    thread.join(timeout=30)
    assert not thread.is_alive()


def test_format_and_parse_are_inverse():
    text = format_line("sample r shard 0", 40, 100, "sample", 0.25, 160.0, 240.0,
                       {"failed": 2})
    assert "40/100 samples (40%) | 4 s/sample |" in text
    p = parse_line(f"2024-01-01 12:00:00,000 flowsci.progress INFO: {text}")
    assert p == {"desc": "sample r shard 0", "done": 40, "total": 100, "unit": "sample",
                 "rate": "4 s/sample", "elapsed": 160.0, "eta": 240.0, "state": "running",
                 "figures": {"failed": "2"}}
    assert parse_line("flowsci.stages.train INFO: training r on s") is None
    for s in (0, 59, 61, 3599, 7322):
        assert format_duration(s) in ("0s", "59s", "1m01s", "59m59s", "2h02m")
    assert parse_duration("1m01s") == 61 and parse_duration("?") is None


def test_a_terminal_gets_a_bar_and_no_lines(monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="flowsci.progress")
    tty = io.StringIO()
    tty.isatty = lambda: True
    monkeypatch.setattr(sys, "stderr", tty)
    with Progress(10, "x", bar=True, interval=0) as bar:
        bar.update(5, loss=1.0)
        assert not bar.writes_lines
    assert not _lines(caplog)
    with Progress(10, "x", bar=False, interval=0) as bar:  # --quiet on a terminal: lines
        bar.update(5)
    assert len(_lines(caplog)) == 3


def test_interval_from_environment_and_cli(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv(ENV_INTERVAL, "2.5")
    assert interval_from_env() == 2.5
    with Progress(3, "x", bar=False) as bar:
        assert bar.interval == 2.5
    monkeypatch.setenv(ENV_INTERVAL, "soon")
    with pytest.raises(ValueError, match=ENV_INTERVAL):
        interval_from_env()
    assert cli.main(["status", "-c", str(tmp_path / "none.yaml")]) == 2
    assert ENV_INTERVAL in capsys.readouterr().err
    monkeypatch.delenv(ENV_INTERVAL)
    assert cli.main(["train", "-c", "x.yaml", "--progress-interval", "-1"]) == 2
    assert "--progress-interval" in capsys.readouterr().err


# --- stages and status on a tiny results tree -----------------------------------------

def _config(root: Path) -> dict:
    run = {"system": "dw4", "model": {"name": "egnn", "params": {"hidden": 8, "n_layers": 1}},
           "flow": {"method": "rk4", "n_steps": 4},
           "training": {"objective": {"name": "flow_matching"}, "steps": 6, "batch_size": 16,
                        "val_every": 3, "val_samples": 8, "checkpoint_every": 2},
           "sampling": {"n_samples": 40, "n_shards": 2, "batch_size": 5}}
    return validate_config({
        "results_dir": str(root / "results"), "device": "cpu",
        "systems": {"dw4": {"target": {"name": "dw4"}, "data": {
            "source": "generate", "generator": {"name": "mcmc", "params": {
                "n_samples": 200, "n_chains": 10, "burn_in": 40, "thin": 4}}}},
                    "lj13": {"target": {"name": "lj13"}, "data": {
                        "source": "generate", "generator": {"name": "mcmc"}}}},
        "runs": {"done": run, "half": run, "sampling": run,
                 "untouched": {**run, "system": "lj13"}}})


class RuleLog:
    """What a Snakemake rule does with `> {log} 2>&1`: the stage's log records go to a file."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.handler = logging.FileHandler(path, mode="w")
        self.handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s: "
                                                    "%(message)s"))
        self.path = path

    def __enter__(self):
        root = logging.getLogger()
        self.level = root.level
        root.setLevel(logging.INFO)
        root.addHandler(self.handler)
        return self

    def __exit__(self, *exc):
        root = logging.getLogger()
        root.removeHandler(self.handler)
        root.setLevel(self.level)
        self.handler.close()

    def progress(self) -> list[dict]:
        return [p for line in self.path.read_text().splitlines()
                if (p := parse_line(line)) is not None]


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """A results tree at every stage: run 'done' trained and sampled, 'half' stopped after 4 of
    6 training steps, 'sampling' with 1 of 2 shards, 'untouched' on a system never made.
    Progress lines every update (interval 0); no terminal (progress bars off)."""
    mp = pytest.MonkeyPatch()
    mp.setenv(ENV_INTERVAL, "0")
    cfg = _config(tmp_path_factory.mktemp("status"))
    logs = {}
    try:
        with RuleLog(paths.log_file(cfg, "preprocess", system="dw4")) as logs["preprocess"]:
            pp.preprocess(cfg, "dw4", progress=False)
        for run in ("done", "half", "sampling"):
            with RuleLog(paths.log_file(cfg, "train", run)) as logs[f"train {run}"]:
                train_stage.train(cfg, run, progress=False,
                                  stop_after=4 if run == "half" else None)
        for run, shards in (("done", (0, 1)), ("sampling", (0,))):
            for i in shards:
                with RuleLog(paths.log_file(cfg, "sample", run, shard=i)) as logs[f"{run} {i}"]:
                    sample_stage.sample(cfg, run, shard=i, progress=False)
        sample_stage.gather(cfg, "done")
        # shard 1 of 'sampling' is running: its log holds a line of a shard half-way
        log1 = paths.log_file(cfg, "sample", "sampling", shard=1)
        log1.write_text("2024-01-01 00:00:00,000 flowsci.progress INFO: " + format_line(
            "sample sampling shard 1", 10, 20, "sample", 0.5, 20.0, 20.0, {"failed": 0}) + "\n")
    finally:
        mp.undo()
    return cfg, logs


def _increasing(lines: list[dict]) -> bool:
    done = [p["done"] for p in lines]
    return done == sorted(done) and len(set(done)) >= 2


def test_train_writes_progress_lines_with_loss_val_nll_and_eta(tree):
    cfg, logs = tree
    lines = logs["train done"].progress()
    assert len(lines) >= 3 and _increasing(lines)
    assert lines[0]["desc"] == "train done" and lines[0]["total"] == 6
    mid = [p for p in lines if p["state"] == "running"]
    assert mid and all(p["eta"] is not None for p in mid)
    assert {"loss", "val_nll"} <= set(mid[-1]["figures"])
    assert float(lines[-1]["figures"]["val_nll"]) == pytest.approx(
        float(_log_rows(paths.train_log(cfg, "done"))[5]["val_nll"]), rel=1e-3)
    assert lines[-1]["done"] == 6 and lines[-1]["state"] == "done"
    half = logs["train half"].progress()
    assert half[-1]["done"] == 4 and half[-1]["state"] == "running" and half[-1]["eta"] is not None


def test_sample_and_generate_write_progress_lines(tree):
    _, logs = tree
    lines = logs["done 0"].progress()  # 20 samples in batches of 5
    assert [p["done"] for p in lines] == [0, 5, 10, 15, 20] and _increasing(lines)
    assert all(p["figures"]["failed"] == "0" for p in lines)
    assert all(p["eta"] is not None for p in lines[1:])
    gen = logs["preprocess"].progress()
    assert len(gen) >= 3 and _increasing(gen) and gen[-1]["done"] == gen[-1]["total"] == 120
    assert gen[1]["figures"]["phase"] == "burn-in" and "acceptance" in gen[-1]["figures"]


def test_status_reports_the_stage_of_every_system_and_run(tree, capsys):
    cfg, _ = tree
    rows = {(r.system, r.run): r for r in st.status(cfg)}
    assert rows["dw4", None].stage == "preprocessed" and rows["lj13", None].stage == "none"
    assert rows["dw4", "done"].stage == "sampled"
    half = rows["dw4", "half"]
    assert half.stage == "training step 4 of 6"
    assert half.progress.startswith("4/6 steps (66%)") and half.eta not in ("", "-", "?")
    assert half.log == str(paths.log_file(cfg, "train", "half"))
    sampling = rows["dw4", "sampling"]
    assert sampling.stage == "sampling 1 of 2 shards"
    assert sampling.progress.startswith("10/20 samples") and sampling.eta == "20s"
    assert rows["lj13", "untouched"].stage == "none"
    # the same table from the command line
    import yaml

    cfg_file = Path(cfg["results_dir"]).parent / "config.yaml"
    cfg_file.write_text(yaml.safe_dump(cfg))
    assert cli.main(["status", "-c", str(cfg_file)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["system", "run", "stage", "progress", "ETA", "log"]
    assert any("training step 4 of 6" in line and "half" in line for line in out)


def test_status_follows_the_later_stages_and_marks_failures(tree, tmp_path):
    cfg, _ = tree
    import shutil

    cfg = {**cfg, "results_dir": str(tmp_path / "results")}
    shutil.copytree(tree[0]["results_dir"], cfg["results_dir"])
    run_dir = paths.run_dir(cfg, "done")
    paths.reweight_file(cfg, "done").write_bytes(b"")
    paths.metrics_file(cfg, "done").write_text("{}")
    assert st.run_status(cfg, "done").stage == "reweighted"
    for p in paths.table_files(cfg, "done"):
        p.write_text("")
    assert st.run_status(cfg, "done").stage == "reported"
    # a training that stopped with an error after its last progress line
    log = paths.log_file(cfg, "train", "half")
    log.write_text(log.read_text() + "flowsci train: error: out of memory\n")
    half = st.run_status(cfg, "half")
    assert "FAILED" in half.progress and half.eta == "-"
    assert run_dir.is_dir()


def test_status_of_a_system_being_generated(tmp_path):
    cfg = _config(tmp_path)
    log = paths.log_file(cfg, "preprocess", system="lj13")
    log.parent.mkdir(parents=True)
    log.write_text("2024-01-01 00:00:00,000 flowsci.progress INFO: " + format_line(
        "mala lj13", 300, 3000, "step", 10.0, 30.0, 270.0, {"phase": "burn-in"}) + "\n")
    row = st.system_status(cfg, "lj13")
    assert (row.stage, row.eta) == ("preprocessing", "4m30s")
    assert row.progress.startswith("300/3000 steps (10%), 10 step/s, phase burn-in")
    assert st.run_status(cfg, "untouched").stage == "none"


def _log_rows(path) -> list[dict]:
    import csv

    with open(path, newline="") as f:
        return list(csv.DictReader(f))
