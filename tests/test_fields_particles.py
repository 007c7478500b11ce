"""EGNN and e3nn vector fields: E(3)/SO(3), translation and permutation equivariance, CNF
log-density invariance, exact divergence vs the autograd Jacobian (batched and loop paths)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from flowsci.errors import ConfigError
from flowsci.flows import CNF, SolverConfig, exact_divergence, prior_for
from flowsci.models import VECTOR_FIELDS, build_field
from flowsci.systems import ParticleTarget, Symmetry
from flowsci.testing import assert_equivariant, assert_invariant

E3NN_SMALL = {"irreps_hidden": "4x0e + 2x1o + 2x1e", "n_layers": 1, "radial_hidden": 8,
              "n_basis": 4}
EGNN_SMALL = {"hidden": 16, "n_layers": 2}



@dataclass
class Molecule(ParticleTarget):
    """A toy molecule: particles typed by atomic number; identical atoms may be permuted."""

    n_particles: int = 6
    dim: int = 3

    @property
    def atomic_numbers(self) -> list[int]:
        return [6, 1, 1, 8, 1, 6][: self.n_particles]

    @property
    def symmetry(self) -> Symmetry:
        return Symmetry(rotations="O", translations=True, permutations=((0, 5), (1, 2, 4)))


def make(name: str, target, dtype=torch.float64, seed: int = 0, **params) -> torch.nn.Module:
    torch.manual_seed(seed)
    small = E3NN_SMALL if name == "e3nn" else EGNN_SMALL
    return build_field({"name": name, "params": {**small, **params}}, target).to(dtype)


def centred(target, batch: int = 3, scale: float = 1.0, dtype=torch.float64, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = scale * torch.randn(batch, *target.event_shape, generator=g, dtype=torch.float64)
    return (x - x.mean(-2, keepdim=True)).to(dtype)


# (field name, target, params, input scale): small systems covering every option
CASES = {
    "egnn-2d": ("egnn", ParticleTarget(n_particles=4, dim=2), {}, 1.0),
    "egnn-3d": ("egnn", ParticleTarget(n_particles=5, dim=3), {}, 1.0),
    "egnn-radius": ("egnn", ParticleTarget(n_particles=6, dim=3),
                    {"graph": "radius", "cutoff": 1.5}, 1.2),
    "egnn-typed": ("egnn", Molecule(), {}, 1.0),
    "e3nn-O3": ("e3nn", ParticleTarget(n_particles=5, dim=3), {}, 1.0),
    "e3nn-SO3": ("e3nn", ParticleTarget(n_particles=5, dim=3),
                 {"symmetry": "SO3", "irreps_hidden": "4x0e + 2x0o + 2x1o + 2x1e"}, 1.0),
    "e3nn-radius": ("e3nn", ParticleTarget(n_particles=6, dim=3),
                    {"graph": "radius", "cutoff": 1.5}, 1.2),
    "e3nn-typed": ("e3nn", Molecule(), {}, 1.0),
}


def transforms_for(params: dict) -> list[str]:
    rot = ["rotation"] if params.get("symmetry") == "SO3" else ["rotation", "reflection"]
    return rot + ["translation", "permutation"]


@pytest.mark.parametrize("case", sorted(CASES))
def test_equivariance_float64(case):
    name, target, params, scale = CASES[case]
    field = make(name, target, **params)
    x = centred(target, scale=scale)
    err = assert_equivariant(field, target, x, transforms=transforms_for(params), tol=1e-8)
    assert err < 1e-8


@pytest.mark.parametrize("case", ["egnn-3d", "egnn-radius", "e3nn-O3", "e3nn-typed"])
def test_equivariance_float32(case):
    name, target, params, scale = CASES[case]
    field = make(name, target, dtype=torch.float32, **params)
    x = centred(target, scale=scale, dtype=torch.float32)
    assert_equivariant(field, target, x, transforms=transforms_for(params), tol=1e-5)


def test_so3_field_is_chiral_and_o3_field_is_not():
    target = ParticleTarget(n_particles=5, dim=3)
    x = centred(target)
    _, _, params, _ = CASES["e3nn-SO3"]
    chiral = make("e3nn", target, **params)
    with pytest.raises(AssertionError, match="reflection"):
        assert_equivariant(chiral, target, x, transforms=["reflection"], tol=1e-6)
    achiral = make("e3nn", target, irreps_hidden=params["irreps_hidden"])
    assert_equivariant(achiral, target, x, transforms=["reflection"])


def test_radius_graph_cuts_off_and_is_smooth():
    """Far-apart groups do not interact; the field is C1 across the cutoff."""
    from flowsci.models.graph import smooth_envelope
    r = torch.linspace(0.0, 2.0, 201, dtype=torch.float64, requires_grad=True)
    w = smooth_envelope(r, 1.0)
    (dw,) = torch.autograd.grad(w.sum(), r, create_graph=True)
    (d2w,) = torch.autograd.grad(dw.sum(), r)
    assert torch.isfinite(d2w).all() and w[0] == 1 and (w[r > 1] == 0).all()
    assert dw[(r > 0.98) & (r < 1.02)].abs().max() < 1e-6
    for name in ("egnn", "e3nn"):
        target = ParticleTarget(n_particles=4, dim=3)
        field = make(name, target, graph="radius", cutoff=1.0)
        pair = torch.tensor([[0.0, 0, 0], [0.5, 0, 0]], dtype=torch.float64)
        x = torch.cat([pair, pair + torch.tensor([10.0, 0, 0])]).unsqueeze(0)
        x2 = torch.cat([pair, pair + torch.tensor([10.0, 3.0, 0])]).unsqueeze(0)
        v, v2 = field(torch.tensor(0.3), x), field(torch.tensor(0.3), x2)
        assert torch.allclose(v - v.mean(1, keepdim=True), v2 - v2.mean(1, keepdim=True),
                              atol=1e-12)


@pytest.mark.parametrize("case", ["egnn-typed", "e3nn-radius"])
def test_cnf_log_density_invariant(case):
    name, target, params, scale = CASES[case]
    cnf = CNF(make(name, target, **params), prior_for(target).double(),
              SolverConfig(method="rk4", n_steps=4))
    x = centred(target, batch=2, scale=scale)
    err = assert_invariant(cnf.log_prob, target, x, transforms=transforms_for(params),
                           n_trials=1, tol=1e-5)
    assert err < 1e-5


def jacobian_trace(field, t, x):
    traces = []
    for xb in x:
        J = torch.autograd.functional.jacobian(lambda y: field(t, y.unsqueeze(0))[0], xb)
        traces.append(J.reshape(xb.numel(), xb.numel()).trace())
    return torch.stack(traces)


def _batched_vjp_works(field, t, x) -> bool:
    x = x.clone().requires_grad_(True)
    f = field(t, x)
    D = f[0].numel()
    basis = torch.eye(D, dtype=f.dtype).unsqueeze(1).expand(D, f.shape[0], D).reshape(D, *f.shape)
    torch.autograd.grad(f, x, basis, create_graph=True, is_grads_batched=True)
    return True


@pytest.mark.parametrize("case", sorted(CASES))
def test_exact_divergence_matches_jacobian(case, disable_batched_vjp):
    name, target, params, scale = CASES[case]
    field = make(name, target, **params)
    t = torch.tensor(0.7, dtype=torch.float64)
    x = centred(target, scale=scale)
    ref = jacobian_trace(field, t, x)
    assert _batched_vjp_works(field, t, x)  # the vmap-over-backward path is usable
    xr = x.clone().requires_grad_(True)
    div = exact_divergence(field(t, xr), xr, create_graph=True)
    assert torch.allclose(div, ref, atol=1e-10)
    div.sum().backward()  # second derivatives exist (training through the divergence)
    assert all(torch.isfinite(p.grad).all() for p in field.parameters() if p.grad is not None)

    disable_batched_vjp()  # now force the loop fallback and check it too
    xr = x.clone().requires_grad_(True)
    assert torch.allclose(exact_divergence(field(t, xr), xr), ref, atol=1e-10)


def test_output_is_mean_free_and_time_dependent():
    for case in ("egnn-typed", "e3nn-typed"):
        name, target, params, _ = CASES[case]
        field = make(name, target, **params)
        x = centred(target)
        v0, v1 = field(torch.tensor(0.1), x), field(torch.tensor(0.9), x)
        assert v0.mean(1).abs().max() < 1e-12
        assert (v0 - v1).abs().max() > 1e-6
        vb = field(torch.tensor([0.1, 0.9, 0.9], dtype=torch.float64), x)  # per-sample times
        assert torch.allclose(vb[0], v0[0]) and torch.allclose(vb[1], v1[1])


def test_config_errors():
    assert {"egnn", "e3nn", "lattice_conv"} <= set(VECTOR_FIELDS.names())
    with pytest.raises(ConfigError, match="refused.*3D"):
        build_field({"name": "e3nn"}, ParticleTarget(n_particles=4, dim=2))
    with pytest.raises(ConfigError, match="refused.*cutoff"):
        build_field({"name": "egnn", "params": {"graph": "radius"}}, ParticleTarget())
    with pytest.raises(ConfigError, match="refused.*symmetry"):
        build_field({"name": "e3nn", "params": {"symmetry": "O2"}}, ParticleTarget())
    with pytest.raises(ConfigError, match="irreps"):
        build_field({"name": "e3nn", "params": {"irreps": "1x0e"}}, ParticleTarget())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fields_on_cuda_match_cpu():
    from flowsci.flows import prior_for
    from flowsci.flows.coupling import RealNVP
    from flowsci.systems import LatticeTarget
    lattice = LatticeTarget(shape=(4, 4))
    fields = [make(n, tg, **p) for n, tg, p, _ in (CASES["egnn-radius"], CASES["e3nn-typed"])]
    fields += [build_field({"name": "lattice_conv", "params": p}, lattice).double()
               for p in ({}, {"arch": "gerdes"})]
    targets = [CASES["egnn-radius"][1], CASES["e3nn-typed"][1], lattice, lattice]
    for field, target in zip(fields, targets):
        x = centred(target) if target.kind == "particles" else torch.randn(3, 4, 4).double()
        t = torch.tensor(0.3, dtype=torch.float64)
        ref = field(t, x)
        xc = x.cuda().requires_grad_(True)
        out = field.cuda()(t.cuda(), xc)
        assert torch.allclose(out.cpu(), ref, atol=1e-10)
        assert exact_divergence(out, xc).shape == (3,)
    flow = RealNVP(lattice, prior_for(lattice)).double().cuda()
    x, log_q = flow.sample(4)
    assert x.is_cuda and torch.allclose(flow.log_prob(x), log_q, atol=1e-8)
