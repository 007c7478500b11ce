"""LJ13/LJ55 and phi^4 targets: known minima, analytic free-field values, symmetries."""

import math

import numpy as np
import pytest
import scipy.optimize
import torch

from flowsci.errors import ConfigError

from flowsci.systems import TARGETS, build_target
from flowsci.systems.lennard_jones import LennardJones

# Global minima of pure LJ clusters in units of eps (Cambridge Cluster Database, Wales & Doye 1997)
LJ13_MIN = -44.326801
LJ55_MIN = -279.248470


def icosahedron_vertices() -> np.ndarray:
    g = (1 + 5**0.5) / 2
    v = []
    for a in (-1, 1):
        for b in (-g, g):
            v += [(0, a, b), (a, b, 0), (b, 0, a)]
    v = np.array(v, dtype=float)
    return v / np.linalg.norm(v[0])


def mackay(shells: int) -> np.ndarray:
    """Mackay icosahedron with 1 + 12 (+ 42) sites, nearest-neighbour distance ~1."""
    v = icosahedron_vertices()
    edge = np.linalg.norm(v[0] - v[1:], axis=1).min()
    pts = [np.zeros(3)]
    for s in range(1, shells + 1):
        pts += list(s * v)
        if s == 2:
            for i in range(12):
                for j in range(i + 1, 12):
                    if abs(np.linalg.norm(v[i] - v[j]) - edge) < 1e-6:
                        pts.append(v[i] + v[j])  # edge midpoints of the second shell
    return np.array(pts) / edge


def minimise_lj(target: LennardJones, x0: np.ndarray) -> float:
    def f(flat):
        x = torch.tensor(flat.reshape(1, -1, 3), requires_grad=True)
        e = target.lj_energy(x).sum()
        e.backward()
        return e.item(), x.grad.numpy().ravel()

    res = scipy.optimize.minimize(f, x0.ravel(), jac=True, method="L-BFGS-B",
                                  options={"gtol": 1e-10, "ftol": 1e-15, "maxiter": 5000})
    return float(res.fun)


@pytest.mark.parametrize("name,shells,expected", [("lj13", 1, LJ13_MIN), ("lj55", 2, LJ55_MIN)])
def test_lj_icosahedral_global_minimum(name, shells, expected):
    target = build_target({"name": name})
    x0 = mackay(shells)
    assert len(x0) == target.n_particles
    e = minimise_lj(target, x0 * 0.98)
    assert e == pytest.approx(expected, abs=1e-5)


def test_lj_pair_minimum_and_oscillator():
    t = build_target({"name": "lj", "params": {"n_particles": 2, "dim": 3}})
    r = torch.linspace(0.9, 1.1, 201, dtype=torch.float64)
    x = torch.zeros(201, 2, 3, dtype=torch.float64)
    x[:, 1, 0] = r
    e = t.lj_energy(x)
    assert r[e.argmin()].item() == pytest.approx(1.0, abs=1e-3)   # rm
    assert e.min().item() == pytest.approx(-1.0, abs=1e-6)        # -eps
    # oscillator: 0.5 * sum |x_i - com|^2 = 0.5 * 2 * (r/2)^2
    assert torch.allclose(t.energy(x) - e, 0.25 * r**2)


def test_lj_energy_symmetries_batched_and_differentiable():
    t = build_target({"name": "lj13"})
    gen = torch.Generator().manual_seed(0)
    x = t.init_positions(4, gen)
    u = t.energy(x)
    assert u.shape == (4,) and torch.isfinite(u).all()
    q, _ = torch.linalg.qr(torch.randn(3, 3, dtype=torch.float64, generator=gen))
    perm = torch.randperm(13, generator=gen)
    moved = (x @ q.T)[:, perm] + torch.tensor([0.3, -1.0, 2.0], dtype=torch.float64)
    assert torch.allclose(t.energy(moved), u, atol=1e-9)
    assert torch.allclose(t.energy(x.float()).double(), u, rtol=1e-4)
    xg = x.clone().requires_grad_(True)
    t.energy(xg).sum().backward()
    assert torch.isfinite(xg.grad).all()
    # init_positions are non-overlapping: all pair distances >= 0.8 rm
    from flowsci.systems import pair_distances
    assert pair_distances(x).min() > 0.8


def phi4_action_loops(phi: np.ndarray, m2: float, lam: float) -> float:
    """Direct transcription of S = sum_x [sum_mu (phi(x+mu) - phi(x))^2 + m2 phi^2 + lam phi^4]."""
    L0, L1 = phi.shape
    s = 0.0
    for i in range(L0):
        for j in range(L1):
            p = phi[i, j]
            s += (phi[(i + 1) % L0, j] - p) ** 2 + (phi[i, (j + 1) % L1] - p) ** 2
            s += m2 * p**2 + lam * p**4
    return s


def test_phi4_action_matches_definition_and_symmetries():
    t = build_target({"name": "phi4", "params": {"shape": [4, 6], "m2": -4.0, "lam": 8.0}})
    assert t.event_shape == (4, 6) and t.symmetry.z2
    phi = torch.randn(3, 4, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    s = t.action(phi)
    for b in range(3):
        assert s[b].item() == pytest.approx(phi4_action_loops(phi[b].numpy(), -4.0, 8.0), rel=1e-12)
    assert torch.allclose(t.energy(-phi), s)                                  # Z2
    assert torch.allclose(t.energy(torch.roll(phi, (1, 2), (1, 2))), s)        # translations


def test_phi4_free_field_phi2_equals_inverse_matrix():
    t = build_target({"name": "phi4", "params": {"shape": [4, 4], "m2": 0.7, "lam": 0.0}})
    V = 16
    # S = phi^T A phi with A = -Laplacian + m2 (built here from neighbour lists)
    A = np.eye(V) * (4 + 0.7)
    for i in range(4):
        for j in range(4):
            for di, dj in ((1, 0), (-1, 0), (0, 1), (0, -1)):
                A[i * 4 + j, ((i + di) % 4) * 4 + (j + dj) % 4] -= 1
    cov = np.linalg.inv(2 * A)
    assert t.free_field_phi2() == pytest.approx(np.diag(cov).mean(), rel=1e-12)
    phi = torch.randn(2, 4, 4, dtype=torch.float64)
    quad = torch.einsum("bi,ij,bj->b", phi.reshape(2, -1), torch.as_tensor(A), phi.reshape(2, -1))
    assert torch.allclose(t.action(phi), quad)


def test_phi4_rejects_unbounded_free_field():
    with pytest.raises(ConfigError, match="refused.*m2"):
        build_target({"name": "phi4", "params": {"m2": -1.0, "lam": 0.0}})


def test_registered_names():
    assert {"dw4", "lj13", "lj55", "lj", "phi4", "ala2", "openmm", "ase"} <= set(TARGETS.names())
    assert math.isclose(build_target({"name": "lj55"}).n_particles, 55)
