"""Reference-data generators: no code execution from checkpoint files; chain diagnostics,
step-size adaptation and refusal (or dropping) of chains that do not mix.

Reference value: phi^4 8x8, m2 = -4, lam = 8 (the target's defaults): <phi^2> = 0.14339 +-
0.00007 from HMC with a fixed step 0.05, 20 leapfrog steps, 64 chains x 1500 kept draws from
a near-zero start (init_scale 0.1), no adaptation; R-hat 1.000 (docs/data.md).
"""

import json
import pickle
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from flowsci.config import validate_config
from flowsci.data.generate import GENERATORS, diagnostics as dg
from flowsci.data.generate.base import Checkpoint, run_chains
from flowsci.errors import DataError
from flowsci.stages import preprocess as pp
from flowsci.systems import build_target

PHI2_REF, PHI2_REF_SE = 0.14339, 0.00007
ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- diagnostics, known answers

def ar1(n, rho, n_chains, seed):
    rng = np.random.default_rng(seed)
    x = np.empty((n, n_chains))
    x[0] = rng.normal(size=n_chains) / np.sqrt(1 - rho**2)
    for t in range(1, n):
        x[t] = rho * x[t - 1] + rng.normal(size=n_chains)
    return x


def test_split_rhat_known_value_and_iid_vs_shifted_chains():
    # one chain [0, 2, 1, 3] -> halves [0, 2], [1, 3]: W = 2, B/n = 0.5, var+ = 1/2 W + 0.5
    assert dg.split_rhat(np.array([0.0, 2.0, 1.0, 3.0])) == pytest.approx(np.sqrt(1.5 / 2))
    rng = np.random.default_rng(0)
    iid = rng.normal(size=(1000, 8))
    assert abs(dg.split_rhat(iid) - 1) < 0.01
    assert abs(dg.rank_normalized_rhat(iid) - 1) < 0.01
    shifted = iid + np.arange(8) * 1.0  # chain means 0..7 sd apart
    assert dg.split_rhat(shifted) > 2 and dg.rank_normalized_rhat(shifted) > 2
    # a trend within every chain (not equilibrated) is caught by splitting
    drift = iid + np.linspace(0, 6, 1000)[:, None]
    assert dg.rank_normalized_rhat(drift) > 1.3
    # the folded (tail) part sees a different scale that the bulk does not
    scale = iid * np.r_[np.ones(4), 4 * np.ones(4)]
    assert dg.rank_normalized_rhat(scale) > 1.1 > dg.split_rhat(scale)
    # constant chains at different values: infinitely far apart
    assert dg.rank_normalized_rhat(np.repeat([[0.0, 1.0]], 10, axis=0)) == np.inf


def test_average_ranks_with_ties():
    np.testing.assert_array_equal(dg.average_ranks(np.array([[3.0, 1.0], [1.0, 2.0]])),
                                  [[4.0, 1.5], [1.5, 3.0]])


def test_ess_of_ar1_matches_analytic_value():
    rho, n = 0.9, 20000
    x = ar1(n, rho, 4, seed=1)
    exact = 4 * n * (1 - rho) / (1 + rho)
    assert dg.ess(x) == pytest.approx(exact, rel=0.1)
    per_chain = dg.chain_ess(x)
    assert per_chain.shape == (4,)
    np.testing.assert_allclose(per_chain, exact / 4, rtol=0.2)
    iid = np.random.default_rng(2).normal(size=(5000, 2))
    assert dg.ess(iid) == pytest.approx(10000, rel=0.1)


def test_find_stuck_chains_rules():
    acc = np.full(20, 0.8)
    acc[[3, 7]] = [0.0, 0.1]
    stuck = dg.find_stuck_chains(acc, 200)
    assert set(stuck) == {3, 7} and "no move accepted" in stuck[3] and "median" in stuck[7]
    assert dg.find_stuck_chains(acc, 20) == {}  # too few steps to judge
    u = np.random.default_rng(0).normal(size=(50, 20))
    u[:, 5] += 100.0  # stuck at a high energy while still accepting
    assert set(dg.find_stuck_chains(np.full(20, 0.8), 200, u)) == {5}
    u[:, 6] -= 100.0  # low energy is not "stuck" (may be a deeper basin)
    assert set(dg.find_stuck_chains(np.full(20, 0.8), 200, u)) == {5}


def test_check_chains_refuses_names_or_drops():
    rng = np.random.default_rng(0)
    u = rng.normal(size=(60, 10))
    acc = np.full(10, 0.7)
    acc[[2, 8]] = 0.0
    with pytest.raises(DataError, match=r"2 of 10 chains did not mix \(chain 2: no move "
                                        r"accepted in 300 steps; chain 8: .*drop_stuck_chains"):
        dg.check_chains("hmc", acc, 300, {"energy": u})
    keep, info = dg.check_chains("hmc", acc, 300, {"energy": u, "x": u}, drop_stuck_chains=True)
    assert list(keep) == [0, 1, 3, 4, 5, 6, 7, 9] and info["dropped_chains"] == [2, 8]
    assert info["n_samples_stored"] == 8 * 60 and abs(info["rhat"]["energy"] - 1) < 0.1
    assert set(info["stuck_chains"]) == {"2", "8"} and info["judged"]
    assert abs(info["energy_drift_z"]) < 4
    json.dumps(info, allow_nan=False)  # goes into the provenance attr
    acc[:6] = 0.0
    with pytest.raises(DataError, match="7 of 10 chains did not mix.*more than 50%"):
        dg.check_chains("hmc", acc, 300, {"energy": u}, drop_stuck_chains=True)


def test_trajectory_diagnostics():
    x = ar1(4000, 0.5, 1, seed=3)[:, 0]
    d = dg.trajectory_diagnostics(x)
    assert d["energy_ess"] == pytest.approx(4000 / 3, rel=0.15)
    assert abs(d["energy_rhat"] - 1) < 0.05
    with pytest.warns(UserWarning, match="split R-hat"):
        dg.trajectory_diagnostics(x + np.linspace(0, 5, 4000))


# ---------------------------------------------------------------- adaptation

def test_dual_averaging_reaches_target_and_freezes():
    """Toy chain whose acceptance probability is exp(-h): the target 0.5 needs h = ln 2."""
    seen = []

    def step(state, h):
        seen.append(h.clone())
        return state, torch.ones(len(h), dtype=torch.bool), torch.exp(-h)

    res = run_chains(step, {"x": torch.zeros(3)}, lambda s: {"x": s["x"]}, n_keep=5,
                     burn_in=500, thin=2, gen=torch.Generator(), ckpt=Checkpoint(None, {}),
                     desc="", progress=False, step_size=5.0, target_accept=0.5)
    np.testing.assert_allclose(res.step_size, np.log(2), rtol=0.03)
    frozen = torch.stack(seen[400:])  # adaptation: first 80 % of the burn-in
    assert torch.equal(frozen, frozen[:1].expand_as(frozen))
    assert res.kept["x"].shape == (5, 3) and res.n_steps == 10


def test_adaptation_hits_target_acceptance_from_a_bad_step():
    t = build_target({"name": "dw4"})
    out = GENERATORS.build("mcmc", {"n_samples": 400, "n_chains": 20, "burn_in": 400, "thin": 5,
                                    "step_size": 5.0, "seed": 0}, target=t)(progress=False)
    assert out.info["acceptance_rate"] == pytest.approx(0.3, abs=0.07)
    assert out.info["step_size_adapted"]["median"] < 1.0


# ---------------------------------------------------------------- checkpoints are data only

class Payload:
    """Unpickling this creates `marker` (stands for arbitrary code)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def write_malicious(path, marker, how):
    if how == "torch.save":
        torch.save({"step": 10, "payload": Payload(marker)}, path)
    else:
        path.write_bytes(pickle.dumps(Payload(marker)))


def test_payload_is_live(tmp_path):
    """The malicious file of the tests below would run code if it were unpickled."""
    pickle.loads(pickle.dumps(Payload(tmp_path / "m")))
    assert (tmp_path / "m").exists()


PHI4_SMALL = {"n_samples": 64, "n_chains": 4, "burn_in": 20, "thin": 2, "n_leapfrog": 3,
              "seed": 4, "checkpoint_every": 5}


@pytest.mark.parametrize("how", ["torch.save", "pickle"])
def test_malicious_checkpoint_is_ignored_not_executed(tmp_path, how):
    t = build_target({"name": "phi4", "params": {"shape": [4, 4]}})
    ckpt, marker = tmp_path / "ckpt", tmp_path / "pwned"
    write_malicious(ckpt, marker, how)
    with pytest.warns(UserWarning, match="unreadable generator checkpoint ignored, starting over"):
        out = GENERATORS.build("hmc", {**PHI4_SMALL, "checkpoint": str(ckpt)},
                               target=t)(progress=False)
    assert not marker.exists()
    ref = GENERATORS.build("hmc", PHI4_SMALL, target=t)(progress=False)
    np.testing.assert_array_equal(out.arrays["fields"], ref.arrays["fields"])


def test_preprocess_ignores_malicious_checkpoint_and_records_diagnostics(tmp_path):
    system = {"target": {"name": "dw4"}, "temperature": 1.0,
              "data": {"source": "generate", "generator": {"name": "mcmc", "params": {
                  "n_samples": 60, "n_chains": 6, "burn_in": 30, "thin": 2}}}}
    cfg = validate_config({"results_dir": str(tmp_path / "results"), "systems": {"s": system},
                           "runs": {"r": {"system": "s", "model": {"name": "egnn"}}}})
    out = tmp_path / "results" / "s" / "data.h5"
    out.parent.mkdir(parents=True)
    marker = tmp_path / "pwned"
    write_malicious(pp._checkpoint_path(out), marker, "torch.save")
    with pytest.warns(UserWarning, match="unreadable generator checkpoint"):
        pp.preprocess(cfg, "s", progress=False)
    assert not marker.exists() and not pp._checkpoint_path(out).exists()
    with h5py.File(out) as f:
        src = json.loads(f.attrs["source"])
    assert src["dropped_chains"] == [] and set(src["rhat"]) == {"energy", "mean_pair_distance"}
    assert {"chain_acceptance", "step_size_adapted", "ess", "mixing_rules"} <= set(src)


class CrashAfter:
    """Wraps a target; energy() raises after `n` calls (a simulated crash)."""

    def __init__(self, target, n):
        self.t, self.n = target, n

    def __getattr__(self, name):
        return getattr(self.t, name)

    def energy(self, x):
        self.n -= 1
        if self.n < 0:
            raise RuntimeError("simulated crash")
        return self.t.energy(x)


@pytest.mark.parametrize("crash_at", [40, 130])  # during adaptation; after it (kept samples)
def test_resume_is_bit_identical_and_checkpoint_is_plain_hdf5(tmp_path, crash_at):
    t = build_target({"name": "phi4", "params": {"shape": [4, 4]}})
    ref = GENERATORS.build("hmc", PHI4_SMALL, target=t)(progress=False)
    ckpt = tmp_path / "ckpt"
    with pytest.raises(RuntimeError, match="simulated crash"):
        GENERATORS.build("hmc", {**PHI4_SMALL, "checkpoint": str(ckpt)},
                         target=CrashAfter(t, crash_at))(progress=False)
    with h5py.File(ckpt) as f:
        assert f.attrs["format"] == "flowsci generator checkpoint" and f.attrs["version"] == 1
        kinds = {}
        f.visititems(lambda n, o: kinds.update({n: (o.attrs["kind"], o.dtype.kind)})
                     if isinstance(o, h5py.Dataset) else None)
        assert kinds["rng"] == ("tensor", "u") and kinds["step"][0] == "json"
        assert {"adapt/log_h", "adapt/log_h_bar", "state/x", "accepted"} <= set(kinds)
        assert all(k in "biufcSO" for _, k in kinds.values())  # numbers and strings only
        step = json.loads(f["step"][()])
    assert (step > PHI4_SMALL["burn_in"]) == (crash_at > 100)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # resumed without complaint
        resumed = GENERATORS.build("hmc", {**PHI4_SMALL, "checkpoint": str(ckpt)},
                                   target=t)(progress=False)
    for k in ref.arrays:
        np.testing.assert_array_equal(resumed.arrays[k], ref.arrays[k])
    assert resumed.info["step_size_adapted"] == ref.info["step_size_adapted"]


def test_checkpoint_with_wrong_shapes_is_ignored(tmp_path):
    t = build_target({"name": "phi4", "params": {"shape": [4, 4]}})
    ckpt = tmp_path / "ckpt"
    with pytest.raises(RuntimeError):
        GENERATORS.build("hmc", {**PHI4_SMALL, "checkpoint": str(ckpt)},
                         target=CrashAfter(t, 40))(progress=False)
    with h5py.File(ckpt, "r+") as f:  # right settings key, tampered state
        del f["state/x"]
        f.create_dataset("state/x", data=np.zeros((4, 5, 5)))
        f["state/x"].attrs["kind"] = "tensor"
    with pytest.warns(UserWarning, match=r"unusable generator checkpoint.*state.x"):
        out = GENERATORS.build("hmc", {**PHI4_SMALL, "checkpoint": str(ckpt)},
                               target=t)(progress=False)
    ref = GENERATORS.build("hmc", PHI4_SMALL, target=t)(progress=False)
    np.testing.assert_array_equal(out.arrays["fields"], ref.arrays["fields"])


def test_generator_sources_deserialise_no_code():
    for path in (ROOT / "flowsci" / "data" / "generate").glob("*.py"):
        text = path.read_text()
        assert "pickle" not in text and "weights_only=False" not in text, path
        assert "torch.load" not in text and "np.load" not in text, path


# ---------------------------------------------------------------- phi^4 chains that do not mix

PHI4_DEFAULTS_SHORT = {"n_samples": 64 * 25, "seed": 1}  # generator defaults otherwise


def test_phi4_defaults_mix_with_adaptation():
    """Before adaptation, seed 1 left chains 17 and 33 stuck (N(0,1) start, every trajectory
    of step 0.1 diverged) and <phi^2> came out 0.225 instead of 0.1434."""
    t = build_target({"name": "phi4"})
    out = GENERATORS.build("hmc", PHI4_DEFAULTS_SHORT, target=t)(progress=False)
    info = out.info
    assert info["dropped_chains"] == [] and info["judged"] is False  # 25 draws per chain
    assert info["chain_acceptance"]["min"] > 0.6
    assert abs(info["rhat"]["energy"] - 1) < 0.05 and abs(info["rhat"]["phi2"] - 1) < 0.05
    phi2 = (out.arrays["fields"] ** 2).mean((1, 2)).reshape(64, -1).mean(1)
    se = phi2.std(ddof=1) / 8
    assert abs(phi2.mean() - PHI2_REF) < 5 * se + PHI2_REF_SE, (phi2.mean(), se)


def test_phi4_stuck_chains_refused_or_dropped():
    """The same run without adaptation (the old behaviour): refused, naming the stuck chains
    (seed 1: 0, 17, 33, 34, 36, 43 never accept a move, 56 rarely); or dropped on request."""
    t = build_target({"name": "phi4"})
    p = {**PHI4_DEFAULTS_SHORT, "adapt_step_size": False}
    with pytest.raises(DataError, match=r"hmc: (\d) of 64 chains did not mix \(chain \d+: no move "
                                        r"accepted in 250 steps; .*chain 17: no move") as e:
        GENERATORS.build("hmc", p, target=t)(progress=False)
    n_stuck = int(e.value.args[0].split()[1])
    out = GENERATORS.build("hmc", {**p, "drop_stuck_chains": True}, target=t)(progress=False)
    dropped = out.info["dropped_chains"]
    assert len(dropped) == n_stuck and {17, 33} <= set(dropped)
    assert set(out.info["stuck_chains"]) == {str(c) for c in dropped}
    n_left = 64 - n_stuck
    assert out.info["n_samples_stored"] == n_left * 25 == len(out.arrays["fields"])
    phi2 = (out.arrays["fields"] ** 2).mean((1, 2)).reshape(n_left, -1).mean(1)
    assert abs(phi2.mean() - PHI2_REF) < 5 * phi2.std(ddof=1) / np.sqrt(n_left) + PHI2_REF_SE


def test_all_chains_stuck_is_refused_even_with_drop():
    t = build_target({"name": "phi4", "params": {"shape": [4, 4]}})
    with pytest.raises(DataError, match="8 of 8 chains did not mix.*more than 50%"):
        GENERATORS.build("hmc", {"n_samples": 80, "n_chains": 8, "burn_in": 10, "thin": 10,
                                 "step_size": 2.0, "adapt_step_size": False,
                                 "drop_stuck_chains": True}, target=t)(progress=False)
    with pytest.raises(DataError, match=r"mcmc: 6 of 6 chains did not mix \(chain 0: no move"):
        GENERATORS.build("mcmc", {"n_samples": 60, "n_chains": 6, "burn_in": 10, "thin": 10,
                                  "step_size": 50.0, "adapt_step_size": False},
                         target=build_target({"name": "dw4"}))(progress=False)


def test_energy_drift_statistic():
    rng = np.random.default_rng(5)
    stationary = ar1(400, 0.95, 16, seed=6)  # slow but stationary: |t| small
    assert abs(dg.energy_drift_z(stationary)[0]) < 4
    z, d = dg.energy_drift_z(stationary - np.linspace(0, 10, 400)[:, None])  # 3 sd
    assert z < -6 and d.shape == (16,) and np.all(d < 0)
    z, d = dg.energy_drift_z(np.arange(10.0)[:, None] * [1, 10, 1e4])  # any scale
    assert z == np.inf and np.all(d == 1)  # mean ranks 8 and 3, / (T / 2)
    # chains stuck apart (different levels, no drift) do not count as drift, R-hat sees them
    apart = rng.normal(size=(100, 16)) + 5 * rng.normal(size=16)
    assert abs(dg.energy_drift_z(apart)[0]) < 4 and dg.rank_normalized_rhat(apart) > 2


def test_not_equilibrated_chains_are_refused():
    """No burn-in, tiny fixed step, wide start: every chain still drifts down in action."""
    t = build_target({"name": "phi4", "params": {"shape": [4, 4]}})
    with pytest.raises(DataError, match=r"the energy drifts during the kept run \(not "
                                        r"equilibrated\): it falls in 8 of 8 chains of 50 "
                                        r"draws, trend t = -(inf|\d+\.\d) .*most drifting chains "
                                        r"\(second-half minus first-half mean\): \d+ \(-\d"):
        GENERATORS.build("hmc", {"n_samples": 400, "n_chains": 8, "burn_in": 0, "thin": 1,
                                 "n_leapfrog": 2, "step_size": 0.002, "init_scale": 3.0,
                                 "adapt_step_size": False}, target=t)(progress=False)


def test_slow_mode_warns_without_refusing():
    """DW4 with 2 particles: the distance tunnels rarely between the wells at this step (R-hat
    > 1.1) yet the data are kept: a warning, the numbers in info."""
    t = build_target({"name": "dw4", "params": {"n_particles": 2, "dim": 2}})
    with pytest.warns(UserWarning, match=r"mean_pair_distance R-hat \d\.\d+ > 1.1"):
        out = GENERATORS.build("mcmc", {"n_samples": 4000, "n_chains": 40, "burn_in": 300,
                                        "thin": 5, "step_size": 0.25, "method": "mala",
                                        "init_scale": 3.0, "seed": 1}, target=t)(progress=False)
    assert out.info["rhat"]["mean_pair_distance"] > 1.1 and out.info["judged"]
    assert out.info["dropped_chains"] == [] and len(out.arrays["positions"]) == 4000
