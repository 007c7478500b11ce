"""Observables against analytic cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flowsci.analysis.features import (ALA2_PHI, ALA2_PSI, connected_correlator, dihedral,
                                       effective_mass, magnetization, pair_distances,
                                       radial_distribution, two_point, zero_momentum)
from flowsci.analysis.observables import OBSERVABLE_SETS, observable_set, state_indicators
from flowsci.errors import ConfigError
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


def test_observable_sets_take_their_parameters_from_the_config():
    x = np.zeros((1, 22, 3))
    x[0, [0, 1, 2, 3]] = _dihedral_geometry(75.0)
    x[0, [4, 6, 8, 14]] = _dihedral_geometry(-60.0)
    x[0, 16] = x[0, 14] + np.array([0.5, -0.3, 1.0])
    custom = observable_set("ala2", "particles", {"params": {"phi": [0, 1, 2, 3]}})
    assert custom.scalars(x, np.zeros(1))["phi"][0] == pytest.approx(75.0)
    assert custom.params == {"phi": [0, 1, 2, 3], "psi": list(ALA2_PSI)}
    with pytest.raises(ConfigError, match=r"systems.a.observables: observable set 'ala2' "
                                          r"refused.*4 distinct"):
        observable_set("ala2", "particles", {"params": {"phi": [0, 1, 1, 3]}},
                       config_key="systems.a.observables")
    with pytest.raises(ConfigError, match="unknown parameter"):
        observable_set("lj13", "particles", {"params": {"bins": 3}})
    rdf = observable_set("lj13", "particles", {"params": {"r_max": 3.0}})
    pts = np.random.default_rng(0).normal(size=(5, 4, 3))
    assert rdf.prepare([pts], [np.zeros(5)], 6).axes["distance_hist"][-1] == 3.0
    # an explicit name overrides the default chosen by target name / kind
    assert observable_set("my_peptide", "particles", {"name": "ala2"}).name == "ala2"


@pytest.mark.parametrize("name", ["particles", "lattice", "ala2"])
def test_every_observable_set_owns_its_figures_and_captions(name):
    from matplotlib.figure import Figure

    obs = OBSERVABLE_SETS.build(name)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, 22, 3)) if name != "lattice" else rng.normal(size=(40, 4, 4))
    u = rng.normal(size=40)
    spec = obs.prepare([x, x], [u, u], 8)
    rw = {"axes": spec.axes, "labels": spec.labels}
    for src in ("data", "flow", "reweighted"):
        est = estimate(obs.features(x, u, spec), None, n_boot=5,
                       finalize=lambda m: obs.finalize(m, spec))
        rw[src] = {k: e.value for k, e in est.items()} | {f"{k}_err": e.err for k, e in est.items()}
    for fig_name, draw in (("observables", obs.plot_observables),
                           ("correlations", obs.plot_correlations)):
        assert obs.captions[fig_name].strip()
        fig = Figure(figsize=obs.figure_sizes[fig_name])
        draw(fig, rw)
        assert fig.axes, f"{name}.{fig_name} drew nothing"
