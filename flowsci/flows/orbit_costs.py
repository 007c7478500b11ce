"""Pairwise orbit distances for the equivariant OT coupling, and the aligned pairs it picks.

For batches x0: [B0, n, d] and x1: [B1, n, d] (centred), the orbit distance of a pair is
min over g in G of |g x0_i - x1_j|^2, G = rotations (SO(d), or O(d) with reflections) times
permutations within the groups of identical particles. `OrbitAligner.costs` fills the
[B0, B1] matrix that minibatch OT pairs on; `OrbitAligner.align_pairs` moves the chosen x0 to
their partners. Searches (config `search`):

- `exhaustive`: every permutation of the groups (their number is the product of |g|!, at most
  `max_permutations`), each with its optimal rotation in closed form (`max_rotation_trace`):
  the exact orbit distance. DW4: 4! = 24 permutations; a molecule without permutation groups
  (alanine dipeptide): 1, so this is Kabsch for every pair.
- `candidates`: for large groups (LJ13: 13!). A score of the principal-axes frames' rotation
  (flows/frames.py, no assignment solved; 0 for a rotated and permuted copy) ranks the pairs
  and sign patterns; the `candidates` best partners of every row and column are aligned from
  their `frame_starts` best frame rotations (assignment, then rotation, n_iter times; the
  distance at the last permutation's optimal rotation in closed form); the other pairs are
  left out of the OT (an OT plan that still picks one gets it aligned afterwards).
- `all`: the alternation for every pair (Klein, Kraemer & Noe 2023 with starts 'identity',
  n_iter 1); B0 * B1 assignments per start and iteration.
- `auto`: `exhaustive` when there are at most `max_permutations` permutations, else `candidates`.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch

from .frames import frame_scores, principal_frames, sign_patterns
from .symmetry import (STARTS, Groups, align, align_permutation, apply_permutation,
                       apply_rotation, kabsch, squared_distance)

SEARCHES = ("auto", "exhaustive", "candidates", "all")


def group_permutations(groups: Groups, n: int, limit: int) -> torch.Tensor | None:
    """All permutations of n particles within `groups` (identity first): [P, n] long, or None
    when P = prod |g|! exceeds `limit`. Row p maps aligned particle k to particle perms[p, k]."""
    total = math.prod(math.factorial(len(g)) for g in groups)
    if total > limit:
        return None
    perms = [list(range(n))]
    for group in groups:
        perms = [_placed(base, group, p) for base in perms for p in itertools.permutations(group)]
    return torch.tensor(perms, dtype=torch.long)


def _placed(base: list[int], group, image) -> list[int]:
    out = list(base)
    for a, b in zip(group, image):
        out[a] = base[b]
    return out


def max_rotation_trace(h: torch.Tensor, reflections: bool = False) -> torch.Tensor:
    """max over R of tr(R h) for h: [..., d, d] -> [...]; R in SO(d), or O(d) if reflections.

    With h = x^T y, min_R |R x - y|^2 = |x|^2 + |y|^2 - 2 max_R tr(R h). Closed form: the sum
    of h's singular values, the smallest one negated when det h < 0 and R must be proper.
    d = 2 and 3 are written out element-wise (a batched SVD costs ~5 us per 3 x 3 matrix).
    """
    d = h.shape[-1]
    if d in (2, 3):
        return _trace_of_entries([[h[..., a, b] for b in range(d)] for a in range(d)],
                                 reflections)
    s = torch.linalg.svdvals(h)
    if reflections:
        return s.sum(-1)
    sign = torch.where(torch.linalg.det(h) < 0, -1.0, 1.0).to(h.dtype)
    return s[..., :-1].sum(-1) + sign * s[..., -1]


def _trace_of_entries(h: list[list[torch.Tensor]], reflections: bool) -> torch.Tensor:
    """max_R tr(R h) from the entries h[a][b] (tensors of one shape) of 2 x 2 or 3 x 3 h."""
    if len(h) == 2:
        (a, b), (c, e) = h
        proper = torch.hypot(a + e, b - c)
        return torch.maximum(proper, torch.hypot(a - e, b + c)) if reflections else proper
    # singular values from the eigenvalues of m = h^T h (Smith's trigonometric solution of
    # the characteristic cubic); in float64 the smallest has an error ~ sqrt(eps) * largest
    m = [[sum(h[k][a] * h[k][b] for k in range(3)) for b in range(3)] for a in range(3)]
    q = (m[0][0] + m[1][1] + m[2][2]) / 3
    off = m[0][1] ** 2 + m[0][2] ** 2 + m[1][2] ** 2
    d0, d1, d2 = m[0][0] - q, m[1][1] - q, m[2][2] - q
    p = torch.sqrt((d0 ** 2 + d1 ** 2 + d2 ** 2 + 2 * off) / 6)
    det_dev = (d0 * (d1 * d2 - m[1][2] ** 2) - m[0][1] * (m[0][1] * d2 - m[1][2] * m[0][2])
               + m[0][2] * (m[0][1] * m[1][2] - d1 * m[0][2]))
    safe = torch.where(p > 0, p, torch.ones_like(p))
    phi = torch.acos((det_dev / (2 * safe ** 3)).clamp(-1.0, 1.0)) / 3
    e1 = q + 2 * p * torch.cos(phi)
    e3 = q + 2 * p * torch.cos(phi + 2 * math.pi / 3)
    s1, s2, s3 = (e.clamp_min(0).sqrt() for e in (e1, 3 * q - e1 - e3, e3))
    if reflections:
        return s1 + s2 + s3
    det = (h[0][0] * (h[1][1] * h[2][2] - h[1][2] * h[2][1])
           - h[0][1] * (h[1][0] * h[2][2] - h[1][2] * h[2][0])
           + h[0][2] * (h[1][0] * h[2][1] - h[1][1] * h[2][0]))
    return s1 + s2 + torch.where(det < 0, -s3, s3)


def _planar_partners(y: torch.Tensor, reflections: bool) -> torch.Tensor:
    """y: [B, n, 2] -> [2n, k * B] with x.flatten() @ column = h00 + h11, h01 - h10 (and, with
    reflections, h00 - h11, h01 + h10) for h = x^T y."""
    ya, yb = y[..., 0], y[..., 1]
    combos = [(ya, yb), (yb, -ya)] + ([(ya, -yb), (yb, ya)] if reflections else [])
    cols = [torch.stack(c, -1).reshape(y.shape[0], -1).T for c in combos]  # [2n, B] each
    return torch.cat(cols, 1)


@dataclass
class OrbitCosts:
    """cost: [B0, B1] aligned squared distances (left-out pairs: a penalty above every aligned
    one); perm: [B0, B1, n] the permutation of x0[i] for x1[j] (None: found for the chosen
    pairs only, by OrbitAligner.align_pairs); left_out: [B0, B1] bool."""

    cost: torch.Tensor
    perm: torch.Tensor | None
    left_out: torch.Tensor


class OrbitAligner:
    """Orbit distances of all pairs of two batches, and the alignment of chosen pairs.

    groups: permutation groups of identical particles; reflections: O(d) instead of SO(d);
    search, max_permutations, candidates, frame_starts: see the module docstring; n_iter: the
    alternations (`candidates`, `all`); starts: the starting rotations of `all` and of pairs
    left out by `candidates` (flows.symmetry.align).
    """

    def __init__(self, groups: Groups, n: int, reflections: bool = False, search: str = "auto",
                 n_iter: int = 1, starts: str = "inertia", candidates: int = 16,
                 frame_starts: int = 1, max_permutations: int = 120):
        if search not in SEARCHES:
            raise ValueError(f"search must be one of {SEARCHES}, got {search!r}")
        if starts not in STARTS:
            raise ValueError(f"starts must be one of {STARTS}, got {starts!r}")
        if min(int(n_iter), int(candidates), int(frame_starts), int(max_permutations)) < 1:
            raise ValueError("n_iter, candidates, frame_starts and max_permutations must be >= 1")
        self.groups = tuple(tuple(int(i) for i in g) for g in groups if len(g) > 1)
        self.reflections, self.n_iter, self.starts = bool(reflections), int(n_iter), starts
        self.candidates, self.frame_starts = int(candidates), int(frame_starts)
        perms = group_permutations(self.groups, n, int(max_permutations))
        if search == "exhaustive" and perms is None:
            raise ValueError(f"search 'exhaustive' needs at most max_permutations = "
                             f"{max_permutations} permutations of the groups; use 'candidates'")
        if search == "auto":
            search = "exhaustive" if perms is not None else "candidates"
        self.search, self.perms = search, perms

    def costs(self, x0: torch.Tensor, x1: torch.Tensor) -> OrbitCosts:
        """x0: [B0, n, d], x1: [B1, n, d], both centred -> OrbitCosts."""
        return _SEARCH_FUNCTIONS[self.search](self, x0, x1)

    def align_pairs(self, x0: torch.Tensor, x1: torch.Tensor, costs: OrbitCosts,
                    j: torch.Tensor) -> tuple[torch.Tensor, int]:
        """x0[i] moved onto its partner x1[j[i]]: -> (aligned [B0, n, d], pairs that had been
        left out and were aligned now). The rotation is Kabsch's for the found permutation."""
        i = torch.arange(x0.shape[0], device=x0.device)
        if costs.perm is None:  # exhaustive: only the B chosen pairs need their permutation
            perm = self._best_permutations(x0, x1[j])
        else:
            perm = costs.perm[i, j]
        missed = costs.left_out[i, j]
        if missed.any():
            _, p, _ = align(x0[missed], x1[j[missed]], self.groups, self.n_iter,
                            self.reflections, starts=self.starts, return_transform=True)
            perm = perm.clone()
            perm[missed] = p
        xp = apply_permutation(x0, perm)
        return apply_rotation(xp, kabsch(xp, x1[j], self.reflections)), int(missed.sum())

    # -- searches --------------------------------------------------------------------------

    def _exhaustive(self, x0, x1, max_elements: int = 1 << 16) -> OrbitCosts:
        perms = self.perms.to(x0.device)
        n_perms, (b0, n, d), b1 = perms.shape[0], x0.shape, x1.shape[0]
        # 2-D: float32 is exact enough (no cubic); the work is chunked to stay in cache
        work = torch.float32 if d == 2 and x0.dtype != torch.float64 else torch.float64
        x, y = x0.to(work), x1.to(work)
        ys = [y[..., e].T for e in range(d)]  # [n, B1] each
        if d == 2:  # tr(R h) = (h00 + h11) cos + (h01 - h10) sin: two products give both sums
            y2 = _planar_partners(y, self.reflections)  # [2n, k * B1]
        trace = torch.empty(b0, b1, dtype=work, device=x0.device)
        rows = max(1, max_elements // max(1, b1 * n_perms))
        for start in range(0, b0, rows):
            xp = x[start:start + rows][:, perms]  # [r, P, n, d]
            if d == 2:
                sums = (xp.reshape(-1, 2 * n) @ y2).reshape(-1, n_perms, y2.shape[1] // b1, b1)
                best = torch.hypot(sums[:, :, 0], sums[:, :, 1])
                if self.reflections:
                    best = torch.maximum(best, torch.hypot(sums[:, :, 2], sums[:, :, 3]))
            else:
                xs = [xp[..., a].reshape(-1, n) for a in range(d)]  # [r * P, n] each
                # entries of h = (x0 permuted)^T x1 for every (i, p, j): d^2 matrix products
                h = [[xs[a] @ ys[e] for e in range(d)] for a in range(d)]  # [r * P, B1] each
                best = _trace_of_entries(h, self.reflections).reshape(-1, n_perms, b1)
            trace[start:start + rows] = best.amax(1)
        cost = ((x ** 2).sum((-1, -2))[:, None] + (y ** 2).sum((-1, -2)) - 2 * trace)
        left_out = torch.zeros(b0, b1, dtype=torch.bool, device=x0.device)
        return OrbitCosts(cost.clamp_min(0).to(x0.dtype), None, left_out)

    def _best_permutations(self, x0: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The exhaustive search for matched pairs x0[b], y[b]: [B, n, d] -> perm [B, n]."""
        perms = self.perms.to(x0.device)
        h = torch.einsum("bpnd,bne->bpde", x0.double()[:, perms], y.double())  # [B, P, d, d]
        return perms[max_rotation_trace(h, self.reflections).argmax(1)]

    def _candidates(self, x0, x1) -> OrbitCosts:
        b0, b1, n = x0.shape[0], x1.shape[0], x0.shape[-2]
        v0, v1 = principal_frames(x0), principal_frames(x1)
        scores = frame_scores(x0, x1, v0, v1, self.groups, self.reflections)  # [S, B0, B1]
        best = scores.amin(0)
        chosen = torch.zeros(b0, b1, dtype=torch.bool, device=x0.device)
        chosen.scatter_(1, best.topk(min(self.candidates, b1), 1, largest=False).indices, True)
        chosen.scatter_(0, best.topk(min(self.candidates, b0), 0, largest=False).indices, True)
        i, j = chosen.nonzero(as_tuple=True)
        starts = scores[:, i, j].topk(min(self.frame_starts, scores.shape[0]), 0,
                                      largest=False).indices  # [starts, E]
        signs = sign_patterns(x0.shape[-1], x0.dtype, x0.device)
        x, y = x0[i], x1[j]
        dist, perm = None, None
        for start in starts:
            rot = (v1[j] * signs[start].unsqueeze(-2)) @ v0[i].transpose(-1, -2)  # x1 ~ rot x0
            d_new, p_new = self._alternate(x, y, rot)
            if dist is None:
                dist, perm = d_new, p_new
            else:
                better = d_new < dist
                dist, perm = torch.where(better, d_new, dist), torch.where(better[:, None],
                                                                            p_new, perm)
        # left-out pairs cost more than any aligned pair: OT uses them only when it must
        cost = torch.full((b0, b1), float(dist.max()) * 10 + 1, dtype=x0.dtype, device=x0.device)
        cost[i, j] = dist.to(x0.dtype)
        full = torch.arange(n, device=x0.device).expand(b0, b1, n).clone()
        full[i, j] = perm
        return OrbitCosts(cost, full, ~chosen)

    def _alternate(self, x: torch.Tensor, y: torch.Tensor, rot: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """From rotation rot [E, d, d]: n_iter times the best permutation, then (closed form)
        the distance at the best rotation for it -> (dist [E] float64, perm [E, n])."""
        for it in range(self.n_iter):
            if it:
                rot = kabsch(apply_permutation(x, perm), y, self.reflections)
            perm = align_permutation(apply_rotation(x, rot), y, self.groups)
        xp, yd = apply_permutation(x, perm).double(), y.double()
        trace = max_rotation_trace(xp.transpose(-1, -2) @ yd, self.reflections)
        return ((xp ** 2).sum((-1, -2)) + (yd ** 2).sum((-1, -2)) - 2 * trace).clamp_min(0), perm

    def _all(self, x0, x1) -> OrbitCosts:
        b0, b1 = x0.shape[0], x1.shape[0]
        xx = x0.unsqueeze(1).expand(b0, b1, *x0.shape[1:])
        yy = x1.unsqueeze(0).expand(b0, b1, *x1.shape[1:])
        aligned, perm, _ = align(xx, yy, self.groups, self.n_iter, self.reflections,
                                 starts=self.starts, return_transform=True)
        left_out = torch.zeros(b0, b1, dtype=torch.bool, device=x0.device)
        return OrbitCosts(squared_distance(aligned, yy), perm, left_out)


_SEARCH_FUNCTIONS = {"exhaustive": OrbitAligner._exhaustive,
                     "candidates": OrbitAligner._candidates, "all": OrbitAligner._all}
