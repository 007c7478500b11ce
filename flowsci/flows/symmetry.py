"""Alignment of particle configurations modulo rotations and permutations of identical particles.

Used by equivariant OT flow matching (Klein, Kraemer & Noe 2023): the distance between two
configurations is measured after moving one of them to the closest point of its orbit under
the symmetry group, approximated by alternating an optimal permutation (Hungarian algorithm
per group of identical particles) and an optimal rotation (Kabsch). Both steps minimise the
same squared distance for the other fixed, so the alternation never increases it.

Conventions: configurations are centred, x and y: [..., n, d]; a rotation R: [..., d, d] acts
as x @ R^T (R x_i for each particle); a permutation perm: [..., n] (long) acts as x[..., perm, :],
i.e. row i of the aligned x is particle perm[i] of x, matched to particle i of y.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from .assignment import linear_assignment_batch

Groups = Sequence[Sequence[int]]


def kabsch(x: torch.Tensor, y: torch.Tensor, reflections: bool = False) -> torch.Tensor:
    """Rotation R minimising sum_i |R x_i - y_i|^2 for centred x, y: [..., n, d] -> [..., d, d].

    With reflections=False, R is proper (det R = +1); else R is the optimal orthogonal matrix.
    """
    h = x.transpose(-1, -2) @ y  # [..., d, d] = sum_i x_i y_i^T
    u, _, vh = torch.linalg.svd(h)
    v = vh.transpose(-1, -2)
    if reflections:
        return v @ u.transpose(-1, -2)
    sign = torch.sign(torch.linalg.det(v @ u.transpose(-1, -2)))
    sign = torch.where(sign == 0, torch.ones_like(sign), sign)
    d = torch.ones(h.shape[:-1], dtype=h.dtype, device=h.device)  # [..., d]
    d[..., -1] = sign
    return (v * d.unsqueeze(-2)) @ u.transpose(-1, -2)


def apply_rotation(x: torch.Tensor, rot: torch.Tensor) -> torch.Tensor:
    """x: [..., n, d], rot: [..., d, d] -> x @ rot^T (each particle rotated)."""
    return x @ rot.transpose(-1, -2)


def apply_permutation(x: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """x: [..., n, d], perm: [..., n] -> x[..., perm, :] (batched gather; batch dims broadcast)."""
    batch = torch.broadcast_shapes(x.shape[:-2], perm.shape[:-1])
    x = x.expand(*batch, *x.shape[-2:])
    index = perm.expand(*batch, perm.shape[-1]).unsqueeze(-1).expand(*batch, -1, x.shape[-1])
    return torch.gather(x, -2, index)


def all_particles(n: int) -> tuple[tuple[int, ...], ...]:
    """A single group containing all n particles (all identical)."""
    return (tuple(range(n)),)


def align_permutation(x: torch.Tensor, y: torch.Tensor, groups: Groups | None = None
                      ) -> torch.Tensor:
    """Permutation of x's particles within each group minimising |x[perm] - y|^2.

    x, y: [..., n, d] -> perm: [..., n] (long, on x's device). Particles outside every group
    stay in place; groups=None means all particles are identical. One batched assignment solve
    per group (`flows.assignment.linear_assignment_batch`, compiled, on CPU).
    """
    n = x.shape[-2]
    groups = all_particles(n) if groups is None else groups
    batch = x.shape[:-2]
    perm = np.tile(np.arange(n), (int(np.prod(batch, dtype=np.int64)), 1))
    yf = y.detach().reshape(-1, n, x.shape[-1])
    xf = x.detach().reshape(-1, n, x.shape[-1])
    for group in groups:
        if len(group) < 2:
            continue
        g = torch.as_tensor(group, dtype=torch.long, device=x.device)
        cost = torch.cdist(yf[:, g].double(), xf[:, g].double()) ** 2  # [M, |g|(y), |g|(x)]
        cols = linear_assignment_batch(cost.cpu().numpy())
        ga = np.asarray(group, dtype=np.int64)
        perm[:, ga] = ga[cols]
    return torch.as_tensor(perm, device=x.device).reshape(*batch, n)


def squared_distance(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """|x - y|^2 summed over particles and coordinates. [..., n, d] -> [...]."""
    return ((x - y) ** 2).sum((-1, -2))


STARTS = ("identity", "kabsch", "inertia")


def initial_rotations(x: torch.Tensor, y: torch.Tensor, starts: str = "identity",
                      reflections: bool = False) -> list[torch.Tensor]:
    """Starting rotations for `align`, each [..., d, d], for x, y: [..., n, d].

    'identity': [I] (Klein et al. 2023). 'kabsch': adds the Kabsch rotation for the identity
    permutation (recovers pure rotations). 'inertia': also adds the maps of x's principal axes
    onto y's for every sign choice (2^(d-1) proper, 2^d with reflections); these are
    permutation-invariant, so a rotated and permuted copy is recovered from one of them.
    """
    if starts not in STARTS:
        raise ValueError(f"starts must be one of {STARTS}, got {starts!r}")
    d = x.shape[-1]
    eye = torch.eye(d, dtype=x.dtype, device=x.device).expand(*x.shape[:-2], d, d)
    rots = [eye]
    if starts in ("kabsch", "inertia"):
        rots.append(kabsch(x, y, reflections))
    if starts == "inertia":
        _, vx = torch.linalg.eigh(x.transpose(-1, -2) @ x)
        _, vy = torch.linalg.eigh(y.transpose(-1, -2) @ y)
        base = vy @ vx.transpose(-1, -2)
        det = torch.sign(torch.linalg.det(base))[..., None]  # [..., 1]
        for code in range(2 ** d):
            signs = torch.tensor([1.0 - 2.0 * ((code >> k) & 1) for k in range(d)],
                                 dtype=x.dtype, device=x.device)
            # fix det(R) = +1 by flipping the last sign where needed (unless reflections)
            s = signs.expand(*det.shape[:-1], d).clone()
            if not reflections:
                if code >= 2 ** (d - 1):
                    continue
                s[..., -1] = s[..., -1] * det[..., 0] * torch.prod(signs)
            rots.append((vy * s.unsqueeze(-2)) @ vx.transpose(-1, -2))
    return rots


def align(x: torch.Tensor, y: torch.Tensor, groups: Groups | None = None, n_iter: int = 1,
          reflections: bool = False, rotations: bool = True, starts: str = "identity",
          return_transform: bool = False):
    """Move x towards y along its orbit: alternate permutation (Hungarian) and rotation (Kabsch).

    x, y: centred [..., n, d]. Each iteration permutes x's identical particles optimally for
    the current rotation, then rotates optimally for that permutation; Klein et al. 2023 use one
    iteration from the identity. The alternation is a local method: `starts` ('identity',
    'kabsch', 'inertia'; see `initial_rotations`) adds starting rotations and keeps the best.
    The result is never farther from y than x, and when the identity is optimal x is returned
    unchanged. groups=() disables permutations, rotations=False disables rotations.

    Returns aligned x: [..., n, d], or (aligned x, perm [..., n], R [..., d, d]) if
    return_transform, with aligned = apply_rotation(apply_permutation(x, perm), R).
    """
    n, d = x.shape[-2:]
    batch = torch.broadcast_shapes(x.shape[:-2], y.shape[:-2])
    x, y = x.expand(*batch, n, d), y.expand(*batch, n, d)
    perm = torch.arange(n, device=x.device).expand(*batch, n).clone()
    rot = torch.eye(d, dtype=x.dtype, device=x.device).expand(*batch, d, d).clone()
    best = squared_distance(x, y)
    permute = groups is None or any(len(g) > 1 for g in groups)
    inits = initial_rotations(x, y, starts, reflections) if rotations else [rot]
    for new_rot in inits:
        for _ in range(max(int(n_iter), 1)):
            new_perm = perm
            if permute:
                # the permutation minimising |R x[p] - y| = |x[p] - y R| for the current R
                new_perm = align_permutation(x, apply_rotation(y, new_rot.transpose(-1, -2)),
                                             groups)
            xp = apply_permutation(x, new_perm)
            if rotations:
                new_rot = kabsch(xp, y, reflections=reflections)
            dist = squared_distance(apply_rotation(xp, new_rot), y)
            better = dist < best  # strict: ties keep the previous (e.g. identity) transform
            perm = torch.where(better[..., None], new_perm, perm)
            rot = torch.where(better[..., None, None], new_rot, rot)
            best = torch.where(better, dist, best)
    aligned = apply_rotation(apply_permutation(x, perm), rot)
    if return_transform:
        return aligned, perm, rot
    return aligned


def orbit_distance(x: torch.Tensor, y: torch.Tensor, groups: Groups | None = None,
                   n_iter: int = 1, reflections: bool = False, starts: str = "identity"
                   ) -> torch.Tensor:
    """Squared distance of y to x aligned by `align`. [..., n, d] -> [...]."""
    return squared_distance(align(x, y, groups, n_iter, reflections, starts=starts), y)


def pairwise_align(x0: torch.Tensor, x1: torch.Tensor, groups: Groups | None = None,
                   n_iter: int = 1, reflections: bool = False, starts: str = "identity"
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Align every x0[i] to every x1[j]. x0: [B0, n, d], x1: [B1, n, d].

    Returns (cost [B0, B1] squared aligned distances, perm [B0, B1, n], rot [B0, B1, d, d]);
    the aligned x0[i] for x1[j] is apply_rotation(apply_permutation(x0[i], perm[i, j]), rot[i, j]).
    """
    b0, b1 = x0.shape[0], x1.shape[0]
    xx = x0.unsqueeze(1).expand(b0, b1, *x0.shape[1:])
    yy = x1.unsqueeze(0).expand(b0, b1, *x1.shape[1:])
    aligned, perm, rot = align(xx, yy, groups, n_iter, reflections, starts=starts,
                               return_transform=True)
    return squared_distance(aligned, yy), perm, rot
