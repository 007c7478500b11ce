"""Principal-axes frames of particle configurations, and a cheap frame-based pair score.

A configuration's principal axes (eigenvectors of x^T x) rotate with it and do not depend on
the particles' order, so the rotation between two configurations' frames, up to a sign per
axis, is a permutation-invariant guess of their best alignment (exact for a rotated and
permuted copy with distinct principal moments). `frame_scores` rates every pair and sign
pattern without solving any assignment: in the two frames, the sorted coordinates along each
axis of each group of identical particles are compared (the distance of sorted lists is the
least over all orders, so a copy scores 0). The equivariant OT coupling uses the scores to
pick which pairs to align and from which sign pattern (flows/orbit_costs.py).
"""

from __future__ import annotations

import itertools

import torch

from .symmetry import Groups


def principal_frames(x: torch.Tensor) -> torch.Tensor:
    """x: centred [B, n, d] -> V: [B, d, d], columns the principal axes (ascending moments);
    x @ V are the coordinates in the frame."""
    return torch.linalg.eigh(x.transpose(-1, -2) @ x)[1]


def sign_patterns(d: int, dtype=torch.float32, device=None) -> torch.Tensor:
    """All 2^d axis sign flips: [S, d] of +-1, the identity first."""
    return torch.tensor(list(itertools.product([1.0, -1.0], repeat=d)), dtype=dtype,
                        device=device)


def frame_scores(x0: torch.Tensor, x1: torch.Tensor, v0: torch.Tensor, v1: torch.Tensor,
                 groups: Groups, reflections: bool = False) -> torch.Tensor:
    """Score of the frame map R = V1 S V0^T for every pair and sign pattern S.

    x0: [B0, n, d], x1: [B1, n, d] centred; v0, v1 their frames -> [S, B0, B1] (S = 2^d, in
    the order of `sign_patterns`): sum over axes and groups of |sort(c0) - sort(s c1)|^2 with c
    the frame coordinates (particles in no group: compared in place). Sign patterns whose R is
    improper get +inf unless reflections.
    """
    d = x0.shape[-1]
    c0, c1 = x0 @ v0, x1 @ v1  # frame coordinates [B, n, d]
    grouped = {i for g in groups for i in g}
    fixed = [i for i in range(x0.shape[-2]) if i not in grouped]
    same = torch.zeros(d, x0.shape[0], x1.shape[0], dtype=x0.dtype, device=x0.device)
    flipped = torch.zeros_like(same)
    for a in range(d):
        for g in groups:
            s0 = c0[:, list(g), a].sort(-1).values
            s1 = c1[:, list(g), a].sort(-1).values
            same[a] += torch.cdist(s0, s1) ** 2
            flipped[a] += torch.cdist(s0, -s1.flip(-1)) ** 2  # sort(-c) = -flip(sort(c))
        if fixed:
            same[a] += torch.cdist(c0[:, fixed, a], c1[:, fixed, a]) ** 2
            flipped[a] += torch.cdist(c0[:, fixed, a], -c1[:, fixed, a]) ** 2
    signs = sign_patterns(d, x0.dtype, x0.device)
    scores = torch.stack([sum(torch.where(s[a] > 0, same[a], flipped[a]) for a in range(d))
                          for s in signs])  # [S, B0, B1]
    if not reflections:  # det R = det V1 * prod(s) * det V0 must be +1
        hand = torch.linalg.det(v0)[:, None] * torch.linalg.det(v1)[None, :]  # [B0, B1]
        proper = signs.prod(1)[:, None, None] * hand > 0
        scores = torch.where(proper, scores, torch.full_like(scores, float("inf")))
    return scores
