"""Reweighting on an analytic target: a 2D Gaussian mixture with a deliberately off proposal."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from scipy.special import logsumexp

from flowsci.reweighting import (bar_log_partition, ess_fraction, estimate, free_energy_differences,
                                 histogram, independence_mh, kish_ess, log_mean_weight,
                                 log_weights, pareto_khat, reweighted_mean, top_weights)

# target: p(x) = 0.7 N((-2, 0), I) + 0.3 N((2, 0), I), normalised, u = -log p (kT)
W, MU = np.array([0.7, 0.3]), np.array([[-2.0, 0.0], [2.0, 0.0]])
TRUE_MEAN_X0 = float(W @ MU[:, 0])                          # -0.8
P_RIGHT = float(W[0] * stats.norm.sf(2.0) + W[1] * stats.norm.cdf(2.0))  # P(x0 > 0)
TRUE_DF = -np.log(P_RIGHT / (1 - P_RIGHT))                  # F(right) - F(left), kT


def u_target(x: np.ndarray) -> np.ndarray:
    comp = [np.log(w) + stats.multivariate_normal(m, np.eye(2)).logpdf(x) for w, m in zip(W, MU)]
    return -logsumexp(np.stack(comp), axis=0)


def proposal(n: int, rng: np.random.Generator, scale: float = 2.0, shift: float = 0.8):
    """Off proposal: centred at +shift (wrong side), broader than the target; exact log q."""
    q = stats.multivariate_normal([shift, 0.0], scale**2 * np.eye(2))
    x = q.rvs(n, random_state=rng)
    return x, q.logpdf(x)


def test_reweighted_mean_and_free_energy_agree_raw_do_not():
    rng = np.random.default_rng(0)
    x, log_q = proposal(4000, rng)
    lw = log_weights(u_target(x), log_q)
    rw = reweighted_mean(x[:, 0], lw, n_boot=300, seed=1)
    raw = reweighted_mean(x[:, 0], None, n_boot=300, seed=1)
    assert abs(rw.value - TRUE_MEAN_X0) < 3 * rw.err, (rw.value, rw.err)
    assert abs(raw.value - TRUE_MEAN_X0) > 10 * raw.err, (raw.value, raw.err)
    states = {"left": x[:, 0] < 0, "right": x[:, 0] >= 0}
    fe = free_energy_differences(states, lw, n_boot=300, seed=1)["right"]
    fe_raw = free_energy_differences(states, None, n_boot=300, seed=1)["right"]
    assert abs(fe.value - TRUE_DF) < 3 * fe.err, (fe.value, fe.err, TRUE_DF)
    assert abs(fe_raw.value - TRUE_DF) > 10 * fe_raw.err
    assert free_energy_differences(states, lw)["left"].value == 0.0


def test_reweighted_histogram_matches_exact_marginal():
    rng = np.random.default_rng(3)
    x, log_q = proposal(6000, rng)
    lw = log_weights(u_target(x), log_q)
    edges = np.linspace(-5, 4, 19)
    h = histogram(x[:, 0], edges, lw, n_boot=200, seed=0)
    exact = sum(w * np.diff(stats.norm.cdf(edges, m[0], 1.0)) for w, m in zip(W, MU)) / np.diff(edges)
    chi2 = np.mean(((h.value - exact) / h.err) ** 2)
    assert chi2 < 2.5, chi2   # ~1 if the errors are right


def test_ess_limits():
    assert kish_ess(np.zeros(500)) == pytest.approx(500)
    assert ess_fraction(np.full(500, -3.2)) == pytest.approx(1.0)
    lw = np.full(500, -1000.0)
    lw[7] = 0.0
    assert kish_ess(lw) == pytest.approx(1.0)
    assert top_weights(lw, 3)[0] == pytest.approx(1.0)
    lw[9] = -np.inf                     # failed samples count as zero weight
    assert kish_ess(lw) == pytest.approx(1.0)


def test_bootstrap_interval_coverage():
    """1σ and 2σ bootstrap intervals of the reweighted mean cover the truth at ~68 % / ~95 %."""
    rng = np.random.default_rng(11)
    trials, hit1, hit2 = 300, 0, 0
    for t in range(trials):
        x, log_q = proposal(400, rng, scale=2.0, shift=0.0)
        est = reweighted_mean(x[:, 0], log_weights(u_target(x), log_q), n_boot=100, seed=t)
        z = abs(est.value - TRUE_MEAN_X0) / est.err
        hit1 += z < 1
        hit2 += z < 2
    # binomial sd at n = 300: 2.7 % (68 %) and 1.3 % (95 %); self-normalised IS is slightly
    # biased at N = 400, so the bands are generous but exclude a factor-2 error misestimate
    assert 0.58 < hit1 / trials < 0.78, hit1 / trials
    assert 0.88 < hit2 / trials < 0.99, hit2 / trials


def test_estimate_nonlinear_finalize_and_shapes():
    rng = np.random.default_rng(0)
    v = rng.normal(2.0, 1.5, size=(5000, 3))
    res = estimate({"v": v}, None, finalize=lambda m: {"mean": m["v"], "ratio": m["v"][0] / m["v"][1]},
                   n_boot=100)
    assert res["mean"].value.shape == (3,) and res["mean"].err.shape == (3,)
    assert res["mean"].err == pytest.approx(1.5 / np.sqrt(5000), rel=0.25)
    assert res["ratio"].value == pytest.approx(1.0, abs=0.05)
    lo, hi = res["ratio"].interval(0.95)
    assert lo < res["ratio"].value < hi
    with pytest.raises(ValueError):
        estimate({"a": np.ones(3), "b": np.ones(4)})


def test_pareto_khat():
    rng = np.random.default_rng(5)
    for c in (0.1, 0.5, 0.9):   # fit of the 424 largest of 20000: sd of k̂ about 0.05
        k = pareto_khat(np.log(stats.genpareto.rvs(c, size=20000, random_state=rng)))
        assert k == pytest.approx(c, abs=0.15)
    # Gaussian proposal of width s for a unit Gaussian target: tail k = 1 - s² for s < 1,
    # bounded weights (k < 0) for s > 1
    x = rng.normal(0, 2.0, 20000)
    assert pareto_khat(-x**2 / 2 - stats.norm(0, 2.0).logpdf(x)) < 0.3
    x = rng.normal(0, 0.3, 20000)
    assert pareto_khat(-x**2 / 2 - stats.norm(0, 0.3).logpdf(x)) > 0.7
    assert np.isnan(pareto_khat(np.zeros(5)))


@pytest.mark.parametrize("n", [50, 101, 999, 4321])
def test_pareto_khat_equals_the_reference_psis_implementation(n):
    """ArviZ's psislw (the reference implementation, r_eff = 1): same tail length
    ceil(min(N/5, 3 sqrt(N))), same fit, so the same k̂ to round-off."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ArviZ's refactoring notice on import
        import arviz

    rng = np.random.default_rng(n)
    for scale in (0.5, 1.5, 3.0):
        lw = rng.normal(0, scale, n)
        _, k_ref = arviz.psislw(lw.copy(), reff=1.0)
        assert pareto_khat(lw) == pytest.approx(float(k_ref), abs=1e-12)


def test_independence_mh():
    rng = np.random.default_rng(2)
    x, log_q = proposal(20000, rng)
    u = u_target(x)
    exact = independence_mh(-u + 3.0, u, seed=0)      # proposal == target (up to a constant)
    assert exact.acceptance == 1.0 and len(exact.chain) == 20000
    assert exact.tau == pytest.approx(1.0, abs=0.2)
    mh = independence_mh(log_q, u, seed=0, observable=x[:, 0])
    assert 0.1 < mh.acceptance < 0.9
    xs = x[mh.chain, 0]
    err = xs.std() * np.sqrt(mh.tau / len(xs))
    assert mh.tau > 1.2
    assert abs(xs.mean() - TRUE_MEAN_X0) < 3 * err, (xs.mean(), err)
    bad = log_q.copy()
    bad[5:10] = np.nan                                  # failed proposals are never accepted
    assert not np.isin(np.arange(5, 10), independence_mh(bad, u, 50).chain).any()


def test_log_partition_is_and_bar():
    """Unnormalised 2D Gaussian u = |x|²/2: log Z = log 2π."""
    rng = np.random.default_rng(4)
    q = stats.multivariate_normal([0.5, 0.0], 1.5**2 * np.eye(2))
    xf, xd = q.rvs(5000, random_state=rng), rng.normal(size=(5000, 2))
    lw_f = -0.5 * (xf**2).sum(1) - q.logpdf(xf)
    lw_d = -0.5 * (xd**2).sum(1) - q.logpdf(xd)
    assert log_mean_weight(lw_f) == pytest.approx(np.log(2 * np.pi), abs=0.05)
    log_z, err = bar_log_partition(lw_f, lw_d)
    assert 0 < err < 0.05
    assert abs(log_z - np.log(2 * np.pi)) < 4 * err


def test_reference_energies_from_user_files_are_rescored_with_the_target(tmp_path):
    """Stored energies of generated data are the target's; a user file's may not be."""
    import torch

    from flowsci.data.hdf5 import make_splits, provenance, write_h5
    from flowsci.stages.reweight import read_reference
    from flowsci.systems import build_target

    x = np.random.default_rng(0).normal(size=(20, 4, 2)) * 2
    u_target = build_target({"name": "dw4"}).energy(torch.as_tensor(x)).numpy()
    for source, expected in (({"generator": "mcmc"}, np.zeros(20)),
                             ({"path": "traj.extxyz", "sha256": "0"}, u_target)):
        p = tmp_path / f"{len(source)}.h5"
        write_h5(p, {"positions": x, "atomic_numbers": np.zeros(4, int),
                     "energies": np.zeros(20)},
                 provenance("particles", "dw4", units="reduced", temperature=1.0,
                            source=source, config={}),
                 groups={"splits": make_splits(20, {"train": 0.5, "val": 0.0, "test": 0.5})})
        ref = read_reference(p, build_target({"name": "dw4"}))
        idx = np.sort(make_splits(20, {"train": 0.5, "val": 0.0, "test": 0.5})["test"])
        np.testing.assert_allclose(ref["u"], expected[idx])


def _ar1(n: int, phi: float, seed: int) -> np.ndarray:
    """AR(1) with unit marginal variance: tau_int = (1 + phi) / (1 - phi)."""
    rng = np.random.default_rng(seed)
    e = rng.normal(0, np.sqrt(1 - phi**2), n)
    x = np.empty(n)
    x[0] = rng.normal()
    for t in range(1, n):
        x[t] = phi * x[t - 1] + e[t]
    return x


def test_block_bootstrap_gives_the_analytic_error_of_a_correlated_mean():
    """AR(1), phi = 0.9: the standard error of the mean is sqrt(tau_int / N) with tau_int = 19.
    The moving-block bootstrap recovers it; the iid bootstrap is too small by ~sqrt(19)."""
    from flowsci.reweighting import block_length

    n, phi = 20000, 0.9
    x = _ar1(n, phi, seed=3)
    exact = np.sqrt((1 + phi) / (1 - phi) / n)
    b = block_length(x)
    assert 60 <= b <= 140  # 5 tau_int = 95
    blocked = estimate({"x": x}, n_boot=400, seed=1, block=b)["x"].err
    iid = estimate({"x": x}, n_boot=400, seed=1)["x"].err
    assert float(blocked) == pytest.approx(exact, rel=0.15)
    assert float(exact / iid) == pytest.approx(np.sqrt(19), rel=0.15)


def test_block_bootstrap_of_independent_samples_matches_the_iid_error():
    from flowsci.reweighting import block_length

    x = np.random.default_rng(0).normal(size=5000)
    b = block_length(x)
    assert b <= 10
    err = estimate({"x": x}, n_boot=400, seed=2, block=b)["x"].err
    assert float(err) == pytest.approx(1 / np.sqrt(5000), rel=0.12)
    # block = 1 is exactly the multinomial bootstrap
    a = estimate({"x": x}, n_boot=50, seed=5)["x"].err
    assert float(estimate({"x": x}, n_boot=50, seed=5, block=1)["x"].err) == float(a)
