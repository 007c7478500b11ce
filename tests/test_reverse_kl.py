"""Energy-based fine-tuning (reverse KL with path gradients): the gradient against the analytic
one of a linear CNF on a Gaussian target, zero variance at the optimum, and a real step."""

import math

import pytest
import torch

from _gaussian_flows import D64, Gaussian, linear_flow as _flow
from flowsci.training import OBJECTIVES
from flowsci.training.path_gradients import sample_gradient


def _objective(target, batch):
    return OBJECTIVES.build("reverse_kl", {"batch_size": batch}, target=target)


@pytest.mark.parametrize("a", [-0.4, 0.3])
def test_path_gradient_matches_the_analytic_reverse_kl_gradient(a):
    """KL(q||p) = D [log(s / e^a) + e^{2a} / (2 s^2) - 1/2], so dKL/da / D = e^{2a}/s^2 - 1."""
    dim, s, n = 2, 1.5, 4096
    torch.manual_seed(0)
    flow = _flow(a, dim)
    target = Gaussian(s, dim)
    loss, stats = _objective(target, n)(flow, torch.zeros(n, dim, dtype=D64))
    loss.backward()
    expected = math.exp(2 * a) / s**2 - 1
    assert float(flow.field.a.grad) == pytest.approx(expected, rel=0.05)
    # the logged value is the reverse-KL estimate minus log Z, per dof
    kl = dim * (math.log(s) - a + math.exp(2 * a) / (2 * s**2) - 0.5)
    log_z = 0.5 * dim * math.log(2 * math.pi * s**2)
    assert float(loss.detach()) == pytest.approx((kl - log_z) / dim, abs=0.05)
    assert stats["reverse_kl"] == pytest.approx(kl - log_z, abs=0.1)


def test_path_gradient_vanishes_sample_by_sample_at_the_optimum():
    """Sticking the landing: at q = p every sample's gradient is zero (up to the solver)."""
    dim, s = 3, 0.7
    flow = _flow(math.log(s), dim)
    objective = _objective(Gaussian(s, dim), 64)
    g, _, _ = sample_gradient(flow, objective.target, flow.sample(64, with_log_prob=False))
    assert g.abs().max() < 1e-7
    loss, _ = objective(flow, torch.zeros(64, dim, dtype=D64))
    loss.backward()
    assert abs(float(flow.field.a.grad)) < 1e-7


def test_fine_tuning_moves_a_wrong_flow_to_the_target():
    dim, s = 2, 1.5
    torch.manual_seed(1)
    flow = _flow(-0.5, dim)
    objective = _objective(Gaussian(s, dim), 256)
    opt = torch.optim.Adam(flow.parameters(), lr=0.05)
    for _ in range(60):
        opt.zero_grad()
        loss, _ = objective(flow, torch.zeros(256, dim, dtype=D64))
        loss.backward()
        opt.step()
    assert float(flow.field.a.detach()) == pytest.approx(math.log(s), abs=0.03)


def _two_phase_config(tmp_path, **second):
    from flowsci.config import validate_config

    run = {"system": "dw4", "model": {"name": "egnn", "params": {"hidden": 8, "n_layers": 1}}}
    return validate_config({
        "results_dir": str(tmp_path),
        "systems": {"dw4": {"target": {"name": "dw4"}, "data": {
            "source": "generate", "generator": {"name": "mcmc"}}}},
        "runs": {"first": run, "second": {**run, "init_from": "first", **second}}})


@pytest.mark.parametrize("second, message", [
    ({"init_from": "nope"}, "is not a run"),
    ({"init_from": "second"}, "makes a cycle"),
    ({"model": {"name": "egnn", "params": {"hidden": 16, "n_layers": 1}}}, "the same model"),
    ({"prior": {"scale": 2.0}}, "the same prior")])
def test_init_from_must_name_a_compatible_run(tmp_path, second, message):
    from flowsci.errors import ConfigError

    with pytest.raises(ConfigError, match=f"runs.second.init_from.*{message}"):
        _two_phase_config(tmp_path, **second)


def test_second_phase_starts_from_the_first_phase_ema_weights(tmp_path):
    from flowsci import paths
    from flowsci.errors import DataError
    from flowsci.flows.build import build_flow
    from flowsci.model_file import ModelFile, save_model_file
    from flowsci.stages.train import initial_weights, training_fingerprint
    from flowsci.systems import build_target

    cfg = _two_phase_config(tmp_path)
    target = build_target({"name": "dw4"})
    flow = build_flow(cfg["runs"]["second"], target, "second")
    with pytest.raises(DataError, match="first.*not found.*flowsci train --run first"):
        initial_weights(cfg, "second", flow)
    trained = build_flow(cfg["runs"]["first"], target, "first")
    ema = {k: v + 0.5 for k, v in trained.state_dict().items()}  # EMA differs from raw
    save_model_file(paths.model_file(cfg, "first"),
                    ModelFile.for_run(cfg, "first", ema, trained.state_dict()))
    initial_weights(cfg, "second", flow)
    for k, v in flow.state_dict().items():
        assert torch.equal(v, ema[k]), k
    # the checkpoints of the second phase belong to this first-phase model only
    paths.data_file(cfg, "dw4").parent.mkdir(parents=True, exist_ok=True)
    paths.data_file(cfg, "dw4").write_bytes(b"data")
    before = training_fingerprint(cfg, "second")
    save_model_file(paths.model_file(cfg, "first"),
                    ModelFile.for_run(cfg, "first", trained.state_dict()))
    assert training_fingerprint(cfg, "second") != before


def test_sample_gradients_are_bounded_not_dropped():
    from flowsci.training.path_gradients import bound_sample_gradients

    torch.manual_seed(0)
    g = torch.randn(9, 4, 3, dtype=D64)
    g[3] *= 1e12  # a Lennard-Jones collision
    bounded, n = bound_sample_gradients(g, 10.0)
    norms = g.flatten(1).norm(dim=1)
    new = bounded.flatten(1).norm(dim=1)
    assert n == 1
    assert float(new[3]) == pytest.approx(10 * float(norms.median()), rel=1e-12)
    cos = (bounded[3] * g[3]).sum() / (new[3] * norms[3])
    assert float(cos) == pytest.approx(1.0, abs=1e-12)  # same direction
    keep = torch.arange(9) != 3
    assert torch.equal(bounded[keep], g[keep])
    assert bound_sample_gradients(g, None)[0] is g


class CollidingGaussian(Gaussian):
    """Gaussian plus a steep wall around the origin: samples near 0 get huge |du/dx|."""

    def energy(self, x):
        r2 = (x * x).sum(-1)
        return super().energy(x) + 1e-6 / r2**6


def test_a_colliding_sample_stays_in_the_step_with_a_bounded_gradient():
    dim = 2
    torch.manual_seed(3)
    flow = _flow(0.0, dim)
    target = CollidingGaussian(1.0, dim)
    loss, stats = _objective(target, 256)(flow, torch.zeros(256, dim, dtype=D64))
    loss.backward()
    assert stats["dropped"] == 0 and stats["clipped"] >= 1
    grad = float(flow.field.a.grad)
    assert math.isfinite(grad)
    # unbounded, the few samples near the wall swamp the gradient
    flow.zero_grad()
    torch.manual_seed(3)
    free = OBJECTIVES.build("reverse_kl", {"batch_size": 256, "clip_gradient": None},
                            target=target)
    loss, _ = free(flow, torch.zeros(256, dim, dtype=D64))
    loss.backward()
    assert abs(float(flow.field.a.grad)) > 100 * abs(grad)


@pytest.mark.parametrize("params", [{"clip_gradient": 0}, {"clip_energy": -1.0}])
def test_clip_settings_must_be_positive(params):
    from flowsci.errors import ConfigError

    with pytest.raises(ConfigError, match="reverse_kl.*must be > 0"):
        OBJECTIVES.build("reverse_kl", params, target=Gaussian(1.0, 2))
