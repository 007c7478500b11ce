"""RealNVP coupling baseline: exact inverse and log-determinant, symmetries, and the flow
interface shared with the CNF (log_prob kwargs, sample, nfe, build_flow, likelihood loss)."""

from __future__ import annotations

import pytest
import torch

from flowsci.errors import ConfigError
from flowsci.flows import Flow, prior_for
from flowsci.flows.build import FLOW_MODELS, build_flow
from flowsci.flows.coupling import RealNVP, checkerboard
from flowsci.systems import LatticeTarget, ParticleTarget
from flowsci.testing import assert_invariant



def make(shape=(4, 4), dtype=torch.float64, seed: int = 0, **params) -> RealNVP:
    torch.manual_seed(seed)
    target = LatticeTarget(shape=shape)
    flow = RealNVP(target, prior_for(target), **{"n_layers": 4, "hidden": 8, "n_conv": 2,
                                                 **params})
    with torch.no_grad():  # the last convs start at zero (identity map): randomise them
        for layer in flow.layers:
            layer.convs[-1].weight.normal_(0.0, 0.2)
            layer.convs[-1].bias.normal_(0.0, 0.2)
    return flow.to(dtype)


def phi(shape=(4, 4), batch: int = 5, dtype=torch.float64, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, *shape, generator=g, dtype=torch.float64).to(dtype)


def test_checkerboard_masks_partition():
    a, b = checkerboard((4, 4), 0), checkerboard((4, 4), 1)
    assert torch.equal(a + b, torch.ones(4, 4)) and a.sum() == 8 and a[0, 0] == 1


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape", [(6,), (4, 4), (2, 4, 4)])
def test_round_trip(shape, dtype):
    flow = make(shape, dtype)
    z = phi(shape, dtype=dtype)
    x, ld = flow(z)
    z2, ld_inv = flow.inverse(x)
    assert (z2 - z).abs().max() < 1e-6
    assert ((ld + ld_inv).abs() / ld.abs().clamp(min=1)).max() < 1e-6  # relative (fp32)
    assert (x - z).abs().max() > 1e-2  # not the identity


@pytest.mark.parametrize("z2", [True, False])
def test_log_det_matches_brute_force_jacobian(z2):
    flow = make((4, 4), z2=z2)
    z = phi((4, 4), batch=3)
    _, ld = flow(z)
    for b in range(3):
        J = torch.autograd.functional.jacobian(lambda y: flow(y.unsqueeze(0))[0][0], z[b])
        sign, logabs = torch.linalg.slogdet(J.reshape(16, 16))
        assert sign > 0 and abs(logabs - ld[b]) < 1e-10


def test_log_prob_consistent_with_sample():
    flow = make()
    x, log_q = flow.sample(6, generator=torch.Generator().manual_seed(0))
    assert x.shape == (6, 4, 4) and log_q.shape == (6,)
    assert torch.allclose(flow.log_prob(x), log_q, atol=1e-10)
    assert flow.sample(3, with_log_prob=False).shape == (3, 4, 4)
    assert flow.nfe == 0


def test_symmetries_of_log_density():
    """Z2 exact (z2=True); even shifts, site-centred reflections and axis swaps (point-
    symmetric kernels) keep the checkerboard masks, so log q is invariant under them."""
    flow, target, x = make(), LatticeTarget(shape=(4, 4)), phi()
    err = assert_invariant(flow.log_prob, target, x, shift_step=2,
                           transforms=["z2", "shift", "reflection", "axis_permutation"])
    assert err < 1e-8
    with pytest.raises(AssertionError, match="z2"):
        assert_invariant(make(z2=False).log_prob, target, x, transforms=["z2"])


def test_interface_of_training_loop_and_build_flow():
    target = LatticeTarget(shape=(4, 4))
    flow = build_flow({"model": {"name": "realnvp", "params": {"n_layers": 2, "hidden": 4}}},
                      target)
    assert isinstance(flow, RealNVP) and "realnvp" in FLOW_MODELS.names()
    from flowsci.training.likelihood import MaximumLikelihood
    loss, stats = MaximumLikelihood(target)(flow, phi(dtype=torch.float32))
    loss.backward()
    assert torch.isfinite(loss) and stats["nfe"] == 0
    assert all(p.grad is not None for p in flow.parameters())
    assert isinstance(flow, Flow) and flow.exact_method == "closed_form"
    with pytest.raises(ValueError, match="lattice"):
        RealNVP(ParticleTarget(), prior_for(ParticleTarget()))
    with pytest.raises(ConfigError, match="runs.r.model: flow model 'realnvp' refused.*lattice"):
        build_flow({"model": {"name": "realnvp"}}, ParticleTarget(), "r")
    with pytest.raises(ConfigError, match="regularisers need a CNF"):
        MaximumLikelihood(target, kinetic_weight=1.0)(flow, phi(dtype=torch.float32))
