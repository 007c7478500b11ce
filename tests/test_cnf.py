"""CNF core: analytic linear flow, divergence estimators, adjoint gradients, round trip."""

import math

import pytest
import torch
from torch import nn

from flowsci.flows import CNF, LikelihoodEstimate, SolverConfig, StandardGaussian
from flowsci.flows.divergence import draw_probe, exact_divergence, hutchinson_divergence

D64 = torch.float64


class Linear(nn.Module):
    """f(t, z) = A z."""

    def __init__(self, A: torch.Tensor):
        super().__init__()
        self.A = nn.Parameter(A.clone())

    def forward(self, t, x):
        return x @ self.A.T


class SmallMLP(nn.Module):
    def __init__(self, d=2, h=16):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d + 1, h), nn.Tanh(), nn.Linear(h, h), nn.Tanh(),
                                 nn.Linear(h, d))

    def forward(self, t, x):
        tt = torch.as_tensor(t, dtype=x.dtype).reshape(1, 1).expand(x.shape[0], 1)
        return self.net(torch.cat([x, tt], -1))


def test_linear_flow_matches_analytic_log_density():
    """Slides (seed 001): log p(x) = -(e^{-2a1}x1^2 + e^{-2a2}x2^2)/2 - log 2pi - (a1 + a2)."""
    a1, a2 = 0.7, -0.4
    cnf = CNF(Linear(torch.diag(torch.tensor([a1, a2], dtype=D64))), StandardGaussian((2,)).to(D64),
              SolverConfig(method="dopri5", rtol=1e-10, atol=1e-10))
    x = torch.randn(64, 2, dtype=D64) * 2
    analytic = (-0.5 * (math.exp(-2 * a1) * x[:, 0] ** 2 + math.exp(-2 * a2) * x[:, 1] ** 2)
                - math.log(2 * math.pi) - (a1 + a2))
    torch.testing.assert_close(cnf.log_prob(x), analytic, atol=1e-6, rtol=0)
    # a non-diagonal A: log q(x) = log N(expm(-A) x) - tr A
    A = torch.tensor([[0.3, 0.5], [-0.2, 0.1]], dtype=D64)
    cnf = CNF(Linear(A), StandardGaussian((2,)).to(D64),
              SolverConfig(method="dopri5", rtol=1e-10, atol=1e-10))
    z = x @ torch.linalg.matrix_exp(-A).T
    expected = StandardGaussian((2,)).to(D64).log_prob(z) - torch.trace(A)
    torch.testing.assert_close(cnf.log_prob(x), expected, atol=1e-6, rtol=0)


def test_exact_divergence_equals_autograd_jacobian_trace():
    field = SmallMLP(3).to(D64)
    x = torch.randn(5, 3, dtype=D64, requires_grad=True)
    div = exact_divergence(field(0.3, x), x)
    for b in range(5):
        J = torch.autograd.functional.jacobian(lambda v: field(0.3, v[None])[0], x[b].detach())
        assert div[b].item() == pytest.approx(torch.trace(J).item(), abs=1e-12)


@pytest.mark.parametrize("kind", ["rademacher", "gaussian"])
def test_hutchinson_mean_within_three_standard_errors(kind):
    field = SmallMLP(4).to(D64)
    x0 = torch.randn(1, 4, dtype=D64)
    n = 10_000
    x = x0.expand(n, 4).clone().requires_grad_(True)
    x1 = x0.clone().requires_grad_(True)
    exact = exact_divergence(field(0.5, x1), x1)[0].item()
    est = hutchinson_divergence(field(0.5, x), x, probe=draw_probe(x, kind))
    sem = est.std().item() / math.sqrt(n)
    assert abs(est.mean().item() - exact) < 3 * sem
    assert sem > 0  # the estimator is stochastic; the check is not vacuous


def test_adjoint_gradients_match_direct_backprop():
    torch.manual_seed(1)
    field = SmallMLP(2).to(D64)
    x = torch.randn(16, 2, dtype=D64)
    grads = []
    for adjoint in (True, False):
        cnf = CNF(field, StandardGaussian((2,)).to(D64),
                  SolverConfig(method="dopri5", rtol=1e-9, atol=1e-9, adjoint=adjoint))
        field.zero_grad()
        (-cnf.log_prob(x, divergence="exact", train=True).mean()).backward()
        grads.append(torch.cat([p.grad.flatten() for p in field.parameters()]))
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-7)


def test_sample_then_log_prob_round_trip():
    field = SmallMLP(2).to(D64)
    cnf = CNF(field, StandardGaussian((2,)).to(D64),
              SolverConfig(method="dopri5", rtol=1e-8, atol=1e-8))
    x, logq = cnf.sample(64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(cnf.log_prob(x), logq, atol=1e-5, rtol=0)


def test_density_integrates_to_one_on_grid():
    field = SmallMLP(2).to(D64)
    cnf = CNF(field, StandardGaussian((2,)).to(D64),
              SolverConfig(method="dopri5", rtol=1e-7, atol=1e-7))
    g = torch.linspace(-7, 7, 141, dtype=D64)
    xx, yy = torch.meshgrid(g, g, indexing="ij")
    pts = torch.stack([xx.flatten(), yy.flatten()], -1)
    with torch.no_grad():
        logq = torch.cat([cnf.log_prob(p) for p in pts.split(5000)])
    mass = logq.exp().sum().item() * (g[1] - g[0]).item() ** 2
    assert mass == pytest.approx(1.0, abs=1e-3)


def test_nfe_is_counted():
    cnf = CNF(SmallMLP(2), StandardGaussian((2,)), SolverConfig(method="rk4", n_steps=5))
    cnf.log_prob(torch.randn(4, 2))
    assert cnf.nfe == 20
    cnf.sample(3, with_log_prob=False)  # sampling without log q goes through the dynamics too
    assert cnf.nfe == 40


def test_regularisers_match_analytic_linear_flow():
    """f = diag(a) z: int_0^1 |f|^2 dt = sum a_i x_i^2 (1 - e^{-2 a_i}) / 2 and, with a
    Rademacher probe, int |eps^T A|^2 dt = sum a_i^2 (both divided by D = 2)."""
    a = torch.tensor([0.5, -0.3], dtype=D64)
    cnf = CNF(Linear(torch.diag(a)), StandardGaussian((2,)).to(D64),
              SolverConfig(method="dopri5", rtol=1e-10, atol=1e-10, adjoint=False))
    x = torch.randn(8, 2, dtype=D64)
    out = cnf.training_log_prob(x, LikelihoodEstimate("hutchinson", regularise=True))
    logq, kin, frob = out.log_q, out.kinetic, out.jacobian_frob
    expected_kin = (a * x**2 * (1 - torch.exp(-2 * a)) / 2).sum(-1) / 2
    torch.testing.assert_close(kin, expected_kin, atol=1e-7, rtol=0)
    torch.testing.assert_close(frob, torch.full((8,), (a**2).sum().item() / 2, dtype=D64),
                               atol=1e-7, rtol=0)
    # with a linear field the Hutchinson trace is exact for diagonal A and Rademacher probes
    torch.testing.assert_close(logq, cnf.log_prob(x), atol=1e-7, rtol=0)


def test_cnf_uses_a_fields_analytic_divergence_and_it_is_exact():
    from flowsci.flows.cnf import AugmentedDynamics
    from flowsci.models import build_field
    from flowsci.systems import LatticeTarget

    field = build_field({"name": "lattice_conv", "params": {"arch": "gerdes"}},
                        LatticeTarget(shape=(4, 4))).to(D64)
    with torch.no_grad():  # the default init is near zero: make the divergence non-trivial
        for p in field.parameters():
            p.add_(0.3 * torch.randn_like(p))
    assert field.analytic_divergence
    dyn = AugmentedDynamics(field, "exact")
    x = torch.randn(3, 4, 4, dtype=D64)
    t = torch.tensor(0.4, dtype=D64)
    _, neg_div = dyn(t, (x, torch.zeros(3, dtype=D64)))
    xr = x.clone().requires_grad_(True)
    reference = exact_divergence(field(t, xr), xr)
    assert reference.abs().min() > 1e-3
    torch.testing.assert_close(-neg_div, reference, atol=1e-10, rtol=0)
