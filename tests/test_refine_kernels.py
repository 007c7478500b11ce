"""Local kernels, flow-assisted MCMC and resample-move on analytic targets: hand-computed
acceptance probabilities, detailed balance, exact stationary distributions of Gaussian
mixtures with a deliberately poor Gaussian 'flow', unbiased resample-move means, frozen
adaptation, and the chain statistics."""

import math

import numpy as np
import pytest
import torch
from scipy import stats as sps

from flowsci.refine import (KERNELS, ChainState, DualAveraging, FlowMCMC, Potential,
                            build_kernel, resample_move, run_flow_mcmc)
from flowsci.refine.flow_mcmc import independence_log_alpha
from flowsci.refine.hmc import hamiltonian, leapfrog
from flowsci.refine.mala import mala_log_alpha, mala_log_proposal
from flowsci.refine.potential import atomic_masses, potential_for
from flowsci.refine.stats import (ancestry_error, ancestry_ess, batch_means_error,
                                  chain_summary, split_rhat)

D64 = torch.float64
# 1-D mixture p(x) = 0.7 N(-1.5, 0.6^2) + 0.3 N(1.5, 0.6^2); a poor flow q = N(0.8, 1.6^2)
W, MU, S = (0.7, 0.3), (-1.5, 1.5), 0.6
Q_MU, Q_S = 0.8, 1.6


def mixture_u(x: torch.Tensor) -> torch.Tensor:
    """-log p (normalised) of the 1-D mixture; x [B, 1] (or [B, d]: independent coords)."""
    comps = torch.stack([math.log(w) - 0.5 * ((x - m) / S) ** 2 - math.log(S * math.sqrt(2 * math.pi))
                         for w, m in zip(W, MU)])
    return -torch.logsumexp(comps, 0).sum(-1)


def mixture_cdf(x):
    return sum(w * sps.norm.cdf(x, m, S) for w, m in zip(W, MU))


def gauss_log_q(x: torch.Tensor) -> torch.Tensor:
    return (-0.5 * ((x - Q_MU) / Q_S) ** 2 - math.log(Q_S * math.sqrt(2 * math.pi))).sum(-1)


def pool(n: int, dim: int, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    x = Q_MU + Q_S * torch.randn(n, dim, generator=g, dtype=D64)
    return {"x": x, "log_q": gauss_log_q(x), "u": mixture_u(x)}


def harmonic(x):
    return 0.5 * (x * x).flatten(1).sum(-1)


def test_mala_acceptance_against_hand_computed_value():
    # u = x^2/2, eps = 0.4, x = 0.5 -> x' = 0.9 (grad u = x):
    # log q(x'|x) = -(0.9 - 0.5 + 0.08 * 0.5)^2 / 0.32 = -0.605
    # log q(x|x') = -(0.5 - 0.9 + 0.08 * 0.9)^2 / 0.32 = -0.3362
    # log alpha = u(x) - u(x') + log q(x|x') - log q(x'|x) = 0.125 - 0.405 - 0.3362 + 0.605
    old = ChainState(torch.tensor([[0.5]], dtype=D64), torch.tensor([0.125], dtype=D64),
                     torch.tensor([[0.5]], dtype=D64))
    new = ChainState(torch.tensor([[0.9]], dtype=D64), torch.tensor([0.405], dtype=D64),
                     torch.tensor([[0.9]], dtype=D64))
    assert float(mala_log_proposal(new.x, old.x, old.grad, 0.4)) == pytest.approx(-0.605)
    assert float(mala_log_alpha(old, new, 0.4)) == pytest.approx(-0.0112)


def test_mala_step_uses_that_acceptance():
    pot = Potential(harmonic)
    k = build_kernel("mala", pot, "lattice")
    x = torch.tensor([[0.5], [-1.0], [2.0]], dtype=D64)
    u, g = pot.value_and_grad(x)
    gen = torch.Generator().manual_seed(3)
    xi = torch.randn(x.shape, generator=torch.Generator().manual_seed(3), dtype=D64)
    new, prob = k.step(ChainState(x, u, g), 0.7, gen)
    x_prop = x - 0.5 * 0.49 * x + 0.7 * xi
    hand = []
    for a, b in zip(x[:, 0].tolist(), x_prop[:, 0].tolist()):  # scalar formula, by hand
        fwd = -(b - a + 0.245 * a) ** 2 / 0.98
        bwd = -(a - b + 0.245 * b) ** 2 / 0.98
        hand.append(min(1.0, math.exp(0.5 * a * a - 0.5 * b * b + bwd - fwd)))
    assert prob.tolist() == pytest.approx(hand)
    moved = (new.x != x).flatten()
    assert torch.equal(new.x[moved], x_prop[moved])


def test_hmc_acceptance_against_hand_computed_value():
    # u = x^2/2, one leapfrog step eps = 0.5 from x = 1, v = 0.5:
    # v(1/2) = 0.5 - 0.25 = 0.25; x' = 1.125; v' = 0.25 - 0.28125 = -0.03125
    # H = 0.5 + 0.125 = 0.625; H' = 0.6328125 + 0.00048828125 -> log alpha = -0.00830078125
    pot = Potential(harmonic)
    x = torch.tensor([[1.0]], dtype=D64)
    u, g = pot.value_and_grad(x)
    st, v = ChainState(x, u, g), torch.tensor([[0.5]], dtype=D64)
    new, v_new = leapfrog(pot, st, v, 0.5, 1)
    assert float(new.x) == pytest.approx(1.125) and float(v_new) == pytest.approx(-0.03125)
    log_alpha = hamiltonian(pot, st, v) - hamiltonian(pot, new, v_new)
    assert float(log_alpha) == pytest.approx(-0.00830078125)


def test_hmc_with_atomic_masses_stays_on_the_zero_centroid_subspace():
    class Mol:  # three atoms (O, H, H) with a harmonic energy
        kind, name, atomic_numbers = "particles", "mol", [8, 1, 1]
    pot = Potential(lambda x: harmonic(x - x.mean(1, keepdim=True)), centre=True,
                    masses=atomic_masses(Mol()))
    k = KERNELS.build("hmc", {"n_leapfrog": 4}, potential=pot)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, 3, 3, generator=gen, dtype=D64)
    x = x - x.mean(1, keepdim=True)
    st = ChainState(x, *pot.value_and_grad(x))
    for _ in range(5):
        st, prob = k.step(st, 0.2, gen)
    assert st.x.mean(1).abs().max() < 1e-12
    assert float(prob.mean()) > 0.8  # a small step conserves H


def test_molecular_settings_are_refused_for_lattices():
    from flowsci.systems import build_target
    with pytest.raises(ValueError, match="molecular"):
        potential_for(build_target({"name": "phi4", "params": {"shape": [4, 4]}}), "atomic")
    with pytest.raises(ValueError, match="molecular"):
        potential_for(build_target({"name": "dw4"}), "atomic")  # generic particles: no elements


@pytest.mark.parametrize("kernel", ["mala", "hmc"])
def test_detailed_balance_of_each_move(kernel):
    """p(x) T(x -> x') = p(x') T(x' -> x) for the local proposal densities (MALA) and the
    global independence move, on random pairs of states."""
    g = torch.Generator().manual_seed(1)
    x, y = (torch.randn(200, 1, generator=g, dtype=D64) * 2 for _ in range(2))
    pot = Potential(mixture_u)
    sx, sy = ChainState(x, *pot.value_and_grad(x)), ChainState(y, *pot.value_and_grad(y))
    clip = (lambda la: torch.clamp(la, max=0.0))
    if kernel == "mala":
        eps = 0.8
        lhs = -sx.u + mala_log_proposal(y, x, sx.grad, eps) + clip(mala_log_alpha(sx, sy, eps))
        rhs = -sy.u + mala_log_proposal(x, y, sy.grad, eps) + clip(mala_log_alpha(sy, sx, eps))
        assert torch.allclose(lhs, rhs, atol=1e-10)
    lqx, lqy = gauss_log_q(x), gauss_log_q(y)
    lhs = -sx.u + lqy + clip(independence_log_alpha(sx.u, lqx, sy.u, lqy))
    rhs = -sy.u + lqx + clip(independence_log_alpha(sy.u, lqy, sx.u, lqx))
    assert torch.allclose(lhs, rhs, atol=1e-10)


def _run_mcmc(kernel, dim, n_chains, n_cycles, n_local, seed, global_moves=True,
              wrong_log_q=False, burn_in=10):
    pot = Potential(mixture_u)
    params = {"n_leapfrog": 3} if kernel == "hmc" else {}
    k = build_kernel(kernel, pot, "lattice", params)
    pl = pool(n_chains * (n_cycles + burn_in + 8), dim, seed)
    lq_fn = gauss_log_q
    if wrong_log_q:  # a sampler that forgets q in the ratio: must fail the test below
        pl["log_q"] = torch.zeros_like(pl["log_q"])
        lq_fn = (lambda x: torch.zeros(len(x), dtype=D64))
    s = FlowMCMC(k, lq_fn, pl, n_chains, n_local, n_cycles, burn_in,
                 DualAveraging(0.5, target=0.6), torch.Generator().manual_seed(seed),
                 global_moves=global_moves)
    return run_flow_mcmc(s)


EDGES = np.array([-np.inf, -2.5, -1.8, -1.3, -0.8, 0.0, 0.8, 1.3, 1.8, 2.5, np.inf])


@pytest.mark.parametrize("kernel", ["mala", "hmc"])
def test_local_kernels_alone_keep_the_mixture_invariant(kernel):
    """Chains started from p (resampled pool) stay distributed as p under local steps only."""
    res = _run_mcmc(kernel, 1, 3000, 20, 2, seed=6, global_moves=False)
    counts = np.histogram(res.x[-1, :, 0], EDGES)[0]
    probs = np.diff(mixture_cdf(EDGES))
    assert sps.chisquare(counts, probs * counts.sum()).pvalue > 1e-3


@pytest.mark.parametrize("kernel,dim", [("mala", 1), ("hmc", 2)])
def test_flow_mcmc_samples_the_exact_mixture(kernel, dim):
    """Final states of many independent chains follow p: chi-square against the exact bin
    probabilities of each coordinate (the mixture factorises over coordinates)."""
    res = _run_mcmc(kernel, dim, 1500, 30, 2, seed=5)
    edges = EDGES
    probs = np.diff(mixture_cdf(edges))
    for d in range(dim):
        counts = np.histogram(res.x[-1, :, d], edges)[0]
        p_value = sps.chisquare(counts, probs * counts.sum()).pvalue
        assert p_value > 1e-3, (d, counts, probs * counts.sum())
    assert 0.05 < np.nanmean(res.global_accept) < 0.9 and np.nanmean(res.local_accept) > 0.3
    # the same test rejects a sampler that leaves q out of the acceptance ratio
    bad = _run_mcmc(kernel, dim, 1500, 30, 0 if kernel == "mala" else 1, seed=5,
                    wrong_log_q=True)
    counts = np.histogram(bad.x[-1, :, 0], edges)[0]
    assert sps.chisquare(counts, probs * counts.sum()).pvalue < 1e-6


def test_plain_local_chains_without_global_moves_use_no_log_q():
    res = _run_mcmc("mala", 1, 20, 40, 3, seed=2, global_moves=False)
    assert res.n_log_q == 0 and np.isnan(res.global_accept).all() and res.pool_used == 0
    assert res.n_evals == 20 * (1 + 3 * 50)  # initial state + K steps per cycle (incl. burn-in)
    with pytest.raises(ValueError, match="no moves"):
        _run_mcmc("mala", 1, 20, 40, 0, seed=2, global_moves=False)


def test_log_q_is_solved_once_per_moved_chain_per_cycle():
    res = _run_mcmc("mala", 1, 8, 20, 2, seed=4)
    # at most one solve per chain and cycle; none for a chain whose local steps all failed
    assert 0 < res.n_log_q <= 8 * 30


def test_adaptation_is_frozen_after_burn_in():
    pot = Potential(mixture_u)
    k = build_kernel("mala", pot, "lattice")
    s = FlowMCMC(k, gauss_log_q, pool(4000, 1, 0), 40, 3, 30, 20, DualAveraging(2.0),
                 torch.Generator().manual_seed(0))
    steps = []
    while not s.done:
        s.run_cycle()
        steps.append(s.adapt.step_size)
    assert len(set(steps[:19])) > 5  # adapting during burn-in
    assert len(set(steps[19:])) == 1 and s.adapt.frozen
    assert steps[19] == pytest.approx(math.exp(s.adapt.log_eps_bar))
    assert abs(np.nanmean(s.result().local_accept) - 0.6) < 0.15  # near the target


def test_resample_move_means_are_unbiased_over_replicates():
    exact = sum(w * m for w, m in zip(W, MU))
    means, errs = [], []
    for rep in range(24):
        pot = Potential(mixture_u)
        res = resample_move(build_kernel("mala", pot, "lattice"), pool(1500, 1, 100 + rep),
                            1500, 4, 3, 1, DualAveraging(0.6), torch.Generator().manual_seed(rep))
        means.append(res.x[:, 0].mean())
        errs.append(ancestry_error(res.x[:, 0], res.ancestors))
        assert res.distinct_ancestors[0] == res.distinct_ancestors[-1] < 1500
        assert res.distinct_configurations[-1] > res.distinct_configurations[0]
    means = np.array(means)
    sd = means.std(ddof=1)
    assert abs(means.mean() - exact) < 4 * sd / math.sqrt(len(means))
    assert 0.5 < np.mean(errs) / sd < 2.0  # the ancestry-aware error is calibrated


def test_split_rhat_and_batch_means_error():
    rng = np.random.default_rng(0)
    iid = rng.normal(size=(2000, 4))
    assert split_rhat(iid) == pytest.approx(1.0, abs=0.01)
    assert split_rhat(iid + np.array([0.0, 0.0, 0.0, 1.0])) > 1.1
    # AR(1) chains with phi = 0.9: tau = (1 + phi) / (1 - phi) = 19, var = 1 / (1 - phi^2)
    phi, t, c = 0.9, 20000, 4
    x = np.zeros((t, c))
    e = rng.normal(size=(t, c))
    for i in range(1, t):
        x[i] = phi * x[i - 1] + e[i]
    s = chain_summary(x)
    exact_err = math.sqrt(19 / (1 - phi**2) / (t * c))
    assert s["tau"] == pytest.approx(19, rel=0.2)
    assert s["err"] == pytest.approx(exact_err, rel=0.3)
    assert batch_means_error(x, 1.0) < 0.6 * exact_err  # too-short blocks underestimate


def test_ancestry_error_reduces_to_the_iid_error_for_distinct_ancestors():
    f = np.random.default_rng(1).normal(size=500)
    assert ancestry_error(f, np.arange(500)) == pytest.approx(f.std() / math.sqrt(500))
    dup = np.repeat(f[:100], 5)  # five copies of each of 100 values
    assert ancestry_error(dup, np.repeat(np.arange(100), 5)) == pytest.approx(
        f[:100].std() / math.sqrt(100))


def test_ancestry_ess_is_bounded_by_the_distinct_ancestors():
    """Particles resampled from one or two flow samples carry one or two samples' information,
    however far the moves spread them (the Chan-Lai sum is zero by construction for one)."""
    f = np.random.default_rng(2).normal(size=200)
    assert math.isnan(ancestry_error(f, np.zeros(200)))
    assert math.isnan(ancestry_ess(f, np.zeros(200)))  # was ~1e35
    two = np.repeat([0, 1], [150, 50])
    assert 0 < ancestry_ess(f, two) <= 2  # was 362 > N
    distinct = ancestry_ess(f, np.arange(200))  # unbounded in practice: ~N for iid values
    assert 150 < distinct <= 200
