"""Every loaded structure is checked (issue 24, part B): HDF5 data and samples files, lattice
arrays, input files, checkpoints, model files, report inputs and a full disk. Each bad case
exits with status 2 and one line naming the file and the problem (never a temporary file),
and leaves every existing output byte-identical; legitimate-but-poor inputs (NaN sample rows,
few samples) are warned about in the log and metrics.json. The corpus reuses
tests/test_bad_inputs.py's tiny pipeline."""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable

import h5py
import numpy as np
import pytest
import torch
import yaml

from flowsci.cli import main
from test_bad_inputs import Case, _replace, _set_attr, _snapshot, pipeline  # noqa: F401


def _copy(pipeline: Path, tmp_path: Path) -> Case:
    root = tmp_path / "copy"
    shutil.copytree(pipeline, root)
    (root / "config.yaml").write_text((pipeline / "config.yaml").read_text()
                                      .replace(str(pipeline), str(root)))
    return Case(root)


def _group_for(name: str):
    def edit(f: h5py.File) -> None:
        del f[name]
        f.create_group(name)
    return edit


def _split(name: str, fn):
    return _replace(f"splits/{name}", fn)


def _empty_val(f: h5py.File) -> None:
    train, val = f["splits/train"][()], f["splits/val"][()]
    del f["splits/train"], f["splits/val"]
    f["splits/train"] = np.sort(np.concatenate([train, val]))
    f["splits/val"] = np.zeros(0, dtype=np.int64)


def _xyz_scaled(factor: float):
    def setup(c: Case) -> None:
        p = c.root / "inputs/mol.extxyz"
        lines = p.read_text().splitlines()
        atom = lines[2].split()
        lines[2] = " ".join([atom[0], *(str(float(v) * factor) for v in atom[1:])])
        p.write_text("\n".join(lines) + "\n")
    return setup


def _xyz_first_line(text: str):
    def setup(c: Case) -> None:
        p = c.root / "inputs/mol.extxyz"
        lines = p.read_text().splitlines()
        lines[0] = text
        p.write_text("\n".join(lines) + "\n")
    return setup


def _input_path(c: Case, system: str, path: Path) -> None:
    c.set_config(lambda d: d["systems"][system]["data"]["input"].update(path=str(path)))


def _dir_input(c: Case) -> None:
    (c.root / "inputs/adir.extxyz").mkdir()
    _input_path(c, "mol", c.root / "inputs/adir.extxyz")


def _fifo_input(c: Case) -> None:
    os.mkfifo(c.root / "inputs/fifo.extxyz")
    _input_path(c, "mol", c.root / "inputs/fifo.extxyz")


def _ckpt(edit: Callable[[dict], object]):
    """Rewrite the checkpoint (edit returns the new object, or None to keep the edited dict)
    and remove model.pt, so that `train` resumes from it."""
    def setup(c: Case) -> None:
        state = torch.load(c.file("ckpt"), weights_only=True)
        new = edit(state)
        torch.save(state if new is None else new, c.file("ckpt"))
        c.file("model").unlink()
    return setup


def _wrong_shape(state: dict) -> None:
    k = next(iter(state["model"]))
    state["model"][k] = torch.zeros(*state["model"][k].shape, 2)


def _model(edit: Callable[[dict], None]):
    def setup(c: Case) -> None:
        raw = torch.load(c.file("model"), weights_only=True)
        edit(raw)
        torch.save(raw, c.file("model"))
        c.file("shard0").unlink()
    return setup


def _one_frame_mol(c: Case) -> None:
    p = c.root / "inputs/mol.extxyz"
    p.write_text("".join(p.read_text().splitlines(keepends=True)[:5]))
    assert main(["preprocess", "-c", str(c.config), "-q", "--system", "mol", "--force"]) == 0


SET_MOL = ["--set", "runs.tiny.system=mol"]

# (id, stage argv, setup(case), substrings of the one-line message)
CASES: list[tuple[str, list[str], Callable[[Case], None], list[str]]] = [
    # data.h5: dtypes, datasets, splits, values
    ("complex positions", ["train"],
     lambda c: c.edit_h5("data", _replace("positions", lambda a: a + 1j)),
     ["data.h5", "'positions'", "complex"]),
    ("bool positions", ["train"],
     lambda c: c.edit_h5("data", _replace("positions", lambda a: a > 0)),
     ["data.h5", "'positions'", "bool"]),
    ("string positions", ["train"],
     lambda c: c.edit_h5("data", _replace("positions", lambda a: np.full(a.shape, b"x"))),
     ["data.h5", "'positions'", "string"]),
    ("positions a group", ["train"], lambda c: c.edit_h5("data", _group_for("positions")),
     ["data.h5", "'positions'", "must be a dataset"]),
    ("energies a group", ["reweight"], lambda c: c.edit_h5("data", _group_for("energies")),
     ["data.h5", "'energies'", "must be a dataset"]),
    ("float splits", ["train"],
     lambda c: c.edit_h5("data", _split("train", lambda a: a.astype(float))),
     ["data.h5", "splits/train", "1-D integer"]),
    ("2-D splits", ["train"],
     lambda c: c.edit_h5("data", _split("val", lambda a: a[:, None])),
     ["data.h5", "splits/val", "1-D integer"]),
    ("split a group", ["train"], lambda c: c.edit_h5("data", _group_for("splits/test")),
     ["data.h5", "splits/test", "must be a dataset"]),
    ("nan energies", ["reweight"],
     lambda c: c.edit_h5("data", _replace("energies", lambda a: np.where(
         np.arange(len(a)) == 3, np.nan, a))), ["data.h5", "'energies'", "NaN", "frame 3"]),
    ("coordinates 1e200 in data.h5", ["train"],
     lambda c: c.edit_h5("data", _replace("positions", lambda a: a * 1e200)),
     ["data.h5", "out of range"]),
    ("empty val split", ["train"], lambda c: c.edit_h5("data", _empty_val),
     ["data.h5", "val split is empty"]),
    ("one-frame input", ["train", *SET_MOL], _one_frame_mol,
     ["mol/data.h5", "split is empty", "systems.mol.data.splits"]),
    ("schema_version a string", ["train"],
     lambda c: c.edit_h5("data", _set_attr("schema_version", "1")),
     ["data.h5", "'schema_version' must be a int"]),
    # input files
    ("coordinates 1e308", ["preprocess", "--system", "mol", "--force"], _xyz_scaled(1e308),
     ["mol.extxyz", "frame 0", "coordinates"]),
    ("coordinates 1e200", ["preprocess", "--system", "mol", "--force"], _xyz_scaled(1e200),
     ["mol.extxyz", "frame 0", "out of range"]),
    ("lattice complex", ["preprocess", "--system", "lat", "--force"],
     lambda c: np.save(c.root / "inputs/lat.npy", np.ones((12, 4, 4)) + 1j),
     ["lat.npy", "complex"]),
    ("lattice bool", ["preprocess", "--system", "lat", "--force"],
     lambda c: np.save(c.root / "inputs/lat.npy", np.ones((12, 4, 4), dtype=bool)),
     ["lat.npy", "bool"]),
    ("input a directory", ["preprocess", "--system", "mol", "--force"], _dir_input,
     ["adir.extxyz", "is a directory", "systems.mol.data.input.path"]),
    ("input a fifo", ["preprocess", "--system", "mol", "--force"], _fifo_input,
     ["fifo.extxyz", "is not a regular file"]),
    ("xyz claims 999999999999 atoms", ["preprocess", "--system", "mol", "--force"],
     _xyz_first_line("999999999999"), ["mol.extxyz", "999999999999 atoms"]),
    # checkpoints (model.pt removed so that train resumes)
    ("checkpoint a list", ["train"], _ckpt(lambda s: [1, 2]),
     ["ckpt-2.pt", "not a checkpoint", "list"]),
    ("checkpoint lacks optimizer", ["train"], _ckpt(lambda s: s.pop("optimizer") and None),
     ["ckpt-2.pt", "lacks ['optimizer']"]),
    ("checkpoint step a string", ["train"], _ckpt(lambda s: s.update(step="2")),
     ["ckpt-2.pt", "'step'"]),
    ("checkpoint wrong weight shape", ["train"], _ckpt(_wrong_shape),
     ["ckpt-2.pt", "does not fit", "size mismatch"]),
    ("checkpoint bad rng state", ["train"],
     _ckpt(lambda s: s.update(rng_data=torch.zeros(3, dtype=torch.uint8))),
     ["ckpt-2.pt", "does not fit"]),
    ("checkpoint rng a float tensor", ["train"],
     _ckpt(lambda s: s.update(rng_torch=torch.zeros(3))),
     ["ckpt-2.pt", "'rng_torch'", "random-generator state"]),
    ("checkpoint past training.steps", ["train", "--set", "runs.tiny.training.steps=1"],
     _ckpt(lambda s: None), ["ckpt-2.pt", "past training.steps = 1"]),
    # model files
    ("model state_dict a string", ["sample", "--shard", "0"],
     _model(lambda m: m.update(state_dict="weights")), ["model.pt", "'state_dict'", "str"]),
    ("model run_config not json", ["sample", "--shard", "0"],
     _model(lambda m: m.update(run_config="{not json")),
     ["model.pt", "'run_config'", "not valid JSON"]),
    ("model target a json list", ["sample", "--shard", "0"],
     _model(lambda m: m.update(target="[1, 2]")), ["model.pt", "'target'", "JSON object"]),
    ("model step a float", ["sample", "--shard", "0"], _model(lambda m: m.update(step=2.5)),
     ["model.pt", "'step'", "float"]),
    ("model weights not tensors", ["sample", "--shard", "0"],
     _model(lambda m: m["state_dict"].update(extra=3)), ["model.pt", "non-tensor"]),
    # samples files
    ("n_requested zero", ["reweight"], lambda c: c.edit_h5("samples", _set_attr("n_requested", 0)),
     ["samples.h5", "n_requested = 0"]),
    ("n_requested below the rows", ["reweight"],
     lambda c: c.edit_h5("samples", _set_attr("n_requested", 5)), ["samples.h5", "n_requested = 5"]),
    ("n_requested a string", ["reweight"],
     lambda c: c.edit_h5("samples", _set_attr("n_requested", "many")),
     ["samples.h5", "n_requested", "not an integer"]),
    ("n_failed negative", ["reweight"], lambda c: c.edit_h5("samples", _set_attr("n_failed", -15)),
     ["samples.h5", "n_failed = -15"]),
    ("n_failed above n_requested", ["reweight"],
     lambda c: c.edit_h5("samples", _set_attr("n_failed", 21)), ["samples.h5", "n_failed = 21"]),
    ("shard n_failed negative", ["sample", "--gather"],
     lambda c: c.edit_h5("shard0", _set_attr("n_failed", -1)), ["shard-0.h5", "n_failed = -1"]),
    ("samples x complex", ["reweight"],
     lambda c: c.edit_h5("samples", _replace("x", lambda a: a + 0j)), ["samples.h5", "'x'"]),
    ("samples log_q a group", ["reweight"], lambda c: c.edit_h5("samples", _group_for("log_q")),
     ["samples.h5", "'log_q'", "group"]),
    # report inputs
    ("train_log binary", ["report"],
     lambda c: (c.results / "dw4/tiny/train_log.csv").write_bytes(b"\xff\xfe\x00\x81binary"),
     ["train_log.csv", "unreadable training log"]),
    ("metrics a list", ["report"],
     lambda c: (c.results / "dw4/tiny/metrics.json").write_text("[1, 2]"),
     ["metrics.json", "JSON object", "list"]),
    ("metrics binary", ["report"],
     lambda c: (c.results / "dw4/tiny/metrics.json").write_bytes(b"\xff\xfe\x00"),
     ["metrics.json", "not valid JSON"]),
    ("metrics observables a list", ["report"],
     lambda c: (c.results / "dw4/tiny/metrics.json").write_text('{"observables": [1]}'),
     ["metrics.json", "'observables'"]),
]


@pytest.mark.parametrize("argv, setup, expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_structure_is_refused_in_one_line_and_outputs_stay(pipeline, tmp_path, capsys,  # noqa: F811
                                                               argv, setup, expected):
    case = _copy(pipeline, tmp_path)
    setup(case)
    before = _snapshot(case.results)
    capsys.readouterr()
    rc = main([argv[0], "-c", str(case.config), "-q", *argv[1:]])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2, err
    line = err[-1]
    assert line.startswith(f"flowsci {argv[0]}: error: "), err
    for text in expected:
        assert text in line, line
    assert ".tmp" not in line, line  # the file at fault, never a temporary
    after = _snapshot(case.results)
    assert {k: after[k] for k in before if k in after} == before
    assert all(k.endswith(".lock") for k in set(after) - set(before)), set(after) - set(before)
    assert not list(case.results.rglob("*.tmp"))


def _reweight_metrics(case: Case, caplog) -> dict:
    assert main(["reweight", "-c", str(case.config), "-q"]) == 0
    return json.loads((case.results / "dw4/tiny/metrics.json").read_text())


def _edit_samples(case: Case, fn: Callable[[dict], None]) -> None:
    with h5py.File(case.file("samples"), "a") as f:
        arrays = {k: f[k][()] for k in ("x", "log_q", "energies", "log_weights")}
        fn(arrays)
        for k, v in arrays.items():
            del f[k]
            f[k] = v


def test_nan_rows_and_overflowing_log_weights_are_dropped_and_counted(pipeline, tmp_path,  # noqa: F811
                                                                      caplog):
    case = _copy(pipeline, tmp_path)

    def edit(a: dict) -> None:
        a["x"][0] = np.nan  # finite energy and log q, but no configuration
        a["energies"][1], a["log_q"][1] = 1e308, 1e308  # log w = -2e308 = -inf
    _edit_samples(case, edit)
    m = _reweight_metrics(case, caplog)
    assert m["n_nonfinite"] == 2 and m["n_samples"] == 20
    assert m["failed_fraction"] == pytest.approx(2 / 20)
    assert any("2 non-finite" in w for w in m["warnings"])
    with h5py.File(case.results / "dw4/tiny/reweight.h5") as f:
        assert len(f["log_weights"]) == 18 and np.isfinite(f["log_weights"][()]).all()


def test_few_samples_warn_in_log_and_metrics_and_one_gets_no_error_bar(pipeline, tmp_path,  # noqa: F811
                                                                       caplog):
    case = _copy(pipeline, tmp_path)
    _edit_samples(case, lambda a: a.update({k: v[:1] for k, v in a.items()}))
    caplog.set_level("WARNING")
    m = _reweight_metrics(case, caplog)
    assert any("only 1 usable flow sample" in w for w in m["warnings"])
    assert "only 1 usable flow sample" in caplog.text
    assert m["log_z_err"] is None  # a bootstrap of one sample gives ~1e-14: no error bar
    errs = [est.get(f"{s}_err") for est in m["observables"].values() for s in ("flow", "reweighted")]
    assert errs and all(e is None for e in errs)
    assert all(est.get("data_err") is not None for est in m["observables"].values())


def test_nan_reference_energies_are_refused_at_train_too(pipeline, tmp_path, capsys):  # noqa: F811
    case = _copy(pipeline, tmp_path)
    case.edit_h5("data", _replace("energies", lambda a: a * np.nan))
    assert main(["train", "-c", str(case.config), "-q"]) == 2
    assert "'energies' has NaN/Inf" in capsys.readouterr().err


def _model_sha(case: Case) -> str:
    return _snapshot(case.results)["dw4/tiny/model.pt"]


def test_removed_model_resumes_to_the_configured_steps_and_is_then_kept(pipeline, tmp_path):  # noqa: F811
    """model.pt removed with an older checkpoint (step 2 of 4): training resumes to step 4;
    the next call keeps model.pt byte-identical (so the shards are not redone)."""
    from flowsci.model_file import load_model_file

    case = _copy(pipeline, tmp_path)
    case.file("model").unlink()
    steps = ["--set", "runs.tiny.training.steps=4"]
    assert main(["train", "-c", str(case.config), "-q", *steps]) == 0
    assert load_model_file(case.file("model")).step == 4
    sha = _model_sha(case)
    assert main(["train", "-c", str(case.config), "-q", *steps]) == 0
    assert _model_sha(case) == sha
    # steps lowered back to 2 with ckpt-2 and ckpt-4 present: the step-2 checkpoint is the
    # model, not the step-4 one (which would never count as done and be rewritten every call)
    assert main(["train", "-c", str(case.config), "-q"]) == 0
    assert load_model_file(case.file("model")).step == 2
    sha = _model_sha(case)
    assert main(["train", "-c", str(case.config), "-q"]) == 0
    assert _model_sha(case) == sha


def _limited(limit_bytes: int):
    def preexec() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, resource.RLIM_INFINITY))
    return preexec


@pytest.mark.parametrize("argv, written", [
    (["preprocess", "--system", "dw4", "--force"], "dw4/data.h5"),
    (["reweight"], "dw4/tiny/reweight.h5"),
    (["train"], "dw4/tiny/checkpoints/ckpt-2.pt")])
def test_a_full_disk_is_one_line_without_a_segfault(pipeline, tmp_path, argv, written):  # noqa: F811
    """`ulimit -f 8` (8 KiB): writes fail with EFBIG (Python ignores SIGXFSZ). HDF5 used to
    segfault in h5py's close, torch.save to raise a C++ iostream error."""
    case = _copy(pipeline, tmp_path)
    if argv[0] == "train":
        case.file("model").unlink()
        shutil.rmtree(case.results / "dw4/tiny/checkpoints")
    before = _snapshot(case.results)
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]),
                                          os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run([sys.executable, "-m", "flowsci.cli", argv[0], "-c", str(case.config),
                        "-q", *argv[1:]], capture_output=True, text=True, env=env, timeout=300,
                       preexec_fn=_limited(8 * 1024))
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2, r.stderr[-2000:]
    assert lines[-1].startswith(f"flowsci {argv[0]}: error: "), lines[-1]
    assert written in lines[-1] and "disk full / file too large" in lines[-1], lines[-1]
    assert "Traceback" not in r.stderr
    after = _snapshot(case.results)
    if argv[0] == "train":  # a training restarted from scratch owns (rewrites) its log
        before.pop("dw4/tiny/train_log.csv")
    assert {k: after[k] for k in before if k in after} == before
    assert not list(case.results.rglob("*.tmp"))


def test_create_h5_raises_enospc_after_a_clean_close(tmp_path, monkeypatch):
    """A simulated full disk (the write raises ENOSPC mid-file): OSError after close, the
    writer's own file never crashes h5py."""
    import errno

    from flowsci.data import hdf5
    from flowsci.io import DiskFullError, atomic_output

    real_open = open
    written = {"n": 0}

    class Full:
        def __init__(self, f):
            self.f = f

        def write(self, data):
            written["n"] += len(data)
            if written["n"] > 4096:
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.f.write(data)

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *a):
            self.f.close()

    monkeypatch.setattr(hdf5, "open", lambda *a, **k: Full(real_open(*a, **k)), raising=False)
    out = tmp_path / "x.h5"
    with pytest.raises(DiskFullError) as e:
        with atomic_output(out) as tmp:
            with hdf5.create_h5(tmp) as f:
                f.create_dataset("a", data=np.arange(10000.0))
    assert e.value.filename == str(out) and not list(tmp_path.iterdir())


# --- property-based fuzzing: a loaded structure is accepted or refused with a flowsci error ---

import tempfile  # noqa: E402

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from flowsci.errors import FlowsciError  # noqa: E402

FUZZ = settings(max_examples=60, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow])
DTYPES = ["f8", "f4", "i8", "i2", "u1", "c16", "?", "S3"]


def _array(dtype: str, shape: tuple[int, ...], fill: float) -> np.ndarray:
    if dtype == "S3":
        return np.full(shape, b"abc")
    return (np.full(shape, fill) if np.dtype(dtype).kind in "fc" else np.ones(shape)).astype(dtype)


shapes = st.lists(st.integers(0, 3), min_size=0, max_size=3).map(tuple)
fills = st.sampled_from([0.5, -2.0, np.nan, np.inf, 1e300])
member = st.tuples(st.sampled_from(DTYPES), shapes, fills, st.booleans())  # (.., as a group)
attr_values = st.one_of(st.integers(-2, 3), st.sampled_from(["particles", "lattice", "samples",
                                                             "x", ""]),
                        st.floats(allow_nan=True), st.just(np.arange(3)))


@FUZZ
@given(kind=st.sampled_from(["particles", "lattice", "samples", "other"]),
       version=st.sampled_from([1, 1, 1, 2, "1"]),
       members=st.dictionaries(st.sampled_from(["positions", "fields", "x", "energies", "actions",
                                                "atomic_numbers", "log_q", "cell", "pbc"]),
                               member, max_size=5),
       splits=st.one_of(st.none(), st.dictionaries(st.sampled_from(["train", "val", "test"]),
                                                   member, max_size=3)),
       extra_attrs=st.dictionaries(st.sampled_from(["kind", "system", "schema_version"]),
                                   attr_values, max_size=2))
def test_fuzz_hdf5_validator_and_reader(kind, version, members, splits, extra_attrs):
    from flowsci.data.hdf5 import ROOT_ATTRS, read_splits, validate_h5

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "data.h5"
        with h5py.File(path, "w") as f:
            for a in ROOT_ATTRS:
                f.attrs[a] = "{}"
            f.attrs.update({"schema_version": version, "kind": kind, "system": "s",
                            "temperature": 1.0})
            for k, v in extra_attrs.items():
                f.attrs[k] = v
            for name, (dtype, shape, fill, group) in members.items():
                if group:
                    f.create_group(name)
                else:
                    f[name] = _array(dtype, shape, fill)
            if splits is not None:
                g = f.create_group("splits")
                for name, (dtype, shape, _, group) in splits.items():
                    if group:
                        g.create_group(name)
                    else:
                        g[name] = _array(dtype, shape, 0)
        try:
            attrs = validate_h5(path)
        except FlowsciError:
            return
        assert attrs["kind"] in ("particles", "lattice", "samples")
        main = {"particles": "positions", "lattice": "fields", "samples": "x"}[attrs["kind"]]
        if splits is not None:
            try:
                out = read_splits(path, main, ("train", "val", "test"))
            except FlowsciError:
                return
            assert sum(len(v) for v in out.values()) == h5py.File(path)[main].shape[0]


def _model_entries():
    tensors = st.dictionaries(st.sampled_from(["w", "b"]),
                              st.sampled_from([torch.zeros(2), torch.ones(2, 2), 3, "x"]),
                              max_size=2)
    value = st.one_of(st.integers(-1, 3), st.floats(allow_nan=True), st.text(max_size=5),
                      st.sampled_from(['{"a": 1}', "[1]", "{bad"]), st.booleans(), st.none(),
                      st.lists(st.integers(), max_size=2), tensors, st.just(torch.zeros(3)))
    keys = st.sampled_from(["state_dict", "raw_state_dict", "run", "system", "run_config",
                            "target", "step", "train_seconds", "test_nll", "dtype",
                            "fingerprint", "stopped_early", "version"])
    return st.dictionaries(keys, value, max_size=6)


@FUZZ
@given(drop=st.lists(st.sampled_from(["state_dict", "run_config", "target", "step", "version"]),
                     max_size=2), changes=_model_entries(),
       top=st.sampled_from(["dict", "dict", "dict", "list", "tensor", "str"]))
def test_fuzz_model_file_loader(drop, changes, top):
    from flowsci.model_file import MODEL_FILE_VERSION, ModelFile, load_model_file

    raw = {"state_dict": {"w": torch.zeros(2)}, "raw_state_dict": {"w": torch.zeros(2)},
           "run": "r", "system": "s", "run_config": "{}", "target": "{}", "step": 2,
           "train_seconds": 1.0, "test_nll": 0.5, "dtype": "float32", "fingerprint": "",
           "stopped_early": False, "version": MODEL_FILE_VERSION}
    for k in drop:
        raw.pop(k, None)
    raw.update(changes)
    obj = {"dict": raw, "list": list(raw), "tensor": torch.zeros(2), "str": "model"}[top]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.pt"
        torch.save(obj, path)
        try:
            model = load_model_file(path)
        except FlowsciError as e:
            assert str(path) in str(e)
            return
    assert isinstance(model, ModelFile) and isinstance(model.state_dict, dict)
    assert all(torch.is_tensor(v) for v in model.state_dict.values())
    assert isinstance(model.step, int) and isinstance(json.loads(model.run_config), dict)


def _live():
    from flowsci.training.ema import EMA

    torch.manual_seed(0)
    net = torch.nn.Linear(2, 2)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    return net, opt, sched, EMA(net, 0.9), torch.Generator().manual_seed(0)


@FUZZ
@given(drop=st.lists(st.sampled_from(["step", "model", "optimizer", "scheduler", "ema",
                                      "rng_data", "rng_torch", "elapsed"]), max_size=2),
       changes=st.dictionaries(
           st.sampled_from(["step", "model", "optimizer", "scheduler", "ema", "rng_data",
                            "rng_torch", "elapsed", "rng_cuda"]),
           st.one_of(st.integers(-1, 3), st.text(max_size=3), st.none(),
                     st.sampled_from([torch.zeros(3), torch.zeros(5, dtype=torch.uint8),
                                      torch.zeros(2, 2, dtype=torch.uint8)]),
                     st.just({"weight": torch.zeros(3, 3)}), st.just({"state": {}}),
                     st.just({}), st.just([1, 2])), max_size=2),
       top=st.sampled_from(["dict", "dict", "dict", "list", "int"]))
def test_fuzz_checkpoint_loader(drop, changes, top):
    from flowsci.training.checkpoint import capture_state, load_checkpoint

    net, opt, sched, ema, gen = _live()
    state = capture_state(2, 1.0, net, opt, sched, ema, gen, "fp", copy_=True)
    for k in drop:
        state.pop(k, None)
    state.update(changes)
    obj = {"dict": state, "list": [state], "int": 3}[top]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ckpt-2.pt"
        torch.save(obj, path)
        net, opt, sched, ema, gen = _live()
        try:
            out = load_checkpoint(path, net, opt, sched, ema, gen, "fp")
        except FlowsciError as e:
            assert str(path) in str(e)
            return
    assert isinstance(out["step"], int)
