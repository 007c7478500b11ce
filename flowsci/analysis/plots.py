"""Report figures (matplotlib, Agg canvas without pyplot), written atomically.

Every run gets the same five figures, so workflow outputs do not depend on the system kind:
  energy.png        energy histogram: data vs raw flow vs reweighted
  weights.png       weight diagnostics: log-weight histogram, sorted weights, log w vs energy
  training.png      training curve from train_log.csv
  observables.png   particles: pair-distance histogram; lattice: magnetisation histogram;
                    ala2: Ramachandran free-energy surfaces
  correlations.png  particles: g(r); lattice: correlator C(t) + effective mass;
                    ala2: φ and ψ free-energy profiles
The kind-specific figures are drawn by the run's observable set (analysis/observables.py).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from ..io import atomic_output
from .report import SOURCES

FIGURES = ("energy", "weights", "training", "observables", "correlations")
STYLE = {"data": dict(color="k", label="reference data"),
         "flow": dict(color="tab:orange", label="flow (raw)"),
         "reweighted": dict(color="tab:blue", label="flow (reweighted)")}


def save_figure(fig: Figure, path: str | os.PathLike, dpi: int = 110) -> Path:
    """Write `fig` as PNG atomically (temporary file + rename)."""
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    return Path(path)


def hist_panel(ax, rw: dict[str, Any], name: str, xlabel: str | None = None) -> None:
    """Densities of `name` (a *_hist output) for the three sources, with ±1σ error bars."""
    edges = rw["axes"][name]
    centres = 0.5 * (edges[1:] + edges[:-1])
    for s in SOURCES:
        if name not in rw[s]:
            continue
        y, e = rw[s][name], rw[s].get(f"{name}_err")
        ax.stairs(y, edges, color=STYLE[s]["color"], label=STYLE[s]["label"])
        if e is not None:
            ax.errorbar(centres, y, yerr=e, fmt="none", ecolor=STYLE[s]["color"], alpha=0.6)
    ax.set_xlabel(xlabel or rw["labels"].get(name, name))
    ax.set_ylabel("density")
    ax.legend(fontsize=8, loc="upper right")


def curve_panel(ax, rw: dict[str, Any], name: str, ylabel: str, logy: bool = False) -> None:
    """A curve output (e.g. correlator) for the three sources with ±1σ error bars."""
    x = rw["axes"][name]
    for s in SOURCES:
        if name not in rw[s]:
            continue
        y, e = rw[s][name], rw[s].get(f"{name}_err")
        ax.errorbar(x, y, yerr=e, marker="o", ms=3, capsize=2, **STYLE[s])
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(rw["labels"].get(name, name))
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8, loc="upper right")


def energy_figure(rw: dict[str, Any], metrics: dict[str, Any]) -> Figure:
    fig = Figure(layout="constrained", figsize=(5.5, 4))
    ax = fig.add_subplot()
    hist_panel(ax, rw, "energy_hist")
    ess = metrics.get("ess_fraction")
    ax.set_title(f"{metrics.get('run', '')}: energy" +
                 (f" (ESS {100 * ess:.1f} %)" if ess is not None else ""), fontsize=10)
    return fig


def weights_figure(rw: dict[str, Any], metrics: dict[str, Any]) -> Figure:
    """log10(N w) histogram, cumulative share of the largest weights, log w vs energy."""
    lw = rw["log_weights"]
    n = len(lw)
    fig = Figure(layout="constrained", figsize=(12, 3.8))
    ax1, ax2, ax3 = fig.subplots(1, 3)
    ok = np.isfinite(lw)
    ax1.hist((lw[ok] + np.log(n)) / np.log(10), bins=50, color="tab:blue")
    ax1.set_xlabel("log10(N · normalised weight)")
    ax1.set_ylabel("samples")
    w = np.sort(np.exp(lw[ok]))[::-1]
    ax2.plot(np.arange(1, len(w) + 1), np.cumsum(w), color="tab:blue")
    ax2.plot(np.arange(1, len(w) + 1), np.arange(1, len(w) + 1) / len(w), "k:",
             label="equal weights")
    ax2.set_xscale("log")
    ax2.set_xlabel("k largest weights")
    ax2.set_ylabel("cumulative weight")
    ax2.legend(fontsize=8, loc="upper left")
    ax3.scatter(rw["energies"][ok], lw[ok], s=3, alpha=0.5)
    ax3.set_xlabel("reduced energy u [kT]")
    ax3.set_ylabel("normalised log w")
    k = metrics.get("pareto_k")
    n_req = metrics.get("n_requested", n)
    fig.suptitle(f"ESS = {metrics.get('ess', float('nan')):.1f} of {n_req} requested "
                 f"({100 * (metrics.get('ess_fraction') or float('nan')):.2f} %; {n} finite), "
                 f"Pareto k̂ = {k if k is None else round(k, 3)}, "
                 f"max weight = {metrics.get('max_weight', float('nan')):.3g}", fontsize=10)
    return fig


def training_figure(log: dict[str, np.ndarray], run: str = "") -> Figure:
    """Loss and NLL (train, validation) against step."""
    fig = Figure(layout="constrained", figsize=(5.5, 4))
    ax = fig.add_subplot()
    step = log.get("step")
    if not log or step is None:
        ax.text(0.5, 0.5, "no train_log.csv", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return fig
    for key, style in (("loss", "-"), ("nll", "-"), ("val_nll", "o-")):
        y = log.get(key)
        if y is not None and np.isfinite(y).any():
            ok = np.isfinite(y) & np.isfinite(step)
            ax.plot(step[ok], y[ok], style, ms=3, label=key)
    ax.set_xlabel("step")
    ax.set_ylabel("loss / NLL")
    ax.legend(fontsize=8, loc="upper right")
    ax.set_title(f"{run}: training", fontsize=10)
    return fig


def _fes(p: np.ndarray, err: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    """F = -ln p shifted to min 0 (kT), error err/p by the delta method."""
    with np.errstate(divide="ignore", invalid="ignore"):
        f = -np.log(p)
        f = f - np.nanmin(np.where(np.isfinite(f), f, np.nan))
        e = None if err is None else err / p
    return np.where(np.isfinite(f), f, np.nan), e


def ramachandran_panels(fig: Figure, rw: dict[str, Any], name: str) -> None:
    """F(φ, ψ) = -ln p (kT, min 0) of a 2D angle histogram `name`, one panel per source."""
    edges = rw["axes"][name]
    axes = fig.subplots(1, 3)
    for ax, s in zip(axes, SOURCES):
        f, _ = _fes(rw[s][name], None)
        im = ax.pcolormesh(edges, edges, f.T, cmap="viridis", vmin=0, vmax=10)
        ax.set_title(STYLE[s]["label"], fontsize=9)
        ax.set_xlabel("φ [deg]")
        ax.set_ylabel("ψ [deg]")
    fig.colorbar(im, ax=list(axes), label="free energy [kT]")


def free_energy_profile(ax, rw: dict[str, Any], name: str) -> None:
    """F = -ln p (kT, min 0) of a 1D histogram `name` for the three sources, ±1σ."""
    edges = rw["axes"][name]
    c = 0.5 * (edges[1:] + edges[:-1])
    for s in SOURCES:
        f, e = _fes(rw[s][name], rw[s].get(f"{name}_err"))
        ax.errorbar(c, f, yerr=e, ms=2, marker="o", capsize=1, **STYLE[s])
    ax.set_xlabel(rw["labels"].get(name, name))
    ax.set_ylabel("free energy [kT]")
    ax.legend(fontsize=8, loc="upper right")


def render_run(rw: dict[str, Any], metrics: dict[str, Any], log: dict[str, np.ndarray],
               out_dir: str | os.PathLike, observables) -> list[Path]:
    """Write the five figures of one run into out_dir; returns their paths (FIGURES order).

    observables: the run's ObservableSet, which draws the 'observables' and 'correlations'
    figures (analysis/observables.py)."""
    out_dir = Path(out_dir)
    run = str(metrics.get("run", ""))
    figs = {"energy": energy_figure(rw, metrics), "weights": weights_figure(rw, metrics),
            "training": training_figure(log, run)}
    draw = {"observables": observables.plot_observables,
            "correlations": observables.plot_correlations}
    for name in ("observables", "correlations"):
        fig = Figure(layout="constrained", figsize=observables.figure_sizes[name])
        draw[name](fig, rw)
        fig.suptitle(f"{run}: {name}", fontsize=10)
        figs[name] = fig
    return [save_figure(figs[n], out_dir / f"{n}.png") for n in FIGURES]
