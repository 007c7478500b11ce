"""Reliability round 3 (issue 24), part one: no command destroys a file it does not own, no
config number outside its range gets through, and the config loader refuses what PyYAML
would silently accept (duplicate keys), expand without bound (alias bombs) or crash on
(binary files, deep nesting). Each case runs one command on a copy of the tiny pipeline of
tests/test_bad_inputs.py and checks: exit status 2, one line naming the key or file, and every
file of the copy (inputs included) byte-identical afterwards."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_bad_inputs import Case, pipeline  # noqa: F401 (the module-scoped fixture)

from flowsci.cli import main
from flowsci.config import load_config, validate_config
from flowsci.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def _everything(root: Path) -> dict[str, str]:
    """sha256 of every file under root (symlinks by their target path), locks excluded."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_symlink():
            out[rel] = "-> " + os.readlink(p)
        elif p.is_file() and not p.name.endswith(".lock"):
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _text(c: Case, text: str) -> None:
    c.config.write_text(text)


def _append(c: Case, text: str) -> None:
    c.config.write_text(c.config.read_text() + text)


def _rename_system(new: str) -> Callable[[Case], None]:
    def edit(d: dict) -> None:
        d["systems"][new] = d["systems"].pop("dw4")
        d["runs"]["tiny"]["system"] = new
    return lambda c: c.set_config(edit)


def _alias_bomb(levels: int = 9, width: int = 9) -> str:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * width)}]")
    return "\n".join(lines) + "\nresults_dir: r\n"


def _symlink_lock(c: Case) -> None:
    lock = c.results / "dw4/tiny/.train.lock"
    lock.unlink(missing_ok=True)
    lock.symlink_to(c.root / "inputs/mol.extxyz")


def _dir_lock(c: Case) -> None:
    lock = c.results / "dw4/tiny/.reweight.lock"
    lock.unlink(missing_ok=True)
    lock.mkdir()


SET = "--set"
# (id, stage argv, setup(case), substrings the one-line message must contain)
CASES: list[tuple[str, list[str], Callable[[Case], None], list[str]]] = [
    # data loss: files the command does not own
    ("lock is a symlink to an input", ["train"], _symlink_lock, [".train.lock", "symbolic link"]),
    ("lock is a directory", ["reweight"], _dir_lock, [".reweight.lock"]),
    ("preprocess --out the system's own input", ["preprocess", "--system", "mol", "--out",
                                                 "ROOT/inputs/mol.extxyz", "--force"],
     lambda c: None, ["mol.extxyz", "systems.mol.data.input.path", "an input"]),
    ("preprocess --out another system's input", ["preprocess", "--system", "dw4", "--out",
                                                 "ROOT/inputs/lat.npy", "--force"],
     lambda c: None, ["lat.npy", "systems.lat.data.input.path"]),
    ("preprocess --out model.pt", ["preprocess", "--system", "dw4", "--out",
                                   "RESULTS/dw4/tiny/model.pt", "--force"],
     lambda c: None, ["model.pt", "not a system's data.h5"]),
    ("preprocess --out samples.h5", ["preprocess", "--system", "dw4", "--out",
                                     "RESULTS/dw4/tiny/samples.h5", "--force"],
     lambda c: None, ["samples.h5", "other stages"]),
    ("preprocess --out another system's data", ["preprocess", "--system", "dw4", "--out",
                                                "RESULTS/phi/data.h5"],
     lambda c: None, ["phi/data.h5", "already holds a different dataset"]),
    ("infinite split fraction", ["preprocess", "--system", "dw4", "--force",
                                 SET, "systems.dw4.data.splits.val=.inf"],
     lambda c: None, ["systems.dw4.data.splits.val", "not a finite number"]),
    ("NaN split fraction", ["preprocess", "--system", "dw4", "--force",
                            SET, "systems.dw4.data.splits.test=.nan"],
     lambda c: None, ["systems.dw4.data.splits.test", "not a finite number"]),
    ("negative split fraction", ["preprocess", "--system", "dw4", "--force",
                                 SET, "systems.dw4.data.splits.val=-0.1"],
     lambda c: None, ["systems.dw4.data.splits.val", "minimum"]),
    ("system name leaves results_dir", ["preprocess"], _rename_system("../../escaped"),
     ["system name '../../escaped'", "plain directory name"]),
    ("system name with a slash", ["train"], _rename_system("a/b"), ["system name 'a/b'"]),
    ("system name hidden", ["train"], _rename_system(".hidden"), ["system name '.hidden'"]),
    ("system name is dot-dot", ["train"], _rename_system(".."), ["system name '..'"]),
    ("system name with a backslash", ["train"], _rename_system("a\\b"), ["system name"]),
    ("run name is dot-dot", ["train"],
     lambda c: c.set_config(lambda d: d["runs"].update({"..": d["runs"].pop("tiny")})),
     ["run name '..'"]),
    # numbers
    ("NaN lr", ["train", SET, "runs.tiny.training.lr=.nan"], lambda c: None,
     ["runs.tiny.training.lr", "nan is not a finite number"]),
    ("infinite lr", ["train", SET, "runs.tiny.training.lr=.inf"], lambda c: None,
     ["runs.tiny.training.lr", "inf is not a finite number"]),
    ("NaN ema_decay", ["train", SET, "runs.tiny.training.ema_decay=.nan"], lambda c: None,
     ["runs.tiny.training.ema_decay", "not a finite number"]),
    ("NaN grad_clip", ["train", SET, "runs.tiny.training.grad_clip=.nan"], lambda c: None,
     ["runs.tiny.training.grad_clip", "not a finite number"]),
    ("infinite prior scale", ["train", SET, "runs.tiny.prior.scale=.inf"], lambda c: None,
     ["runs.tiny.prior.scale", "not a finite number"]),
    ("NaN tau in free params", ["preprocess", "--system", "dw4", "--force",
                                SET, "systems.dw4.target.params.tau=.nan"], lambda c: None,
     ["systems.dw4.target.params.tau", "not a finite number"]),
    ("NaN rtol", ["sample", SET, "runs.tiny.flow.rtol=.nan"], lambda c: None,
     ["runs.tiny.flow.rtol", "not a finite number"]),
    ("-inf in a list", ["train", SET, "systems.phi.target.params.shape=[4, -.inf]"],
     lambda c: None, ["systems.phi.target.params.shape[1]", "not a finite number"]),
    ("integral float for an integer", ["train", SET, "runs.tiny.training.batch_size=1e1"],
     lambda c: None, ["runs.tiny.training.batch_size", "10.0 is not of type 'integer'",
                      "e.g. 10, not 1e1"]),
    ("float for an integer", ["train", SET, "runs.tiny.training.steps=2.0"], lambda c: None,
     ["runs.tiny.training.steps", "not of type 'integer'"]),
    ("bool for an integer", ["train", SET, "runs.tiny.training.steps=true"], lambda c: None,
     ["runs.tiny.training.steps", "True is not of type 'integer'"]),
    ("huge batch as float", ["train", SET, "runs.tiny.training.batch_size=1e9"], lambda c: None,
     ["runs.tiny.training.batch_size", "not of type 'integer'"]),
    ("huge batch", ["train", SET, "runs.tiny.training.batch_size=1000000000"], lambda c: None,
     ["runs.tiny.training.batch_size", "greater than the maximum"]),
    ("huge sampling batch", ["sample", SET, "runs.tiny.sampling.batch_size=1000000000"],
     lambda c: None, ["runs.tiny.sampling.batch_size", "greater than the maximum"]),
    ("huge n_bins", ["reweight", SET, "runs.tiny.reweighting.n_bins=1000000000"], lambda c: None,
     ["runs.tiny.reweighting.n_bins", "greater than the maximum"]),
    # the loader
    ("duplicate top-level key", ["train"], lambda c: _append(c, "device: cuda\ndevice: cpu\n"),
     ["config.yaml", "duplicate key 'device'", "lines"]),
    ("two runs of one name", ["train"],
     lambda c: _append(c, "runs:\n  tiny: {system: dw4}\n"), ["duplicate key 'runs'"]),
    ("duplicate nested key", ["train"],
     lambda c: _text(c, c.config.read_text().replace("  tiny:\n", "  tiny:\n    steps: 1\n", 1)
                     .replace("    steps: 1\n", "    system: dw4\n    system: dw4\n", 1)),
     ["duplicate key 'system'"]),
    ("duplicate key in an override", ["train", SET, "runs.tiny.model={name: egnn, name: x}"],
     lambda c: None, ["override", "duplicate key 'name'"]),
    ("alias bomb", ["train"], lambda c: _text(c, _alias_bomb()),
     ["config.yaml", "more than 100000 entries", "aliases"]),
    ("binary config", ["train"], lambda c: c.config.write_bytes(bytes(range(256)) * 4),
     ["config.yaml", "not a UTF-8 text file"]),
    ("latin-1 config", ["train"],
     lambda c: c.config.write_bytes(c.config.read_bytes() + "# Angström\n".encode("latin-1")),
     ["config.yaml", "not a UTF-8 text file"]),
    ("deeply nested config", ["train"], lambda c: _text(c, "a: " + "[" * 20000 + "]" * 20000),
     ["config.yaml", "nested too deeply"]),
    ("config is a directory", ["train", "-c", "ROOT"], lambda c: None, ["is a directory"]),
]


def _copy(pipeline: Path, tmp_path: Path) -> Case:  # noqa: F811
    root = tmp_path / "copy"
    shutil.copytree(pipeline, root, symlinks=True)
    (root / "config.yaml").write_text((pipeline / "config.yaml").read_text()
                                      .replace(str(pipeline), str(root)))
    return Case(root)


@pytest.mark.parametrize("argv, setup, expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_refused_in_one_line_and_no_file_changes(pipeline, tmp_path, capsys, argv, setup,  # noqa: F811
                                                 expected):
    case = _copy(pipeline, tmp_path)
    setup(case)
    before = _everything(case.root)
    argv = [a.replace("RESULTS", str(case.results)).replace("ROOT", str(case.root))
            for a in argv]
    config = [] if "-c" in argv else ["-c", str(case.config)]
    capsys.readouterr()
    t0 = time.perf_counter()
    rc = main([argv[0], *config, "-q", *argv[1:]])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2, err
    assert time.perf_counter() - t0 < 30  # no hang (the alias bomb took hours before)
    line = err[-1]
    assert line.startswith(f"flowsci {argv[0]}: error: ") and ".tmp" not in line, err
    for text in expected:
        assert text in line, line
    assert _everything(case.root) == before  # nothing changed, inputs and symlink targets too


@pytest.mark.parametrize("argv, message", [
    (["train", "--stop-after", "-5"], "--stop-after: -5: must be a step >= 1"),
    (["train", "--stop-after", "0"], "must be a step >= 1"),
    (["report", "--no-summary", "--summary-only"], "not allowed with argument"),
])
def test_contradictory_or_impossible_flags_are_refused(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_sigint_prints_one_line_and_the_training_resumes(pipeline, tmp_path):  # noqa: F811
    case = _copy(pipeline, tmp_path)
    (case.results / "dw4/tiny/model.pt").unlink()
    shutil.rmtree(case.results / "dw4/tiny/checkpoints")
    argv = [sys.executable, "-m", "flowsci.cli", "train", "-c", str(case.config), "-q",
            SET, "runs.tiny.training.steps=100000", SET, "runs.tiny.training.checkpoint_every=5"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    p = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True, env=env)
    ckpts = case.results / "dw4/tiny/checkpoints"
    deadline = time.time() + 120
    while not list(ckpts.glob("ckpt-*.pt")) and time.time() < deadline and p.poll() is None:
        time.sleep(0.2)
    p.send_signal(signal.SIGINT)
    err = p.communicate(timeout=60)[1]
    assert p.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert err.strip().splitlines()[-1].startswith("flowsci train: interrupted; ")
    assert not list(case.results.rglob(".*.tmp"))
    # a rerun resumes from the kept checkpoint
    assert main(["train", "-c", str(case.config), "-q", "--stop-after", "10",
                 SET, "runs.tiny.training.steps=100000",
                 SET, "runs.tiny.training.checkpoint_every=5"]) == 0


# --- property-based: the loader gives a config or a ConfigError, nothing else -------------------

_BASE = {"results_dir": "r", "systems": {"s": {"target": {"name": "dw4"}, "data": {
    "source": "generate", "generator": {"name": "mcmc"}}}},
    "runs": {"r": {"system": "s", "model": {"name": "egnn"}}}}
_KEYS = ["runs.r.training.lr", "runs.r.training.steps", "runs.r.training.batch_size",
         "runs.r.sampling.n_samples", "systems.s.data.splits.val", "runs.r.prior.scale",
         "runs.r.flow.rtol", "device", "runs.r.training.ema_decay", "systems.s.temperature",
         "runs.r.model", "runs.r", "systems.s.target.params.tau", "runs.r.training"]
_VALUES = st.one_of(
    st.sampled_from([".nan", ".inf", "-.inf", "1e1", "1e400", "-1", "0", "true", "~", "[]",
                     "{}", "{a: 1, a: 2}", "&x [*x]", "'\\x00'", "1.5", "10", "cpu"]),
    st.text(max_size=30))


@settings(max_examples=150, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(_KEYS), _VALUES), max_size=4))
def test_any_override_gives_a_valid_config_or_a_config_error(overrides):
    import copy

    from flowsci.config import apply_override

    cfg = copy.deepcopy(_BASE)
    try:
        for key, value in overrides:
            apply_override(cfg, f"{key}={value}")
        out = validate_config(cfg)
    except ConfigError as e:
        assert "\n" not in str(e).strip() or len(str(e)) < 2000
        return
    _assert_clean(out)


def _assert_clean(node, where="") -> None:
    """A validated config holds only finite numbers and no float where an int is expected."""
    import math

    if isinstance(node, dict):
        for k, v in node.items():
            _assert_clean(v, f"{where}.{k}")
    elif isinstance(node, list):
        for v in node:
            _assert_clean(v, where)
    elif isinstance(node, float):
        assert math.isfinite(node), where
    if where.endswith(("steps", "batch_size", "n_samples")):
        assert isinstance(node, int) and not isinstance(node, bool), where


@settings(max_examples=150, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.one_of(st.binary(max_size=300),
                 st.text(max_size=300).map(lambda t: t.encode("utf-8", "surrogatepass")),
                 st.sampled_from([yaml.safe_dump(_BASE)]).flatmap(
                     lambda base: st.integers(0, len(base)).map(
                         lambda i: (base[:i] + base[i + 1:]).encode()))))
def test_any_config_file_gives_a_config_or_a_config_error(tmp_path, data):
    path = tmp_path / "fuzz.yaml"
    path.write_bytes(data)
    try:
        cfg = load_config(path)
    except ConfigError as e:
        assert str(path) in str(e)
        return
    _assert_clean(cfg)
