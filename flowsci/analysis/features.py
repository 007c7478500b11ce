"""Per-sample features of configurations (numpy): pair distances, radial distribution
function, dihedral angles (particles); magnetisation, two-point correlator, effective mass
(lattices). Used by the observable sets in `observables.py`."""

from __future__ import annotations

import numpy as np

from ..reweighting import Binned, estimate

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
    d = x.shape[2]
    vol = ball_or_box_volume(box, d, edges[-1])
    feats = {"p": Binned.from_values(pair_distances(x, box), edges)}
    return estimate(feats, log_w, n_boot=n_boot, seed=seed,
                    finalize=lambda m: {"g": rdf_from_pair_fractions(m["p"], edges, d, vol)})["g"]


def ball_or_box_volume(box: Array | float | None, dim: int, r_max: float) -> float:
    """The periodic box's volume, or (clusters) that of the ball of radius r_max."""
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
