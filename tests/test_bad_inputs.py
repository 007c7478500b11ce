"""The bad-input corpus (issue 12): every stage command, given a broken config, molecular or
lattice input, HDF5 file, checkpoint, model file or samples file, exits with status 2 and one
line `flowsci <stage>: error: ...` naming the file or key and the problem, and leaves every
existing output byte-identical (no stray temporaries either).

The corpus is generated: a tiny pipeline (DW4 with two shards, a phi^4 lattice, a molecular
extxyz input and a lattice .npy input) is run once; each case copies its results, breaks one
thing and runs one command in-process through `flowsci.cli.main`.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import h5py
import numpy as np
import pytest
import torch
import yaml

from flowsci.cli import main

SYSTEMS = {
    "dw4": {"target": {"name": "dw4"}, "data": {"source": "generate", "generator": {
        "name": "mcmc", "params": {"n_samples": 200, "n_chains": 10, "burn_in": 100, "thin": 5,
                                   "step_size": 0.2}}}},
    "phi": {"target": {"name": "phi4", "params": {"shape": [4, 4], "m2": -4.0, "lam": 5.0}},
            "data": {"source": "generate", "generator": {
                "name": "hmc", "params": {"n_samples": 64, "n_chains": 4, "burn_in": 50}}}},
    "mol": {"target": {"name": "lj", "params": {"n_particles": 3, "dim": 3}},
            "data": {"source": "file", "input": {
                "path": "INPUT/mol.extxyz", "units": {"length": "reduced", "energy": "reduced"}}}},
    "lat": {"target": {"name": "phi4", "params": {"shape": [4, 4], "m2": -4.0, "lam": 5.0}},
            "data": {"source": "file", "input": {"path": "INPUT/lat.npy"}}},
}
RUN = {"system": "dw4", "model": {"name": "egnn", "params": {"hidden": 8, "n_layers": 1}},
       "flow": {"method": "dopri5", "rtol": 1e-4, "atol": 1e-4},
       "training": {"objective": {"name": "likelihood", "params": {"divergence": "hutchinson"}},
                    "solver": {"method": "midpoint", "n_steps": 3}, "steps": 2,
                    "batch_size": 16, "val_every": 2, "val_samples": 8, "checkpoint_every": 2},
       "sampling": {"n_samples": 20, "n_shards": 2, "batch_size": 10, "check_samples": 0},
       "reweighting": {"n_bootstrap": 10, "mh_steps": 0}}


def _write_inputs(inp: Path) -> None:
    inp.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    frames = []
    for _ in range(12):
        pos = np.array([[0, 0, 0], [1.1, 0, 0], [0, 1.1, 0]]) + rng.normal(0, 0.05, (3, 3))
        frames.append("3\nProperties=species:S:1:pos:R:3 pbc=\"F F F\"\n"
                      + "".join(f"Ar {x} {y} {z}\n" for x, y, z in pos))
    (inp / "mol.extxyz").write_text("".join(frames))
    np.save(inp / "lat.npy", rng.normal(size=(12, 4, 4)))


def _config(root: Path) -> dict:
    systems = yaml.safe_load(yaml.safe_dump(SYSTEMS).replace("INPUT", str(root / "inputs")))
    return {"results_dir": str(root / "results"), "device": "cpu", "systems": systems,
            "runs": {"tiny": RUN}}


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory) -> Path:
    """A finished tiny pipeline: inputs/, results/ and config.yaml under one directory."""
    root = tmp_path_factory.mktemp("pipeline")
    _write_inputs(root / "inputs")
    (root / "config.yaml").write_text(yaml.safe_dump(_config(root)))
    for stage in ("preprocess", "train", "sample", "reweight", "report"):
        assert main([stage, "-c", str(root / "config.yaml"), "-q"]) == 0, stage
    return root


class Case:
    """A copy of the pipeline in which one thing gets broken."""

    def __init__(self, root: Path):
        self.root = root
        self.results = root / "results"
        self.config = root / "config.yaml"

    def file(self, name: str) -> Path:
        where = {"data": "dw4/data.h5", "phi_data": "phi/data.h5", "model": "dw4/tiny/model.pt",
                 "samples": "dw4/tiny/samples.h5", "shard0": "dw4/tiny/samples/shard-0.h5",
                 "ckpt": "dw4/tiny/checkpoints/ckpt-2.pt", "mol_data": "mol/data.h5"}
        return self.results / where[name]

    def set_config(self, edit: Callable[[dict], None]) -> None:
        cfg = yaml.safe_load(self.config.read_text())
        edit(cfg)
        self.config.write_text(yaml.safe_dump(cfg))

    def edit_h5(self, name: str, edit: Callable[[h5py.File], None]) -> None:
        """Edit a copy of the file and put it in place (the snapshot is taken after setup)."""
        with h5py.File(self.file(name), "a") as f:
            edit(f)


def _snapshot(results: Path) -> dict[str, str]:
    return {str(p.relative_to(results)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(results.rglob("*")) if p.is_file()}


def _replace(ds_name: str, fn):
    def edit(f: h5py.File) -> None:
        data = fn(f[ds_name][()])
        del f[ds_name]
        f[ds_name] = data
    return edit


def _nan_first(a: np.ndarray) -> np.ndarray:
    a = a.astype(float)
    a[0].flat[0] = np.nan
    return a


def _edit_line(path: Path, index: int, text: str) -> None:
    lines = path.read_text().splitlines()
    lines[index] = text
    path.write_text("\n".join(lines) + "\n")


def _set_attr(key, value):
    return lambda f: f.attrs.__setitem__(key, value)


def _hold_lock(lock: Path):
    """A separate process holding `lock` (as a second flowsci would); returns the Popen."""
    code = ("import sys, time; from flowsci.locks import exclusive_lock\n"
            "with exclusive_lock(sys.argv[1], 'test'):\n"
            "    print('locked', flush=True); time.sleep(60)")
    p = subprocess.Popen([sys.executable, "-c", code, str(lock)], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "locked"
    return p


def _pickle_bomb(path: Path, marker: Path) -> None:
    class Bomb:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))
    torch.save({"step": 2, "model": Bomb()}, path)


# (id, stage argv, setup(case), substrings the one-line message must contain)
CASES: list[tuple[str, list[str], Callable[[Case], None], list[str]]] = [
    # config
    ("unknown run", ["train", "--run", "nope"], lambda c: None, ["--run 'nope'", "tiny"]),
    ("unknown system", ["preprocess", "--system", "nope"], lambda c: None, ["--system 'nope'"]),
    ("config not a mapping", ["train"], lambda c: c.config.write_text("- a\n- b\n"),
     ["config.yaml", "must be a mapping"]),
    ("config invalid yaml", ["train"], lambda c: c.config.write_text("runs: [\n"),
     ["config.yaml", "not valid YAML"]),
    ("run of unknown system", ["train"],
     lambda c: c.set_config(lambda d: d["runs"]["tiny"].update(system="nope")),
     ["runs.tiny.system", "nope"]),
    ("unknown generator", ["preprocess", "--system", "dw4"],
     lambda c: c.set_config(lambda d: d["systems"]["dw4"]["data"]["generator"].update(name="x")),
     ["systems.dw4.data.generator.name", "unknown generator 'x'"]),
    ("negative tau", ["train"],
     lambda c: c.set_config(lambda d: d["systems"]["dw4"]["target"].update(params={"tau": -1})),
     ["systems.dw4.target", "tau must be positive"]),
    ("wrong type", ["train", "--set", "runs.tiny.training.steps=many"], lambda c: None,
     ["runs.tiny.training.steps", "not of type"]),
    # molecular and lattice inputs (re-read with --force: the old data.h5 must survive)
    ("extxyz nan", ["preprocess", "--system", "mol", "--force"],
     lambda c: _edit_line(c.root / "inputs/mol.extxyz", 7, "Ar nan 0.0 0.0"),
     ["mol.extxyz", "frame 1", "NaN"]),
    ("extxyz unknown element", ["preprocess", "--system", "mol", "--force"],
     lambda c: (c.root / "inputs/mol.extxyz").write_text(
         (c.root / "inputs/mol.extxyz").read_text().replace("Ar", "Xx")),
     ["mol.extxyz"]),
    ("extxyz truncated", ["preprocess", "--system", "mol", "--force"],
     lambda c: (c.root / "inputs/mol.extxyz").write_text(
         (c.root / "inputs/mol.extxyz").read_text()[:-30]),
     ["mol.extxyz"]),
    ("lattice wrong shape", ["preprocess", "--system", "lat", "--force"],
     lambda c: np.save(c.root / "inputs/lat.npy", np.zeros((12, 4, 5))),
     ["lat.npy", "shape (12, 4, 5)"]),
    ("lattice nan", ["preprocess", "--system", "lat", "--force"],
     lambda c: np.save(c.root / "inputs/lat.npy", _nan_first(np.ones((12, 4, 4)))),
     ["lat.npy", "NaN"]),
    ("output is a directory", ["preprocess", "--system", "dw4", "--out", "RESULTS"],
     lambda c: None, ["is a directory"]),
    ("results_dir is a file", ["train", "--set", "results_dir=CONFIG"], lambda c: None,
     ["config.yaml"]),
    # HDF5 data files
    ("data not hdf5", ["train"], lambda c: c.file("data").write_bytes(b"not hdf5"),
     ["data.h5", "not a readable HDF5 file"]),
    ("data schema version", ["train"], lambda c: c.edit_h5("data", _set_attr("schema_version", 99)),
     ["data.h5", "schema_version 99"]),
    ("lattice data in particle slot", ["train"],
     lambda c: shutil.copy(c.file("phi_data"), c.file("data")),
     ["data.h5", "holds lattice data", "particles target"]),
    ("data of other target", ["train", "--set", "systems.dw4.target.params.b=-3"], lambda c: None,
     ["data.h5", "systems.dw4.target", '"b": -3']),
    ("data with nan", ["train"], lambda c: c.edit_h5("data", _replace("positions", _nan_first)),
     ["data.h5", "NaN"]),
    ("lattice data to reweight", ["reweight"],
     lambda c: shutil.copy(c.file("phi_data"), c.file("data")), ["data.h5", "lattice"]),
    # checkpoints and model files
    # (model.pt removed: a finished training is not resumed, so it would not read them)
    ("checkpoint garbage", ["train"],
     lambda c: (c.file("ckpt").write_bytes(b"garbage"), c.file("model").unlink()),
     ["ckpt-2.pt", "cannot read checkpoint"]),
    ("checkpoint pickle", ["train"],
     lambda c: (_pickle_bomb(c.file("ckpt"), c.root / "MARKER"), c.file("model").unlink()),
     ["ckpt-2.pt", "cannot read checkpoint"]),
    ("model missing", ["sample", "--shard", "0"], lambda c: c.file("model").unlink(),
     ["model.pt", "not found"]),
    ("model garbage", ["sample", "--shard", "0"], lambda c: c.file("model").write_bytes(b"x"),
     ["model.pt", "cannot read model file"]),
    ("model of another architecture", ["sample", "--shard", "0",
                                       "--set", "runs.tiny.model.params.hidden=16"],
     lambda c: c.file("shard0").unlink(), ["model.pt", "runs.tiny.model"]),
    ("model of another prior", ["sample", "--shard", "0", "--set", "runs.tiny.prior.scale=2"],
     lambda c: c.file("shard0").unlink(), ["model.pt", "runs.tiny.prior"]),
    # samples files
    ("samples wrong event shape", ["reweight"],
     lambda c: c.edit_h5("samples", _replace("x", lambda x: np.concatenate([x, x[..., :1]], -1))),
     ["samples.h5", "(4, 3)"]),
    ("samples missing log_q", ["reweight"], lambda c: c.edit_h5("samples", lambda f: f.__delitem__("log_q")),
     ["samples.h5", "log_q"]),
    ("samples not hdf5", ["reweight"], lambda c: c.file("samples").write_bytes(b"x" * 10),
     ["samples.h5", "not a readable HDF5 file"]),
    ("samples of another model", ["reweight"],
     lambda c: c.edit_h5("samples", _set_attr("model_sha256", "0" * 64)),
     ["samples.h5", "another model"]),
    ("samples of another run", ["reweight"], lambda c: c.edit_h5("samples", _set_attr("run", "x")),
     ["samples.h5", "run 'x'"]),
    ("shard missing", ["sample", "--gather"], lambda c: c.file("shard0").unlink(),
     ["shard-0.h5", "missing"]),
]


@pytest.mark.parametrize("argv, setup, expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_refused_in_one_line_and_outputs_stay(pipeline, tmp_path, capsys, argv,
                                                           setup, expected):
    root = tmp_path / "copy"
    shutil.copytree(pipeline, root)
    (root / "config.yaml").write_text((pipeline / "config.yaml").read_text()
                                      .replace(str(pipeline), str(root)))
    case = Case(root)
    setup(case)
    before = _snapshot(case.results)
    argv = [a.replace("RESULTS", str(case.results)).replace("CONFIG", str(case.config))
            for a in argv]
    capsys.readouterr()
    rc = main([argv[0], "-c", str(case.config), "-q", *argv[1:]])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2, err
    line = err[-1]
    assert line.startswith(f"flowsci {argv[0]}: error: "), err
    for text in expected:
        assert text in line, line
    after = _snapshot(case.results)
    assert {k: after[k] for k in before if k in after} == before  # nothing existing changed
    assert set(before) <= set(after) and all(k.endswith(".lock") for k in set(after) - set(before))
    assert not (root / "MARKER").exists()  # no code ran from a file


@pytest.mark.parametrize("argv, lock", [
    (["train"], "dw4/tiny/.train.lock"),
    (["preprocess", "--system", "dw4", "--force"], "dw4/.data.h5.lock"),
    (["sample", "--shard", "1"], "dw4/tiny/samples/.shard-1.lock"),
    (["reweight"], "dw4/tiny/.reweight.lock")])
def test_a_held_lock_refuses_the_second_process_naming_the_holder(pipeline, tmp_path, capsys,
                                                                  argv, lock):
    root = tmp_path / "copy"
    shutil.copytree(pipeline, root)
    cfg = root / "config.yaml"
    cfg.write_text((pipeline / "config.yaml").read_text().replace(str(pipeline), str(root)))
    holder = _hold_lock(root / "results" / lock)
    try:
        before = _snapshot(root / "results")
        assert main([argv[0], "-c", str(cfg), "-q", *argv[1:]]) == 2
        line = capsys.readouterr().err.strip().splitlines()[-1]
        assert f"already running in process {holder.pid}" in line and lock in line, line
        assert _snapshot(root / "results") == before
    finally:
        holder.kill()
        holder.wait()
    # the kernel released the killed holder's lock: the next run goes ahead
    assert main([argv[0], "-c", str(cfg), "-q", *argv[1:]]) == 0


def test_stray_temporaries_of_a_killed_writer_are_removed(pipeline, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(pipeline, root)
    cfg = root / "config.yaml"
    cfg.write_text((pipeline / "config.yaml").read_text().replace(str(pipeline), str(root)))
    run = root / "results/dw4/tiny"
    strays = [run / ".metrics.json.abc123.tmp", run / ".reweight.h5.x9.tmp"]
    for p in strays:
        p.write_text("half written")
    unrelated = run / ".model.pt.keep.tmp"  # another stage's: not reweight's to remove
    unrelated.write_text("x")
    assert main(["reweight", "-c", str(cfg), "-q"]) == 0
    assert not any(p.exists() for p in strays) and unrelated.exists()


def test_two_concurrent_trainings_of_one_run_never_interleave(pipeline, tmp_path):
    """The issue's reproduction: a trainer (left running, e.g. orphaned by a killed Snakemake)
    and a second `flowsci train` of the same run. The second stops at once naming the first;
    train_log.csv stays well-formed (consecutive steps, full rows)."""
    root = tmp_path / "copy"
    shutil.copytree(pipeline, root)
    cfg = root / "config.yaml"
    cfg.write_text((pipeline / "config.yaml").read_text().replace(str(pipeline), str(root)))
    shutil.rmtree(root / "results/dw4/tiny")
    cmd = [sys.executable, "-m", "flowsci.cli", "train", "-c", str(cfg), "-q",
           "--set", "runs.tiny.training.steps=100000"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen(cmd, stderr=subprocess.DEVNULL, env=env)
    log = root / "results/dw4/tiny/train_log.csv"
    try:
        deadline = time.time() + 120
        while time.time() < deadline and len(_rows(log)) < 2:
            time.sleep(0.1)
        assert len(_rows(log)) >= 2, "the first trainer did not start"
        second = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
        assert first.poll() is None, "the first trainer ended early"
    finally:
        first.kill()
        first.wait()
    assert second.returncode == 2, second.stderr
    assert f"already running in process {first.pid}" in second.stderr, second.stderr
    rows = _rows(log)
    assert [int(r[0]) for r in rows[1:-1]] == list(range(1, len(rows) - 1))  # last may be cut
    assert all(len(r) == len(rows[0]) for r in rows[1:-1])


def _rows(path: Path) -> list[list[str]]:
    return [r.split(",") for r in path.read_text().splitlines()] if path.exists() else []
