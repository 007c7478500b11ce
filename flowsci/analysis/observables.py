"""Observables per system kind, as per-sample features + a finalize step (see reweighting.estimate).

Geometry helpers (numpy): pair distances, radial distribution function, dihedral angles.
Lattice helpers: magnetisation, two-point correlator, susceptibility, effective mass.

Each `ObservableSet` (registry `OBSERVABLE_SETS`, keyed by target name, falling back to the
target kind 'particles' / 'lattice') defines
  prepare(xs, us, n_bins) -> Spec     shared bin edges/axes from data and flow samples,
  features(x, u, spec)   -> features  per-sample values (dense [N, ...] or Binned),
  finalize(means, spec)  -> outputs   functions of the weighted means (may be nonlinear),
  scalars(x, u)          -> [N] arrays usable to define states (energy, magnetization, phi...).
Outputs whose name ends in `_hist` are densities on `spec.axes[name]` (bin edges), other
arrays are curves on `spec.axes[name]` (abscissae); 0-d outputs are scalar observables.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from ..registry import Registry
from ..reweighting import Binned, Feature

Array = np.ndarray

# Alanine dipeptide, 22-atom ordering of the Boltzmann-generator dataset (Noé et al. 2019;
# ACE: HH31 CH3 HH32 HH33 C O | ALA: N H CA HA CB HB1 HB2 HB3 C O | NME: N H C HH31-3), 0-based.
ALA2_PHI = (4, 6, 8, 14)   # C(ACE) - N - CA - C
ALA2_PSI = (6, 8, 14, 16)  # N - CA - C - N(NME)


# --------------------------------------------------------------------------- geometry

def pair_distances(x: Array, box: Array | float | None = None) -> Array:
    """All unordered pair distances. x: [N, n, d] -> [N, n(n-1)/2]; minimum image if `box`."""
    x = np.asarray(x, dtype=float)
    i, j = np.triu_indices(x.shape[1], k=1)
    diff = x[:, i, :] - x[:, j, :]
    if box is not None:
        box = np.broadcast_to(np.asarray(box, dtype=float), (x.shape[2],))
        diff = diff - box * np.round(diff / box)
    return np.sqrt((diff * diff).sum(-1))


def shell_volumes(edges: Array, dim: int) -> Array:
    """Volume of the d-dimensional spherical shells between consecutive edges. -> [n_bins]."""
    from scipy.special import gamma

    c = np.pi ** (dim / 2) / gamma(dim / 2 + 1)
    e = np.asarray(edges, dtype=float)
    return c * (e[1:] ** dim - e[:-1] ** dim)


def rdf_from_pair_fractions(frac: Array, edges: Array, dim: int, volume: float) -> Array:
    """g(r) = P(pair distance in bin) * V / V_shell: 1 for an ideal gas in a periodic box of
    volume V (for r below half the box). frac: [n_bins] fraction of pairs per bin."""
    return frac * volume / shell_volumes(edges, dim)


def radial_distribution(x: Array, edges: Array, box: Array | float | None = None,
                        log_w: Array | None = None, n_boot: int = 200, seed: int = 0):
    """(Reweighted) g(r) with bootstrap errors. x: [N, n, d]; periodic if `box` (length(s)),
    else (clusters) V is the ball of radius edges[-1]. Returns an Estimate [n_bins]."""
    from ..reweighting import estimate

    d = x.shape[2]
    vol = _volume(box, d, edges[-1])
    feats = {"p": Binned.from_values(pair_distances(x, box), edges)}
    return estimate(feats, log_w, n_boot=n_boot, seed=seed,
                    finalize=lambda m: {"g": rdf_from_pair_fractions(m["p"], edges, d, vol)})["g"]


def _volume(box: Array | float | None, dim: int, r_max: float) -> float:
    if box is None:
        return float(shell_volumes(np.array([0.0, r_max]), dim)[0])
    return float(np.prod(np.broadcast_to(np.asarray(box, dtype=float), (dim,))))


def dihedral(x: Array, idx: tuple[int, int, int, int]) -> Array:
    """Dihedral angle (IUPAC sign, degrees in (-180, 180]) of atoms idx. x: [N, n, 3] -> [N]."""
    x = np.asarray(x, dtype=float)
    p0, p1, p2, p3 = (x[:, k, :] for k in idx)
    b0, b1, b2 = p0 - p1, p2 - p1, p3 - p2
    b1n = b1 / np.linalg.norm(b1, axis=-1, keepdims=True)
    v = b0 - (b0 * b1n).sum(-1, keepdims=True) * b1n
    w = b2 - (b2 * b1n).sum(-1, keepdims=True) * b1n
    xx = (v * w).sum(-1)
    yy = (np.cross(b1n, v) * w).sum(-1)
    ang = np.degrees(np.arctan2(yy, xx))
    return np.where(ang <= -180.0, 180.0, ang)


# --------------------------------------------------------------------------- lattice

def magnetization(phi: Array) -> Array:
    """Site-averaged field M = (1/V) sum_x phi(x). phi: [N, *shape] -> [N]."""
    phi = np.asarray(phi, dtype=float)
    return phi.reshape(len(phi), -1).mean(1)


def two_point(phi: Array) -> Array:
    """Per-configuration (1/V) sum_y phi(y) phi(y + x), periodic. [N, L, L] -> [N, L, L]."""
    phi = np.asarray(phi, dtype=float)
    axes = tuple(range(1, phi.ndim))
    f = np.fft.fftn(phi, axes=axes)
    vol = np.prod(phi.shape[1:])
    return np.real(np.fft.ifftn(f * np.conj(f), axes=axes)) / vol


def connected_correlator(phiphi: Array, m: float) -> Array:
    """G_c(x) = <phi(y) phi(y+x)> - <M>^2 from the mean two-point function [L, L]."""
    return phiphi - m * m


def zero_momentum(g: Array) -> Array:
    """C(t) = sum over the other direction of G_c, averaged over both axes. [L, L] -> [L]."""
    return 0.5 * (g.sum(axis=1) + g.sum(axis=0))


def effective_mass(c: Array) -> Array:
    """m_eff(t) = arccosh((C(t-1) + C(t+1)) / (2 C(t))), t = 1..L-2 (nan where undefined)."""
    c = np.asarray(c, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        arg = (c[:-2] + c[2:]) / (2 * c[1:-1])
        return np.where(arg >= 1, np.arccosh(np.where(arg >= 1, arg, 1.0)), np.nan)


# --------------------------------------------------------------------------- sets

@dataclass
class Spec:
    """Shared axes: name -> bin edges (for *_hist outputs) or abscissae (curves)."""

    axes: dict[str, Array] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)


def _edges(values: list[Array], n_bins: int, lo: float | None = None, pad: float = 0.1,
           q: float = 0.001) -> Array:
    """Bins covering the [q, 1-q] quantiles of the reference values (first entry) padded by
    `pad` of the span; outliers (e.g. high-energy flow samples) fall outside."""
    ref = np.asarray(values[0], dtype=float).ravel()
    ref = ref[np.isfinite(ref)]
    if ref.size == 0:
        ref = np.concatenate([np.ravel(v) for v in values])
        ref = ref[np.isfinite(ref)]
    a, b = np.quantile(ref, [q, 1 - q]) if ref.size else (0.0, 1.0)
    span = max(b - a, 1e-8)
    a, b = a - pad * span, b + pad * span
    if lo is not None:
        a = max(a, lo)
    return np.linspace(a, b, n_bins + 1)


class ObservableSet:
    """Energy histogram and mean energy; subclasses add kind-specific observables."""

    name = "base"
    periodic: frozenset[str] = frozenset()  # scalar features that are angles in degrees

    def __init__(self, params: Mapping[str, Any] | None = None):
        self.params = dict(params or {})

    def scalars(self, x: Array, u: Array) -> dict[str, Array]:
        return {"energy": np.asarray(u, dtype=float)}

    def prepare(self, xs: list[Array], us: list[Array], n_bins: int) -> Spec:
        """xs, us: per source (reference data first); returns the shared axes."""
        return Spec({"energy_hist": _edges(us, n_bins)}, {"energy_hist": "reduced energy u [kT]"})

    def features(self, x: Array, u: Array, spec: Spec) -> dict[str, Feature]:
        u = np.asarray(u, dtype=float)
        return {"energy": np.where(np.isfinite(u), u, np.nan),
                "energy_hist": Binned.from_values(u, spec.axes["energy_hist"])}

    def finalize(self, m: dict[str, Array], spec: Spec) -> dict[str, Array]:
        return {"mean_energy": m["energy"],
                "energy_hist": m["energy_hist"] / np.diff(spec.axes["energy_hist"])}


OBSERVABLE_SETS: Registry[ObservableSet] = Registry("observable set")


def observable_set(target_name: str, kind: str, params: Mapping[str, Any] | None = None
                   ) -> ObservableSet:
    """The set registered for the target name, else for the kind ('particles', 'lattice')."""
    key = target_name if target_name in OBSERVABLE_SETS else kind
    return OBSERVABLE_SETS.get(key)(params)


@OBSERVABLE_SETS.register("particles")
class ParticleObservables(ObservableSet):
    """Pair-distance histogram, mean pair distance and g(r). params: box (periodic length)."""

    name = "particles"

    def scalars(self, x: Array, u: Array) -> dict[str, Array]:
        return {**super().scalars(x, u),
                "mean_distance": pair_distances(x, self.params.get("box")).mean(1)}

    def prepare(self, xs: list[Array], us: list[Array], n_bins: int) -> Spec:
        spec = super().prepare(xs, us, n_bins)
        box = self.params.get("box")
        d = [pair_distances(x, box) for x in xs]
        edges = _edges(d, n_bins, lo=0.0)
        edges[0] = 0.0
        spec.axes.update({"distance_hist": edges, "rdf": 0.5 * (edges[1:] + edges[:-1])})
        spec.labels.update({"distance_hist": "interparticle distance r", "rdf": "r"})
        spec.meta["dim"] = int(xs[0].shape[2])
        return spec

    def features(self, x: Array, u: Array, spec: Spec) -> dict[str, Feature]:
        d = pair_distances(x, self.params.get("box"))
        return {**super().features(x, u, spec), "mean_distance": d.mean(1),
                "distance_hist": Binned.from_values(d, spec.axes["distance_hist"])}

    def finalize(self, m: dict[str, Array], spec: Spec) -> dict[str, Array]:
        edges = spec.axes["distance_hist"]
        dim = spec.meta["dim"]
        vol = _volume(self.params.get("box"), dim, edges[-1])
        return {**super().finalize(m, spec), "mean_distance": m["mean_distance"],
                "distance_hist": m["distance_hist"] / np.diff(edges),
                "rdf": rdf_from_pair_fractions(m["distance_hist"], edges, dim, vol)}


@OBSERVABLE_SETS.register("ala2")
class DihedralObservables(ObservableSet):
    """Ramachandran phi/psi densities (1D and 2D). params: phi, psi (4 atom indices each)."""

    name = "ala2"
    periodic = frozenset({"phi", "psi"})

    def _angles(self, x: Array) -> tuple[Array, Array]:
        return (dihedral(x, tuple(self.params.get("phi", ALA2_PHI))),
                dihedral(x, tuple(self.params.get("psi", ALA2_PSI))))

    def scalars(self, x: Array, u: Array) -> dict[str, Array]:
        phi, psi = self._angles(x)
        return {**super().scalars(x, u), "phi": phi, "psi": psi}

    def prepare(self, xs: list[Array], us: list[Array], n_bins: int) -> Spec:
        spec = super().prepare(xs, us, n_bins)
        ang = np.linspace(-180.0, 180.0, n_bins + 1)
        ang2 = np.linspace(-180.0, 180.0, min(n_bins, 60) + 1)
        spec.axes.update({"phi_hist": ang, "psi_hist": ang, "rama_hist": ang2})
        spec.labels.update({"phi_hist": "φ [deg]", "psi_hist": "ψ [deg]", "rama_hist": "φ, ψ [deg]"})
        return spec

    def features(self, x: Array, u: Array, spec: Spec) -> dict[str, Feature]:
        phi, psi = self._angles(x)
        e2 = spec.axes["rama_hist"]
        nb = len(e2) - 1
        i = Binned.from_values(phi, e2).idx[:, 0]
        j = Binned.from_values(psi, e2).idx[:, 0]
        joint = np.where((i < nb) & (j < nb), i * nb + j, nb * nb)[:, None]
        return {**super().features(x, u, spec),
                "phi_hist": Binned.from_values(phi, spec.axes["phi_hist"]),
                "psi_hist": Binned.from_values(psi, spec.axes["psi_hist"]),
                "rama_hist": Binned(joint, nb * nb)}

    def finalize(self, m: dict[str, Array], spec: Spec) -> dict[str, Array]:
        e2 = spec.axes["rama_hist"]
        nb, w = len(e2) - 1, np.diff(e2)[0]
        return {**super().finalize(m, spec),
                "phi_hist": m["phi_hist"] / np.diff(spec.axes["phi_hist"]),
                "psi_hist": m["psi_hist"] / np.diff(spec.axes["psi_hist"]),
                "rama_hist": m["rama_hist"].reshape(nb, nb) / (w * w)}


@OBSERVABLE_SETS.register("lattice")
class LatticeObservables(ObservableSet):
    """Magnetisation M, <|M|>, susceptibility χ = V(<M²> - <M>²), connected two-point
    function G_c(x), its zero-momentum projection C(t) and effective mass (fields [N, L, L])."""

    name = "lattice"

    def scalars(self, x: Array, u: Array) -> dict[str, Array]:
        m = magnetization(x)
        return {**super().scalars(x, u), "magnetization": m, "abs_magnetization": np.abs(m)}

    def prepare(self, xs: list[Array], us: list[Array], n_bins: int) -> Spec:
        spec = super().prepare(xs, us, n_bins)
        mmax = max(float(np.abs(magnetization(x)).max()) for x in xs) * 1.05 + 1e-8
        ref = float(np.quantile(np.abs(magnetization(xs[0])), 0.999)) * 1.2 + 1e-8
        mmax = min(mmax, ref)
        length = xs[0].shape[1]
        spec.axes.update({"magnetization_hist": np.linspace(-mmax, mmax, n_bins + 1),
                          "correlator": np.arange(length, dtype=float),
                          "effective_mass": np.arange(1, length - 1, dtype=float)})
        spec.labels.update({"magnetization_hist": "magnetisation M", "correlator": "t",
                            "effective_mass": "t"})
        return spec

    def features(self, x: Array, u: Array, spec: Spec) -> dict[str, Feature]:
        m = magnetization(x)
        return {**super().features(x, u, spec), "m": m, "abs_m": np.abs(m), "m2": m * m,
                "phiphi": two_point(x),
                "magnetization_hist": Binned.from_values(m, spec.axes["magnetization_hist"])}

    def finalize(self, m: dict[str, Array], spec: Spec) -> dict[str, Array]:
        vol = float(m["phiphi"].size)
        g = connected_correlator(m["phiphi"], float(m["m"]))
        c = zero_momentum(g)
        return {**super().finalize(m, spec), "magnetization": m["m"],
                "abs_magnetization": m["abs_m"],
                "susceptibility": vol * (m["m2"] - m["m"] ** 2),
                "magnetization_hist": m["magnetization_hist"] / np.diff(spec.axes["magnetization_hist"]),
                "correlator": c, "effective_mass": effective_mass(c)}


def state_indicators(states: Mapping[str, Mapping[str, Any]], scalars: Mapping[str, Array],
                     periodic: frozenset[str] = frozenset()) -> dict[str, Array]:
    """Boolean [N] per state. A state is {scalar_name: [lo, hi], ...} (all must hold); null
    bounds are open; for periodic (angle) scalars lo > hi wraps around ±180°."""
    out = {}
    for name, cond in states.items():
        if not isinstance(cond, Mapping) or not cond:
            raise ValueError(f"state {name!r}: expected {{observable: [lo, hi], ...}}, got {cond!r}")
        n = len(next(iter(scalars.values())))
        ok = np.ones(n, dtype=bool)
        for key, bounds in cond.items():
            if key not in scalars:
                raise ValueError(f"state {name!r}: unknown observable {key!r}; "
                                 f"available: {sorted(scalars)}")
            if not (isinstance(bounds, (list, tuple)) and len(bounds) == 2):
                raise ValueError(f"state {name!r}: {key} bounds must be [lo, hi], got {bounds!r}")
            lo = -np.inf if bounds[0] is None else float(bounds[0])
            hi = np.inf if bounds[1] is None else float(bounds[1])
            v = np.asarray(scalars[key], dtype=float)
            if lo > hi and key not in periodic:
                raise ValueError(f"state {name!r}: {key} has lo > hi ({lo} > {hi})")
            ok &= ((v >= lo) | (v < hi)) if lo > hi else ((v >= lo) & (v < hi))
        out[name] = ok
    return out
