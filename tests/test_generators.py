"""Reference-data generators reproduce known distributions; runs are seeded and resumable.

Double well: for DW4 the pair-distance marginal is not a 1D integral, so the histogram test
uses 2 particles in 2D (same pair potential), where the relative vector has density
prop. to exp(-u(r)) and the distance r has p(r) prop. to r exp(-u(r)) exactly (quadrature).
DW4 itself is checked by agreement of Metropolis and MALA (independent samplers).
Error bars come from the spread between independent chains.
"""

import numpy as np
import pytest
import scipy.integrate
import torch

from flowsci.data.generate import GENERATORS
from flowsci.systems import build_target


def chain_means(values: np.ndarray, n_chains: int) -> tuple[float, float]:
    """Mean and standard error from per-chain means. values are stored chain by chain."""
    per_chain = values.reshape(n_chains, -1).mean(1)
    return per_chain.mean(), per_chain.std(ddof=1) / np.sqrt(n_chains)


@pytest.mark.parametrize("method,step", [("metropolis", 0.6), ("mala", 0.25)])
def test_two_particle_double_well_distance_marginal(method, step):
    t = build_target({"name": "dw4", "params": {"n_particles": 2, "dim": 2}})
    n_chains = 200
    out = GENERATORS.build("mcmc", {"n_samples": 8000, "n_chains": n_chains, "burn_in": 300,
                                    "thin": 10, "step_size": step, "method": method,
                                    "init_scale": 3.0, "seed": 1}, target=t)(progress=False)
    x = out.arrays["positions"]
    r = np.linalg.norm(x[:, 0] - x[:, 1], axis=-1)
    def p(s):  # unnormalised density of the distance, DW pair potential with a=0
        return s * np.exp(-(t.b * (s - t.d0) ** 2 + t.c * (s - t.d0) ** 4) / t.tau)

    z = scipy.integrate.quad(p, 0, 9, limit=200)[0]
    mean_exact = scipy.integrate.quad(lambda s: s * p(s), 0, 9, limit=200)[0] / z
    assert mean_exact == pytest.approx(4.51509, abs=1e-4)  # also checked on a 2D grid
    mean, se = chain_means(r, n_chains)
    assert abs(mean - mean_exact) < 4 * se + 1e-3, (mean, mean_exact, se)
    # histogram vs exact bin probabilities (binomial errors inflated by the autocorrelation)
    edges = np.linspace(0.5, 7.5, 15)
    counts, _ = np.histogram(r, edges)
    exact = np.array([scipy.integrate.quad(p, a, b)[0] / z for a, b in zip(edges[:-1], edges[1:])])
    tau = max(out.info["energy_autocorr_time_thinned"], 1.0)
    n_eff = len(r) / tau
    sigma = np.sqrt(exact * (1 - exact) / n_eff) + 1e-4
    assert np.all(np.abs(counts / len(r) - exact) < 5 * sigma), (counts / len(r), exact)
    assert 0.05 < out.info["acceptance_rate"] < 0.99
    assert np.allclose(x.mean(1), 0, atol=1e-12)  # centred


def test_dw4_metropolis_and_mala_agree():
    t = build_target({"name": "dw4"})
    res = {}
    for method, step in (("metropolis", 0.4), ("mala", 0.15)):
        out = GENERATORS.build("mcmc", {"n_samples": 6000, "n_chains": 100, "burn_in": 500,
                                        "thin": 10, "step_size": step, "method": method,
                                        "init_scale": 2.0, "seed": 2}, target=t)(progress=False)
        res[method] = chain_means(out.arrays["energies"], 100)
        x = torch.as_tensor(out.arrays["positions"][:50])
        assert np.allclose(t.energy(x).numpy(), out.arrays["energies"][:50])
    (m1, s1), (m2, s2) = res["metropolis"], res["mala"]
    assert abs(m1 - m2) < 4 * np.hypot(s1, s2), res


def test_phi4_free_field_hmc_matches_analytic():
    t = build_target({"name": "phi4", "params": {"shape": [6, 6], "m2": 0.5, "lam": 0.0}})
    n_chains = 32
    out = GENERATORS.build("hmc", {"n_samples": 3200, "n_chains": n_chains, "burn_in": 50,
                                   "thin": 2, "n_leapfrog": 8, "step_size": 0.12, "seed": 3},
                           target=t)(progress=False)
    phi = out.arrays["fields"]
    phi2, se = chain_means((phi**2).mean((1, 2)), n_chains)
    exact = t.free_field_phi2()
    assert abs(phi2 - exact) < 4 * se, (phi2, exact, se)
    # equipartition for the Gaussian action S = phi^T A phi: <S> = V / 2
    s_mean, s_se = chain_means(out.arrays["actions"], n_chains)
    assert abs(s_mean - 18.0) < 4 * s_se, (s_mean, s_se)
    info = out.info
    assert 0.5 < info["acceptance_rate"] <= 1.0
    assert info["magnetization_autocorr_time_thinned"] > 0
    assert abs(info["mean_exp_minus_dH"] - 1) < 0.1  # <exp(-dH)> = 1 for a reversible integrator
    assert np.allclose(out.arrays["actions"][:10], t.action(torch.as_tensor(phi[:10])).numpy())


def test_lj13_mala_runs_and_reports_diagnostics():
    t = build_target({"name": "lj13"})
    out = GENERATORS.build("mcmc", {"n_samples": 100, "n_chains": 20, "burn_in": 50, "thin": 5,
                                    "step_size": 0.03, "method": "mala"}, target=t)(progress=False)
    assert out.arrays["positions"].shape == (100, 13, 3)
    assert np.isfinite(out.arrays["energies"]).all()
    assert 0.3 < out.info["acceptance_rate"] < 1.0
    assert "energy_autocorr_time_thinned" in out.info


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


@pytest.mark.parametrize("name,params", [
    ("mcmc", {"method": "mala", "step_size": 0.1}),
    ("hmc", {"n_leapfrog": 3, "step_size": 0.05}),
])
def test_chain_generators_resume_after_crash(tmp_path, name, params):
    t = build_target({"name": "dw4"})
    common = {"n_samples": 120, "n_chains": 4, "burn_in": 20, "thin": 3, "seed": 5,
              "checkpoint_every": 7, **params}
    ref = GENERATORS.build(name, common, target=t)(progress=False)
    ckpt = tmp_path / "ckpt"
    with pytest.raises(RuntimeError, match="simulated crash"):
        GENERATORS.build(name, {**common, "checkpoint": str(ckpt)},
                         target=CrashAfter(t, 60))(progress=False)
    assert ckpt.exists()
    resumed = GENERATORS.build(name, {**common, "checkpoint": str(ckpt)}, target=t)(progress=False)
    for k in ref.arrays:
        np.testing.assert_array_equal(resumed.arrays[k], ref.arrays[k])
    # a checkpoint written with other settings is ignored (with a warning), not resumed
    with pytest.warns(UserWarning, match="different settings"):
        other = GENERATORS.build(name, {**common, "seed": 6, "checkpoint": str(ckpt)},
                                 target=t)(progress=False)
    assert not np.array_equal(other.arrays["energies"], ref.arrays["energies"])


def test_ase_langevin_seeded_resumable_and_reduced(tmp_path):
    import ase.io
    from ase.cluster import Icosahedron
    path = tmp_path / "cu13.xyz"
    ase.io.write(path, Icosahedron("Cu", 2))
    t = build_target({"name": "ase", "params": {"structure": str(path), "temperature": 300.0}})
    p = {"n_samples": 6, "burn_in": 10, "thin": 5, "seed": 7, "checkpoint_every": 2}
    ref = GENERATORS.build("ase_langevin", p, target=t)(progress=False)
    ckpt = tmp_path / "ckpt"
    run = GENERATORS.build("ase_langevin", {**p, "checkpoint": str(ckpt)}, target=t)
    import flowsci.data.generate.langevin as lv
    orig = lv.Checkpoint.save
    calls = []

    def save_then_crash(self, state):
        orig(self, state)
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("simulated crash")

    lv.Checkpoint.save = save_then_crash
    try:
        with pytest.raises(RuntimeError):
            run(progress=False)
    finally:
        lv.Checkpoint.save = orig
    resumed = run(progress=False)
    np.testing.assert_allclose(resumed.arrays["positions"], ref.arrays["positions"], atol=1e-10)
    u = t.energy(torch.as_tensor(ref.arrays["positions"])).numpy()
    np.testing.assert_allclose(ref.arrays["energies"], u, rtol=1e-10)
    assert ref.info["energy_ess"] > 0 and "energy_rhat" in ref.info  # per-trajectory diagnostics


def test_openmm_md_ala2(tmp_path):
    pytest.importorskip("openmm")
    t = build_target({"name": "ala2"})
    p = {"n_samples": 6, "burn_in": 50, "thin": 20, "seed": 0, "checkpoint_every": 2}
    ref = GENERATORS.build("openmm_md", p, target=t)(progress=False)
    x = ref.arrays["positions"]
    assert x.shape == (6, 22, 3)
    np.testing.assert_allclose(ref.arrays["energies"], t.energy(torch.as_tensor(x)).numpy(),
                               rtol=1e-8)
    assert ref.info["energy_ess"] > 0 and "energy_rhat" in ref.info
    # the minimised energy is below the starting structure's
    assert ref.info["minimized_energy_kj_mol"] < t.energy(t.init_positions(1)).item() * t.kT
    # resumable: interrupted after a checkpoint, the rerun reproduces the same frames
    ckpt = tmp_path / "ckpt"
    run = GENERATORS.build("openmm_md", {**p, "checkpoint": str(ckpt)}, target=t)
    import flowsci.data.generate.openmm_md as om
    orig = om.Checkpoint.save

    def save_then_crash(self, state):
        orig(self, state)
        raise RuntimeError("simulated crash")

    om.Checkpoint.save = save_then_crash
    try:
        with pytest.raises(RuntimeError):
            run(progress=False)
    finally:
        om.Checkpoint.save = orig
    resumed = run(progress=False)
    np.testing.assert_allclose(resumed.arrays["positions"], x, atol=1e-6)
