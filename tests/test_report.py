"""reweight + report stages on small synthetic DW4-, LJ13-, φ⁴- and ala2-like fixtures."""

from __future__ import annotations

import csv
import json

import h5py
import numpy as np
import pytest
import torch

from flowsci import paths
from flowsci.config import validate_config
from flowsci.data.hdf5 import make_splits, provenance, write_h5
from flowsci.errors import DataError
from flowsci.stages.reweight import reweight
from flowsci.stages.report import report
from flowsci.systems import build_target

N_DATA, N_FLOW = 300, 400


def _lj(x: np.ndarray) -> np.ndarray:
    i, j = np.triu_indices(x.shape[1], 1)
    r = np.linalg.norm(x[:, i] - x[:, j], axis=-1)
    return (4 * (r**-12 - r**-6)).sum(1) + 0.5 * (x**2).sum((1, 2))


def _phi4(phi: np.ndarray, m2: float = -1.0, lam: float = 1.0) -> np.ndarray:
    kin = sum(((phi - np.roll(phi, 1, a)) ** 2).sum((1, 2)) for a in (1, 2)) / 2
    return kin + (0.5 * m2 * phi**2 + lam * phi**4).sum((1, 2))


def _cluster(rng, n, dim, size):
    grid = np.stack(np.meshgrid(*[np.arange(3)] * dim), -1).reshape(-1, dim)[:n] * 1.12
    x = rng.normal(size=(size, n, dim)) * 0.06 + grid
    return x - x.mean(1, keepdims=True)


def _make_fixture(root, system, kind, rng):
    """data.h5 + samples.h5 + train_log.csv; returns (config entry of system, run spec)."""
    if system == "dw4":
        x = _cluster(rng, 4, 2, N_DATA + N_FLOW) * 3
        u = build_target({"name": "dw4"}).energy(torch.as_tensor(x)).numpy()
        arrays = {"positions": x[:N_DATA], "atomic_numbers": np.zeros(4, int)}  # energies omitted
    elif system == "lj13":
        x = _cluster(rng, 13, 3, N_DATA + N_FLOW)
        u = _lj(x)
        arrays = {"positions": x[:N_DATA], "energies": u[:N_DATA], "atomic_numbers": np.zeros(13, int)}
    elif system == "ala2":
        x = rng.normal(size=(N_DATA + N_FLOW, 22, 3))
        u = 0.5 * (x**2).sum((1, 2))
        arrays = {"positions": x[:N_DATA], "energies": u[:N_DATA], "atomic_numbers": np.ones(22, int)}
    else:
        x = rng.normal(size=(N_DATA + N_FLOW, 8, 8)) + rng.choice([-1.0, 1.0], (N_DATA + N_FLOW, 1, 1))
        u = _phi4(x)
        arrays = {"fields": x[:N_DATA], "actions": u[:N_DATA]}
    spec = {"target": {"name": system, "params": {}},
            "data": {"source": "generate", "generator": {"name": "mcmc"}}}
    stored = validate_config({"systems": {system: spec}, "runs": {"r": {
        "system": system, "model": {"name": "egnn"}}}})["systems"][system]
    attrs = provenance(kind, system, units="reduced", temperature=1.0, source={"test": 1},
                       config=stored)  # as preprocess writes it: the validated system entry
    write_h5(root / system / "data.h5", arrays, attrs,
             groups={"splits": make_splits(N_DATA, {"train": 0.5, "val": 0.2, "test": 0.3})})
    xf, uf = x[N_DATA:], u[N_DATA:]
    log_q = -uf + rng.normal(0, 0.7, N_FLOW) - 3.0  # an imperfect flow
    log_q[0] = np.nan                                 # one non-finite row
    sattrs = provenance("samples", system, units="reduced", temperature=1.0, source={}, config={})
    sattrs.update({"n_failed": 2, "test_nll": 12.5, "run": f"{system}_run", "solver": "{}"})
    run_dir = root / system / f"{system}_run"
    write_h5(run_dir / "samples.h5", {"x": xf, "log_q": log_q, "energies": uf,
                                      "log_weights": -uf - log_q}, sattrs)
    with open(run_dir / "train_log.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step", "loss", "nll", "nfe", "seconds", "lr", "val_nll"])
        for s in range(1, 21):
            w.writerow([s, 10 / s, 10 / s, 26, 0.5 * s, 1e-3, 10 / s + 0.2 if s % 5 == 0 else ""])
    return spec, {"system": system, "model": {"name": "egnn"}}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("results")
    rng = np.random.default_rng(0)
    systems, runs = {}, {}
    for system, kind in (("dw4", "particles"), ("lj13", "particles"), ("phi4", "lattice"),
                         ("ala2", "particles")):
        systems[system], runs[f"{system}_run"] = _make_fixture(root, system, kind, rng)
    cut = float(np.median(h5py.File(root / "lj13" / "data.h5")["energies"][()]))
    runs["lj13_run"]["reweighting"] = {"states": {"low": {"energy": [None, cut]},
                                                  "high": {"energy": [cut, None]}},
                                       "mh_steps": 300, "n_bootstrap": 50}
    runs["ala2_run"]["reweighting"] = {"states": {"C7eq": {"phi": [-180, 0], "psi": [50, -120]},
                                                  "aR": {"phi": [-180, 0], "psi": [-120, 50]}}}
    config = validate_config({"results_dir": str(root), "systems": systems, "runs": runs})
    outs = {run: reweight(config, run) for run in runs}
    return config, root, outs


def test_reweight_outputs(setup):
    config, root, outs = setup
    for run, path in outs.items():
        assert path == paths.reweight_file(config, run)
        m = json.loads(paths.metrics_file(config, run).read_text())
        assert m["n_samples"] == N_FLOW and m["n_failed"] == 2 and m["n_nonfinite"] == 1
        assert 1 <= m["ess"] <= N_FLOW - 1 and 0 < m["ess_fraction"] <= 1
        assert m["test_nll"] == 12.5 and m["val_nll"] == pytest.approx(0.7)
        assert m["training_time_s"] == 10.0
        e = m["observables"]["mean_energy"]
        assert e["data_err"] > 0 and e["reweighted_err"] > 0
        with h5py.File(path) as f:
            assert np.exp(f["log_weights"][()]).sum() == pytest.approx(1.0)
            assert "energy_hist" in f["axes"] and "energy_hist_err" in f["reweighted"]
    lj = json.loads(paths.metrics_file(config, "lj13_run").read_text())
    assert "mean_distance" in lj["observables"]
    assert set(lj["free_energies"]) == {"low", "high"} and lj["free_energies"]["low"]["data"] == 0
    assert 0 < lj["mh"]["acceptance"] <= 1 and lj["mh"]["steps"] == 300
    phi = json.loads(paths.metrics_file(config, "phi4_run").read_text())
    assert {"magnetization", "abs_magnetization", "susceptibility"} <= set(phi["observables"])
    ala = json.loads(paths.metrics_file(config, "ala2_run").read_text())
    assert set(ala["free_energies"]) == {"C7eq", "aR"}


def test_report_renders_everything(setup):
    config, root, _ = setup
    written = report(config)
    names = {p.relative_to(root).as_posix() for p in written}
    for run in config["runs"]:
        system = config["runs"][run]["system"]
        for fig in ("energy", "weights", "training", "observables", "correlations"):
            p = root / system / run / "figures" / f"{fig}.png"
            assert p.relative_to(root).as_posix() in names
            assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000
        assert "mean_energy" in (root / system / run / "table.csv").read_text()
        assert "<table>" in (root / system / run / "table.html").read_text()
    rows = list(csv.DictReader(open(root / "summary.csv")))
    assert [r["run"] for r in rows] == list(config["runs"])
    assert all(float(r["ess_percent"]) > 0 and r["test_nll"] == "12.5" for r in rows)
    assert not list(root.rglob("*.tmp"))
    # summary only, for one run, into another directory
    only = report(config, ["phi4_run"], out_dir=str(root / "other"), figures=False)
    assert only == [root / "other" / "summary.csv"]


def test_missing_and_malformed_inputs(setup, tmp_path):
    config, root, _ = setup
    bad = dict(config, results_dir=str(tmp_path))
    with pytest.raises(DataError, match="samples.h5"):
        reweight(bad, "dw4_run")
    (tmp_path / "dw4" / "dw4_run").mkdir(parents=True)
    with h5py.File(tmp_path / "dw4" / "dw4_run" / "samples.h5", "w") as f:
        f["x"] = np.zeros((3, 4, 2))
    with pytest.raises(DataError, match="missing dataset"):
        reweight(bad, "dw4_run")
    with pytest.raises(DataError, match="metrics.json"):
        report(bad, ["dw4_run"])


def test_failed_samples_count_against_the_requested_and_are_a_warning(setup, tmp_path):
    """ESS % is over the samples requested (failed solves are lost samples), the survivors'
    figure is stated beside it, and a failure fraction above 1 % is a warning in
    metrics.json, the run's table and summary.csv."""
    import shutil

    config, root, _ = setup
    shutil.copytree(root / "dw4", tmp_path / "dw4")
    cfg = dict(config, results_dir=str(tmp_path))
    with h5py.File(tmp_path / "dw4" / "dw4_run" / "samples.h5", "a") as f:
        f.attrs["n_requested"], f.attrs["n_failed"] = N_FLOW + 40, 40
    reweight(cfg, "dw4_run")
    m = json.loads(paths.metrics_file(cfg, "dw4_run").read_text())
    assert m["n_requested"] == N_FLOW + 40 and m["n_failed"] == 40 and m["n_nonfinite"] == 1
    assert m["ess_fraction"] == pytest.approx(m["ess"] / (N_FLOW + 40))
    assert m["ess_fraction_survivors"] == pytest.approx(m["ess"] / (N_FLOW - 1))
    assert m["failed_fraction"] == pytest.approx(41 / (N_FLOW + 40))
    assert len(m["warnings"]) == 1 and f"41 of {N_FLOW + 40} samples" in m["warnings"][0]
    report(cfg, ["dw4_run"])
    html_table, _ = paths.table_files(cfg, "dw4_run")
    assert "Warning:</b> 41 of" in html_table.read_text()
    summary = paths.summary_file(cfg).read_text()
    assert "failed_percent" in summary and "41 of" in summary
    # below the threshold: no warning
    with h5py.File(tmp_path / "dw4" / "dw4_run" / "samples.h5", "a") as f:
        f.attrs["n_requested"], f.attrs["n_failed"] = N_FLOW, 0
    reweight(cfg, "dw4_run")
    assert json.loads(paths.metrics_file(cfg, "dw4_run").read_text())["warnings"] == []
