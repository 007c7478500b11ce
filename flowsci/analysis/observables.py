"""Observable sets: the one extension point for what is measured, plotted and captioned.

An `ObservableSet` (registry `OBSERVABLE_SETS`; config `systems.<s>.observables` with `name`
and `params`, default: the set registered under the target's name, else under its kind
'particles' / 'lattice') owns, for one kind of system,
  prepare(xs, us, n_bins) -> Spec     shared bin edges/axes from data and flow samples,
  features(x, u, spec)   -> features  per-sample values (dense [N, ...] or Binned),
  finalize(means, spec)  -> outputs   functions of the weighted means (may be nonlinear),
  scalars(x, u)          -> [N] arrays usable to define states (energy, magnetization, phi...),
  plot_observables(fig, rw), plot_correlations(fig, rw)   its two report figures,
  captions                                               their captions (report and HTML).
Outputs whose name ends in `_hist` are densities on `spec.axes[name]` (bin edges), other
arrays are curves on `spec.axes[name]` (abscissae); 0-d outputs are scalar observables.
Adding a system means adding a target class and, where the generic sets do not fit, one
ObservableSet subclass registered under the target's name; parameters come from the config
and are checked against the constructor's signature.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from ..registry import Registry
from ..reweighting import Binned, Feature
from .features import (ALA2_PHI, ALA2_PSI, ball_or_box_volume, connected_correlator, dihedral,
                       effective_mass, magnetization, pair_distances, rdf_from_pair_fractions,
                       two_point, zero_momentum)
from .plots import curve_panel, free_energy_profile, hist_panel, ramachandran_panels

Array = np.ndarray


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
    captions: dict[str, str] = {"observables": "", "correlations": ""}
    figure_sizes: dict[str, tuple[float, float]] = {"observables": (5.5, 4),
                                                     "correlations": (5.5, 4)}

    @property
    def params(self) -> dict[str, Any]:
        """The config parameters this set was built with (stored with its outputs)."""
        return {}

    def plot_observables(self, fig, rw: dict[str, Any]) -> None:
        """Draw the structural observable(s) of reweight results `rw` on a Figure."""

    def plot_correlations(self, fig, rw: dict[str, Any]) -> None:
        """Draw the correlation function(s) of reweight results `rw` on a Figure."""

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


def observable_set(target_name: str, kind: str, spec: Mapping[str, Any] | None = None,
                   config_key: str | None = None) -> ObservableSet:
    """The set named in `spec` ({'name', 'params'}, config systems.<s>.observables), by
    default the one registered for the target name, else for the kind."""
    spec = dict(spec or {})
    name = spec.get("name") or (target_name if target_name in OBSERVABLE_SETS else kind)
    return OBSERVABLE_SETS.build(name, spec.get("params", {}), config_key=config_key)


@OBSERVABLE_SETS.register("particles")
class ParticleObservables(ObservableSet):
    """Pair-distance histogram, mean pair distance and g(r).

    box: periodic box length(s) (minimum-image distances; g(r) normalised by the box);
    r_max: upper end of the distance histogram and g(r) (default: from the reference data).
    """

    name = "particles"
    captions = {
        "observables": "Distribution of all interparticle distances.",
        "correlations": "Radial distribution function g(r) (for clusters normalised by the "
                        "ideal-gas shell volume in the ball of the largest plotted radius).",
    }

    def __init__(self, box: float | list[float] | None = None, r_max: float | None = None):
        if r_max is not None and not r_max > 0:
            raise ValueError(f"r_max must be > 0, got {r_max}")
        self.box, self.r_max = box, r_max

    @property
    def params(self) -> dict[str, Any]:
        return {"box": self.box, "r_max": self.r_max}

    def scalars(self, x: Array, u: Array) -> dict[str, Array]:
        return {**super().scalars(x, u),
                "mean_distance": pair_distances(x, self.box).mean(1)}

    def prepare(self, xs: list[Array], us: list[Array], n_bins: int) -> Spec:
        spec = super().prepare(xs, us, n_bins)
        box = self.box
        d = [pair_distances(x, box) for x in xs]
        edges = (np.linspace(0.0, self.r_max, n_bins + 1) if self.r_max is not None
                 else _edges(d, n_bins, lo=0.0))
        edges[0] = 0.0
        spec.axes.update({"distance_hist": edges, "rdf": 0.5 * (edges[1:] + edges[:-1])})
        spec.labels.update({"distance_hist": "interparticle distance r", "rdf": "r"})
        spec.meta["dim"] = int(xs[0].shape[2])
        return spec

    def features(self, x: Array, u: Array, spec: Spec) -> dict[str, Feature]:
        d = pair_distances(x, self.box)
        return {**super().features(x, u, spec), "mean_distance": d.mean(1),
                "distance_hist": Binned.from_values(d, spec.axes["distance_hist"])}

    def finalize(self, m: dict[str, Array], spec: Spec) -> dict[str, Array]:
        edges = spec.axes["distance_hist"]
        dim = spec.meta["dim"]
        vol = ball_or_box_volume(self.box, dim, edges[-1])
        return {**super().finalize(m, spec), "mean_distance": m["mean_distance"],
                "distance_hist": m["distance_hist"] / np.diff(edges),
                "rdf": rdf_from_pair_fractions(m["distance_hist"], edges, dim, vol)}

    def plot_observables(self, fig, rw: dict[str, Any]) -> None:
        hist_panel(fig.add_subplot(), rw, "distance_hist")

    def plot_correlations(self, fig, rw: dict[str, Any]) -> None:
        ax = fig.add_subplot()
        curve_panel(ax, rw, "rdf", "g(r)")
        ax.set_xlabel("r")


@OBSERVABLE_SETS.register("ala2")
class DihedralObservables(ObservableSet):
    """Ramachandran phi/psi densities (1D and 2D).

    phi, psi: the four 0-based atom indices of each backbone dihedral (defaults: the 22-atom
    alanine-dipeptide ordering of Noé et al. 2019, see features.ALA2_PHI / ALA2_PSI).
    """

    name = "ala2"
    periodic = frozenset({"phi", "psi"})
    captions = {
        "observables": "Ramachandran free-energy surfaces F(φ, ψ) = -ln p (kT, minimum 0).",
        "correlations": "Free-energy profiles of the backbone dihedrals φ and ψ.",
    }
    figure_sizes = {"observables": (12, 4), "correlations": (10, 4)}

    def __init__(self, phi: list[int] | tuple[int, ...] = ALA2_PHI,
                 psi: list[int] | tuple[int, ...] = ALA2_PSI):
        for name, idx in (("phi", phi), ("psi", psi)):
            if len(idx) != 4 or len(set(idx)) != 4 or min(idx) < 0:
                raise ValueError(f"{name} must be 4 distinct atom indices >= 0, got {list(idx)}")
        self.phi, self.psi = tuple(int(i) for i in phi), tuple(int(i) for i in psi)

    @property
    def params(self) -> dict[str, Any]:
        return {"phi": list(self.phi), "psi": list(self.psi)}

    def _angles(self, x: Array) -> tuple[Array, Array]:
        n = x.shape[1]
        if max(self.phi + self.psi) >= n:
            raise ValueError(f"dihedral atom indices {self.phi}, {self.psi} exceed the "
                             f"{n} atoms of the configurations")
        return dihedral(x, self.phi), dihedral(x, self.psi)

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

    def plot_observables(self, fig, rw: dict[str, Any]) -> None:
        ramachandran_panels(fig, rw, "rama_hist")

    def plot_correlations(self, fig, rw: dict[str, Any]) -> None:
        for ax, name in zip(fig.subplots(1, 2), ("phi_hist", "psi_hist")):
            free_energy_profile(ax, rw, name)


@OBSERVABLE_SETS.register("lattice")
class LatticeObservables(ObservableSet):
    """Magnetisation M, <|M|>, susceptibility χ = V(<M²> - <M>²), connected two-point
    function G_c(x), its zero-momentum projection C(t) and effective mass (fields [N, L, L])."""

    name = "lattice"
    captions = {
        "observables": "Distribution of the magnetisation M (site mean of the field).",
        "correlations": "Connected zero-momentum correlator C(t) and effective mass "
                        "arccosh[(C(t-1)+C(t+1))/2C(t)].",
    }
    figure_sizes = {"observables": (5.5, 4), "correlations": (10, 4)}

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

    def plot_observables(self, fig, rw: dict[str, Any]) -> None:
        hist_panel(fig.add_subplot(), rw, "magnetization_hist")

    def plot_correlations(self, fig, rw: dict[str, Any]) -> None:
        a1, a2 = fig.subplots(1, 2)
        curve_panel(a1, rw, "correlator", "C(t) (zero momentum, connected)", logy=True)
        curve_panel(a2, rw, "effective_mass", "effective mass")


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
