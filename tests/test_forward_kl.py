"""Fine-tuning by the path gradient of the forward KL (maximum likelihood from data, with the
target's forces): the gradient against the analytic one of a linear CNF on a Gaussian target,
zero variance at the optimum, agreement with the total gradient of the NLL in expectation, the
round trip it relies on, and a real fine-tuning that recovers the target."""

import math

import pytest
import torch

from _gaussian_flows import D64, Gaussian, linear_flow
from flowsci.flows.cnf import SolverConfig
from flowsci.training import OBJECTIVES


def _objective(target, **params):
    return OBJECTIVES.build("forward_kl", params, target=target)


def _data(s: float, n: int, dim: int, seed: int = 0) -> torch.Tensor:
    return s * torch.randn(n, dim, dtype=D64, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("a", [-0.4, 0.3])
def test_path_gradient_matches_the_analytic_forward_kl_gradient(a):
    """KL(p||q) = D [a - log s + s^2 e^{-2a} / 2 - 1/2], so dKL/da / D = 1 - s^2 e^{-2a}.
    Per sample the estimate is |x|^2 (1/s^2 - e^{-2a}) / D: exact in expectation over x ~ p."""
    dim, s, n = 2, 1.5, 4096
    flow = linear_flow(a, dim)
    x = _data(s, n, dim)
    loss, stats = _objective(Gaussian(s, dim))(flow, x)
    loss.backward()
    expected_on_batch = float((x * x).sum(-1).mean()) * (1 / s**2 - math.exp(-2 * a)) / dim
    assert float(flow.field.a.grad) == pytest.approx(expected_on_batch, rel=1e-6)
    assert float(flow.field.a.grad) == pytest.approx(1 - s**2 * math.exp(-2 * a), rel=0.06)
    # the logged value is the batch's exact NLL (per dof for the loss)
    nll = float((0.5 * (x * x).sum(-1) * math.exp(-2 * a)).mean()) + dim * (
        a + 0.5 * math.log(2 * math.pi))
    assert stats["nll"] == pytest.approx(nll, rel=1e-8)
    assert float(loss.detach()) == pytest.approx(nll / dim, rel=1e-8)


def test_path_gradient_vanishes_sample_by_sample_at_the_optimum():
    """At q = p every data sample's g = d/dx (log q + u) is zero: a zero-variance gradient,
    where the total gradient of the NLL is not zero on a finite batch."""
    dim, s = 3, 0.7
    x = _data(s, 64, dim, seed=1)
    flow = linear_flow(math.log(s), dim)
    loss, _ = _objective(Gaussian(s, dim))(flow, x)
    loss.backward()
    assert abs(float(flow.field.a.grad)) < 1e-8
    flow.zero_grad()
    (-flow.log_prob(x, train=True).mean()).backward()
    assert abs(float(flow.field.a.grad)) > 1e-3


def test_unbiased_like_the_total_nll_gradient_with_a_smaller_variance():
    """Over independent batches both estimate dKL(p||q)/da / D = 1 - s^2 e^{-2a}; the path
    gradient's spread is |1 - s^2 e^{-2a}| / (s^2 e^{-2a}) times the total gradient's here."""
    dim, s, a, n, batches = 2, 1.2, 0.25, 500, 24
    flow = linear_flow(a, dim)
    objective = _objective(Gaussian(s, dim))
    path, total = [], []
    for b in range(batches):
        x = _data(s, n, dim, seed=100 + b)
        flow.zero_grad()
        objective(flow, x)[0].backward()
        path.append(float(flow.field.a.grad))
        flow.zero_grad()
        (-flow.log_prob(x, train=True).mean() / dim).backward()
        total.append(float(flow.field.a.grad))
    path, total = torch.tensor(path), torch.tensor(total)
    exact = 1 - s**2 * math.exp(-2 * a)
    for est in (path, total):
        assert abs(float(est.mean()) - exact) < 4 * float(est.std()) / math.sqrt(batches)
    ratio = abs(exact) / (s**2 * math.exp(-2 * a))
    assert float(path.std() / total.std()) == pytest.approx(ratio, rel=1e-6)


def test_fixed_step_solver_round_trip_is_close_to_the_data():
    """The push-forward from z = T^-1(x) must land back on x (up to the train solver)."""
    flow = linear_flow(0.4, 3, SolverConfig(method="rk4", n_steps=10))
    x = _data(1.0, 32, 3)
    back = flow.push_forward(flow.pull_back(x))
    assert float((back - x).abs().max()) < 1e-6
    assert back.requires_grad and not flow.pull_back(x).requires_grad


def test_fine_tuning_moves_a_wrong_flow_to_the_target():
    dim, s = 2, 1.5
    flow = linear_flow(-0.5, dim)
    objective = _objective(Gaussian(s, dim))
    opt = torch.optim.SGD(flow.parameters(), lr=0.2)
    for step in range(60):
        opt.zero_grad()
        objective(flow, _data(s, 256, dim, seed=10 + step))[0].backward()
        opt.step()
    assert float(flow.field.a.detach()) == pytest.approx(math.log(s), abs=0.03)


class Wall(Gaussian):
    """Infinite energy for x_0 > 3 (data from another target)."""

    def energy(self, x):
        return super().energy(x) + torch.where(x[:, 0] > 3, float("inf"), 0.0)


def test_non_finite_data_or_energy_is_an_error_naming_the_count():
    flow = linear_flow(0.0, 2)
    x = _data(1.0, 8, 2)
    x[2, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="forward_kl: 1 of 8 data samples have non-f"):
        _objective(Gaussian(1.0, 2))(flow, x)
    x[2, 0], x[5, 0] = 4.0, 5.0
    with pytest.raises(FloatingPointError, match="forward_kl: 2 of 8 data samples have a non"):
        _objective(Wall(1.0, 2))(flow, x)


def test_clip_setting_must_be_positive():
    from flowsci.errors import ConfigError

    with pytest.raises(ConfigError, match="forward_kl.*must be > 0"):
        _objective(Gaussian(1.0, 2), clip_gradient=0)
