"""Sharded sampling: exact log q, failures counted, resumable shards, gather == uninterrupted."""

import h5py
import numpy as np
import pytest
import torch

from flowsci import paths
from flowsci.config import validate_config
from flowsci.errors import DataError
from flowsci.flows import SolverConfig
from flowsci.flows.build import build_flow
from flowsci.sampling import sample_exact
from flowsci.stages import sample as sample_stage
from flowsci.systems import build_target
from flowsci.model_file import ModelFile, save_model_file


def _config(tmp_path, n_shards=2):
    cfg = {"results_dir": str(tmp_path / "results"), "device": "cpu",
           "systems": {"dw4": {"target": {"name": "dw4"},
                               "data": {"source": "generate", "generator": {"name": "mcmc"}}}},
           "runs": {"r": {"system": "dw4",
                          "model": {"name": "egnn", "params": {"hidden": 8, "n_layers": 1}},
                          "flow": {"method": "rk4", "n_steps": 4},
                          "sampling": {"n_samples": 50, "n_shards": n_shards, "batch_size": 20,
                                       "dtype": "float64"}}}}
    cfg = validate_config(cfg)
    torch.manual_seed(0)
    flow = build_flow(cfg["runs"]["r"], build_target({"name": "dw4"}))
    sd = flow.state_dict()
    save_model_file(paths.model_file(cfg, "r"), ModelFile.for_run(cfg, "r", sd, step=1))
    return cfg


def _read(path):
    with h5py.File(path) as f:
        return {k: f[k][()] for k in ("x", "log_q", "energies", "log_weights")}, dict(f.attrs)


def test_shards_gather_and_exact_log_q(tmp_path):
    cfg = _config(tmp_path)
    for i in range(2):
        sample_stage.sample(cfg, "r", shard=i, progress=False)
    arrays, attrs = _read(sample_stage.gather(cfg, "r"))
    assert arrays["x"].shape == (50, 4, 2) and attrs["n_failed"] == 0
    np.testing.assert_allclose(arrays["log_weights"], -arrays["energies"] - arrays["log_q"])
    np.testing.assert_allclose(arrays["x"].mean(1), 0, atol=1e-12)  # mean-free samples
    # exact log q: re-evaluate the density of the samples with the same flow (data -> prior)
    flow, target, _ = sample_stage.load_trained_flow(cfg, "r", torch.device("cpu"),
                                                        torch.float64)
    lq = flow.log_prob(torch.as_tensor(arrays["x"][:10]))
    np.testing.assert_allclose(lq.detach().numpy(), arrays["log_q"][:10], atol=1e-3)
    # different shards use different seeds
    a0, _ = _read(paths.shard_file(cfg, "r", 0))
    a1, _ = _read(paths.shard_file(cfg, "r", 1))
    assert not np.allclose(a0["x"][:5], a1["x"][:5])


def test_killed_shard_is_redone_cleanly_and_finished_shard_is_kept(tmp_path, monkeypatch):
    cfg = _config(tmp_path)
    reference = {}
    for i in range(2):
        reference[i] = _read(sample_stage.sample(cfg, "r", shard=i, progress=False))[0]
    shard1 = paths.shard_file(cfg, "r", 1)
    shard1.unlink()
    mtime0 = paths.shard_file(cfg, "r", 0).stat().st_mtime_ns

    calls = {"n": 0}
    real = sample_stage.sample_exact

    def dying(*args, **kwargs):  # killed half-way: after the first batches, before writing
        calls["n"] += 1
        real(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(sample_stage, "sample_exact", dying)
    with pytest.raises(KeyboardInterrupt):
        sample_stage.sample(cfg, "r", shard=1, progress=False)
    assert not shard1.exists()
    assert not list(shard1.parent.glob("*.tmp"))
    monkeypatch.setattr(sample_stage, "sample_exact", real)
    sample_stage.sample(cfg, "r", shard=0, progress=False)  # finished: not redone
    assert paths.shard_file(cfg, "r", 0).stat().st_mtime_ns == mtime0
    redone, _ = _read(sample_stage.sample(cfg, "r", shard=1, progress=False))
    for k in redone:
        np.testing.assert_array_equal(redone[k], reference[1][k])


def test_failed_solves_are_counted_not_dropped():
    target = build_target({"name": "dw4"})
    torch.manual_seed(0)
    flow = build_flow({"model": {"name": "egnn", "params": {"hidden": 8, "n_layers": 1}},
                       "flow": {"method": "rk4", "n_steps": 2}}, target).double()
    real_energy = target.energy

    def bad_energy(x):  # poison two configurations with NaN energies
        u = real_energy(x)
        u[:2] = float("nan")
        return u

    target.energy = bad_energy
    res = sample_exact(flow, target, 30, 10, torch.Generator().manual_seed(0), progress=False)
    assert res["n_failed"] == 6 and len(res["x"]) == 24
    assert torch.isfinite(res["log_q"]).all()


def test_shard_index_out_of_range(tmp_path):
    cfg = _config(tmp_path)
    with pytest.raises(DataError, match="shard 5 out of range"):
        sample_stage.sample(cfg, "r", shard=5, progress=False)


def test_shards_record_the_log_q_error_against_a_tight_float64_solve(tmp_path, caplog):
    """The check is not vacuous: a coarse solver shows a larger error than a fine one, the
    recorded error matches an independent tight re-solve, and an error above the tolerance
    is a warning in the log."""
    from flowsci.sampling import LOG_Q_TOLERANCE

    errors = {}
    for n_steps in (1, 16):
        cfg = _config(tmp_path / str(n_steps), n_shards=1)
        cfg["runs"]["r"]["flow"]["n_steps"] = n_steps
        cfg["runs"]["r"]["sampling"]["check_samples"] = 5
        caplog.clear()
        with caplog.at_level("WARNING", logger="flowsci.stages.sample"):
            arrays, attrs = _read(sample_stage.sample(cfg, "r", progress=False))
        warned = "use a finer solver" in caplog.text
        assert warned == (attrs["log_q_error"] > LOG_Q_TOLERANCE), (n_steps, attrs["log_q_error"])
        assert attrs["log_q_error_n"] == 5 and attrs["exact_method"] in ("vjp_loop", "vjp_batched")
        errors[n_steps] = attrs["log_q_error"]
        flow, _, _ = sample_stage.load_trained_flow(cfg, "r", torch.device("cpu"), torch.float64)
        tight = flow.with_solver(SolverConfig(method="dopri5", rtol=1e-10, atol=1e-10))
        ref = tight.log_prob(torch.as_tensor(arrays["x"][:5])).detach().numpy()
        # the recorded error is right to the reference solve's own accuracy (rtol = 1e-7)
        assert np.abs(ref - arrays["log_q"][:5]).max() == pytest.approx(errors[n_steps], rel=1e-3,
                                                                         abs=1e-6)
    assert errors[1] > 10 * errors[16] and errors[16] < 1e-3
    assert errors[1] > LOG_Q_TOLERANCE  # so the warning branch above was exercised
