"""Lattice vector field (lattice_conv): periodic shifts, lattice reflections and axis
permutations, the Z2 flip, CNF log-density invariance and exact divergence."""

from __future__ import annotations

import pytest
import torch

from flowsci.errors import ConfigError

from flowsci.flows import CNF, SolverConfig, exact_divergence, prior_for
from flowsci.models import build_field
from flowsci.systems import LatticeTarget
from flowsci.testing import assert_equivariant, assert_invariant



SPATIAL = ["shift", "reflection", "axis_permutation"]
CASES = {  # name: (shape, params, transforms)
    "odd-1d": ((6,), {}, SPATIAL + ["z2"]),
    "odd-2d": ((4, 4), {}, SPATIAL + ["z2"]),
    "odd-3d": ((4, 4, 4), {"hidden": 4, "n_layers": 2}, SPATIAL + ["z2"]),
    "antisym-2d": ((4, 6), {"z2": "antisymmetrize"}, SPATIAL + ["z2"]),
    "none-2d": ((4, 4), {"z2": "none"}, SPATIAL),
    "gerdes-2d": ((4, 4), {"arch": "gerdes"}, SPATIAL + ["z2"]),
    "gerdes-3d": ((3, 3, 3), {"arch": "gerdes", "n_fourier": 3}, SPATIAL + ["z2"]),
}


def make(shape, params, dtype=torch.float64, seed: int = 0):
    torch.manual_seed(seed)
    field = build_field({"name": "lattice_conv", "params": {"hidden": 8, **params}},
                        LatticeTarget(shape=shape)).to(dtype)
    if params.get("arch") == "gerdes":  # default init is near zero: make the test non-trivial
        with torch.no_grad():
            field.V.normal_(0.0, 0.3)
    return field


def phi(shape, batch: int = 3, dtype=torch.float64, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, *shape, generator=g, dtype=torch.float64).to(dtype)


@pytest.mark.parametrize("case", sorted(CASES))
def test_equivariance_float64(case):
    shape, params, transforms = CASES[case]
    field = make(shape, params)
    err = assert_equivariant(field, LatticeTarget(shape=shape), phi(shape),
                             transforms=transforms, tol=1e-8)
    assert err < 1e-8


@pytest.mark.parametrize("case", ["odd-2d", "gerdes-2d"])
def test_equivariance_float32(case):
    shape, params, transforms = CASES[case]
    field = make(shape, params, dtype=torch.float32)
    assert_equivariant(field, LatticeTarget(shape=shape), phi(shape, dtype=torch.float32),
                       transforms=transforms, tol=1e-5)


def test_symmetry_breaking_options_are_detected():
    """z2='none' is not odd; point_symmetric=False kernels are not reflection-equivariant."""
    target = LatticeTarget(shape=(4, 4))
    with pytest.raises(AssertionError, match="z2"):
        assert_equivariant(make((4, 4), {"z2": "none"}), target, phi((4, 4)), transforms=["z2"])
    with pytest.raises(AssertionError):
        assert_equivariant(make((4, 4), {"point_symmetric": False}), target, phi((4, 4)),
                           transforms=["reflection", "axis_permutation"], n_trials=4)


@pytest.mark.parametrize("case", ["odd-2d", "gerdes-2d"])
def test_cnf_log_density_invariant(case):
    shape, params, transforms = CASES[case]
    target = LatticeTarget(shape=shape)
    cnf = CNF(make(shape, params), prior_for(target).double(),
              SolverConfig(method="rk4", n_steps=4))
    err = assert_invariant(cnf.log_prob, target, phi(shape, batch=2), transforms=transforms,
                           n_trials=1, tol=1e-5)
    assert err < 1e-5


@pytest.mark.parametrize("case", sorted(CASES))
def test_exact_divergence_matches_jacobian(case, disable_batched_vjp):
    shape, params, _ = CASES[case]
    field = make(shape, params)
    t = torch.tensor(0.4, dtype=torch.float64)
    x = phi(shape)
    D = x[0].numel()
    ref = torch.stack([torch.autograd.functional.jacobian(
        lambda y: field(t, y.unsqueeze(0))[0], xb).reshape(D, D).trace() for xb in x])
    xr = x.clone().requires_grad_(True)
    f = field(t, xr)
    basis = torch.eye(D, dtype=f.dtype).unsqueeze(1).expand(D, 3, D).reshape(D, *f.shape)
    torch.autograd.grad(f, xr, basis, retain_graph=True, is_grads_batched=True)  # vmap path ok
    div = exact_divergence(f, xr, create_graph=True)
    assert torch.allclose(div, ref, atol=1e-10)
    div.sum().backward()
    if params.get("arch") == "gerdes":  # the O(V) analytic divergence agrees
        assert torch.allclose(field.divergence(t, x), ref, atol=1e-10)

    disable_batched_vjp()  # now force the loop fallback and check it too
    xr = x.clone().requires_grad_(True)
    assert torch.allclose(exact_divergence(field(t, xr), xr), ref, atol=1e-10)


def test_time_dependence_and_errors():
    field = make((4, 4), {})
    x = phi((4, 4))
    assert (field(torch.tensor(0.1), x) - field(torch.tensor(0.9), x)).abs().max() > 1e-6
    from flowsci.systems import ParticleTarget
    with pytest.raises(ConfigError, match="refused.*lattice"):
        build_field({"name": "lattice_conv"}, ParticleTarget())
    with pytest.raises(ConfigError, match="refused.*odd"):
        build_field({"name": "lattice_conv", "params": {"kernel_size": 4}},
                    LatticeTarget(shape=(4, 4)))
    with pytest.raises(ConfigError, match="refused.*z2"):
        build_field({"name": "lattice_conv", "params": {"z2": "even"}},
                    LatticeTarget(shape=(4, 4)))
