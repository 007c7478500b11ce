"""Observables against analytic cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flowsci.analysis.observables import (ALA2_PHI, ALA2_PSI, OBSERVABLE_SETS, connected_correlator,
                                          dihedral, effective_mass, magnetization, observable_set,
                                          pair_distances, radial_distribution, state_indicators,
                                          two_point, zero_momentum)
from flowsci.reweighting import estimate
from flowsci.systems import pair_distances as torch_pair_distances


def test_pair_distances_match_torch_and_minimum_image():
    x = np.random.default_rng(0).normal(size=(5, 6, 3))
    ref = torch_pair_distances(torch.as_tensor(x)).numpy()
    assert np.allclose(pair_distances(x), ref)
    y = np.array([[[0.1, 0.0], [9.9, 0.0]]])
    assert pair_distances(y, box=10.0)[0, 0] == pytest.approx(0.2)


@pytest.mark.parametrize("dim", [2, 3])
def test_rdf_of_ideal_gas_is_flat(dim):
    rng = np.random.default_rng(dim)
    box, n = 10.0, 40
    x = rng.uniform(0, box, size=(400, n, dim))
    edges = np.linspace(0.5, 4.5, 9)
    g = radial_distribution(x, edges, box=box, n_boot=100)
    assert np.all(np.abs(g.value - 1) < 4 * g.err + 0.01), (g.value, g.err)
    assert np.mean(np.abs(g.value - 1)) < 0.03


def _dihedral_geometry(angle_deg: float) -> np.ndarray:
    """Four atoms with bond 1-2 along z and the given dihedral between bonds 0-1 and 2-3."""
    a = np.radians(angle_deg)
    return np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 1.5],
                     [np.cos(a), np.sin(a), 1.5]])


@pytest.mark.parametrize("angle", [60.0, -60.0, 180.0, 90.0, -120.0, 0.0])
def test_dihedral_known_geometry(angle):
    x = _dihedral_geometry(angle)[None]
    got = dihedral(x, (0, 1, 2, 3))[0]
    expect = 180.0 if abs(abs(angle) - 180.0) < 1e-9 else angle
    assert got == pytest.approx(expect, abs=1e-9)
    # invariant under rotation + translation, sign flips under reflection
    q, _ = np.linalg.qr(np.random.default_rng(1).normal(size=(3, 3)))
    q *= np.sign(np.linalg.det(q))
    assert dihedral(x @ q.T + 3.0, (0, 1, 2, 3))[0] == pytest.approx(expect, abs=1e-9)
    if abs(angle) not in (0.0, 180.0):
        assert dihedral(x * np.array([1, 1, -1]), (0, 1, 2, 3))[0] == pytest.approx(-angle)


def test_ala2_indices_documented_and_used():
    assert ALA2_PHI == (4, 6, 8, 14) and ALA2_PSI == (6, 8, 14, 16)
    x = np.zeros((1, 22, 3))
    x[0, [4, 6, 8, 14]] = _dihedral_geometry(-60.0)
    x[0, 16] = x[0, 14] + np.array([0.5, -0.3, 1.0])
    s = observable_set("ala2", "particles").scalars(x, np.zeros(1))
    assert s["phi"][0] == pytest.approx(-60.0)
    assert s["psi"][0] == pytest.approx(dihedral(x, ALA2_PSI)[0])


def test_magnetization_and_susceptibility_of_constant_fields():
    c = np.array([-1.0, 0.5, 2.0, 0.5])
    phi = np.ones((4, 6, 6)) * c[:, None, None]
    assert np.allclose(magnetization(phi), c)
    obs = observable_set("phi4", "lattice")
    spec = obs.prepare([phi], [np.zeros(4)], 10)
    res = estimate(obs.features(phi, np.zeros(4), spec), None, n_boot=20,
                   finalize=lambda m: obs.finalize(m, spec))
    assert res["magnetization"].value == pytest.approx(c.mean())
    assert res["abs_magnetization"].value == pytest.approx(np.abs(c).mean())
    assert res["susceptibility"].value == pytest.approx(36 * c.var())
    # constant fields: connected correlator is flat, so C(t) is the same at every t
    assert np.allclose(res["correlator"].value, res["correlator"].value[0])


def test_correlator_of_uncorrelated_fields_is_a_delta():
    rng = np.random.default_rng(0)
    phi = rng.normal(0.0, 1.3, size=(4000, 8, 8))
    g = connected_correlator(two_point(phi).mean(0), magnetization(phi).mean())
    assert g[0, 0] == pytest.approx(1.69, rel=0.02)
    off = g.copy()
    off[0, 0] = 0.0
    assert np.abs(off).max() < 5 * 1.69 / np.sqrt(4000 * 64)   # sd of a lag product mean
    c = zero_momentum(g)
    assert c[0] == pytest.approx(1.69, rel=0.03) and np.abs(c[1:]).max() < 0.03


def test_two_point_of_plane_wave_and_effective_mass_of_cosh():
    L = 8
    y = np.arange(L)
    phi = np.cos(2 * np.pi * y / L)[None, :, None] * np.ones((1, L, L))
    tp = two_point(phi)[0]
    assert np.allclose(tp[:, 0], 0.5 * np.cos(2 * np.pi * y / L))
    m, T = 0.4, 16
    c = np.cosh(m * (np.arange(T) - T / 2))
    assert np.allclose(effective_mass(c)[: T // 2 - 2], m)


def test_state_indicators_wrap_and_errors():
    scal = {"psi": np.array([170.0, -170.0, 0.0]), "energy": np.array([1.0, 5.0, 9.0])}
    ind = state_indicators({"beta": {"psi": [120, -120]}, "low": {"energy": [None, 4.0]}},
                           scal, frozenset({"psi"}))
    assert ind["beta"].tolist() == [True, True, False]
    assert ind["low"].tolist() == [True, False, False]
    with pytest.raises(ValueError, match="unknown observable"):
        state_indicators({"a": {"phi": [0, 1]}}, scal)
    with pytest.raises(ValueError, match="lo > hi"):
        state_indicators({"a": {"energy": [5, 1]}}, scal)


def test_registry_dispatch():
    assert {"particles", "lattice", "ala2"} <= set(OBSERVABLE_SETS.names())
    assert observable_set("lj13", "particles").name == "particles"
    assert observable_set("phi4", "lattice").name == "lattice"
    assert observable_set("ala2", "particles").name == "ala2"
