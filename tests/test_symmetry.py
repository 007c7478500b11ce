"""Alignment modulo rotations and permutations (flowsci.flows.symmetry) and OT pairing."""

from __future__ import annotations

import torch

from flowsci.flows.symmetry import (align, align_permutation, apply_permutation, apply_rotation,
                                    kabsch, pairwise_align, squared_distance)
from flowsci.training.matching import ot_assignment, squared_cost


def centred(*shape: int, seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g, dtype=dtype)
    return x - x.mean(-2, keepdim=True)


def random_rotation(d: int, seed: int = 0, proper: bool = True) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))
    if proper and torch.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def test_kabsch_recovers_known_rotation():
    for d in (2, 3):
        x = centred(7, 13, d, seed=d)
        rots = torch.stack([random_rotation(d, seed=s) for s in range(7)])
        y = apply_rotation(x, rots)
        est = kabsch(x, y)
        assert (est - rots).abs().max() < 1e-10
        assert torch.allclose(torch.linalg.det(est), torch.ones(7, dtype=torch.float64))


def test_kabsch_proper_vs_reflection():
    x = centred(13, 3, seed=1)
    refl = random_rotation(3, seed=2, proper=False)
    if torch.linalg.det(refl) > 0:
        refl[:, 0] = -refl[:, 0]
    y = apply_rotation(x, refl)
    assert (kabsch(x, y, reflections=True) - refl).abs().max() < 1e-10
    proper = kabsch(x, y)
    assert torch.linalg.det(proper) > 0
    assert squared_distance(apply_rotation(x, proper), y) > 1e-3  # cannot reach a mirror image


def test_permutation_alignment_recovers_known_permutation():
    y = centred(4, 13, 3, seed=3)
    perms = torch.stack([torch.randperm(13, generator=torch.Generator().manual_seed(s))
                         for s in range(4)])
    x = apply_permutation(y, perms)  # x[i] = y[perm[i]]
    found = align_permutation(x, y)
    assert torch.equal(apply_permutation(x, found), y)
    assert torch.equal(found, perms.argsort(-1))


def test_permutation_respects_groups():
    y = centred(6, 3, seed=4)
    groups = ((0, 1, 2), (3, 4))  # particle 5 is unique
    x = y[[1, 2, 0, 4, 3, 5]]
    found = align_permutation(x, y, groups)
    assert torch.equal(apply_permutation(x, found), y)
    # a swap across groups cannot be undone: particles 2 and 3 stay in their groups
    z = y[[0, 1, 3, 2, 4, 5]]
    p = align_permutation(z, y, groups)
    assert set(p[:3].tolist()) == {0, 1, 2} and set(p[3:5].tolist()) == {3, 4} and p[5] == 5


def test_align_recovers_rotated_permuted_copy_and_never_increases_distance():
    y = centred(16, 13, 3, seed=5)
    noise = 0.01 * centred(16, 13, 3, seed=8)
    perm = torch.randperm(13, generator=torch.Generator().manual_seed(7))
    # any rotation without permutation, any permutation without rotation: exact recovery
    x = apply_rotation(y, random_rotation(3, seed=6)) + noise
    assert squared_distance(align(x, y, starts="kabsch"), y).max() < 0.01  # noise remains
    assert squared_distance(align(apply_permutation(y, perm) + noise, y), y).max() < 0.01
    # both, any rotation: principal-axes starts find the basin of the true alignment
    x = apply_permutation(x, perm)
    assert squared_distance(align(x, y, n_iter=2, starts="inertia"), y).max() < 0.01
    # both, a moderate rotation: one start from the identity suffices (local method)
    small = torch.linalg.matrix_exp(0.3 * torch.tensor([[0, -1, 0.5], [1, 0, -0.2], [-0.5, 0.2, 0]],
                                                        dtype=torch.float64))
    x = apply_permutation(apply_rotation(y, small), perm) + noise
    assert squared_distance(align(x, y, n_iter=5), y).max() < 0.01
    # unrelated pairs: alignment lowers (or keeps) the distance, never raises it
    a, b = centred(64, 13, 3, seed=9), centred(64, 13, 3, seed=10)
    before = squared_distance(a, b)
    after1 = squared_distance(align(a, b, n_iter=1), b)
    after3 = squared_distance(align(a, b, n_iter=3), b)
    assert (after1 <= before + 1e-12).all() and (after1 < before).float().mean() > 0.9
    assert (after3 <= after1 + 1e-12).all()
    assert torch.allclose(align(a, b).mean(-2), torch.zeros(64, 3, dtype=a.dtype), atol=1e-12)


def test_align_leaves_aligned_pair_unchanged():
    y = centred(8, 13, 3, seed=11)
    x = y + 0.05 * centred(8, 13, 3, seed=12)  # close to y: identity is optimal
    aligned, perm, rot = align(x, y, n_iter=3, return_transform=True)
    assert torch.equal(perm, torch.arange(13).expand(8, 13))
    aligned2 = align(aligned, y, n_iter=3)  # idempotent on an aligned pair
    assert torch.allclose(aligned2, aligned, atol=1e-10)
    assert torch.allclose(align(y, y), y, atol=1e-12)


def test_pairwise_align_matches_single_alignments():
    x0, x1 = centred(5, 4, 2, seed=13), centred(6, 4, 2, seed=14)
    cost, perm, rot = pairwise_align(x0, x1)
    assert cost.shape == (5, 6) and perm.shape == (5, 6, 4) and rot.shape == (5, 6, 2, 2)
    for i in range(5):
        for j in range(6):
            single = align(x0[i], x1[j])
            assert torch.isclose(cost[i, j], squared_distance(single, x1[j]))
            assert cost[i, j] <= squared_distance(x0[i], x1[j]) + 1e-12


def test_ot_pairing_is_a_permutation_and_lowers_cost():
    g = torch.Generator().manual_seed(15)
    x0 = torch.randn(128, 2, generator=g, dtype=torch.float64)
    shift = torch.tensor([3.0, 0.0], dtype=torch.float64)
    x1 = torch.randn(128, 2, generator=g, dtype=torch.float64) * 0.5 + shift
    perm = ot_assignment(squared_cost(x0, x1))
    assert sorted(perm.tolist()) == list(range(128))
    independent = ((x0 - x1) ** 2).sum(-1).mean()
    paired = ((x0 - x1[perm]) ** 2).sum(-1).mean()
    assert paired < independent
    # optimal: no pair swap improves it (2-opt check on random swaps)
    c = squared_cost(x0, x1)
    total = c[torch.arange(128), perm].sum()
    for _ in range(200):
        i, j = torch.randint(0, 128, (2,), generator=g).tolist()
        p = perm.clone()
        p[i], p[j] = perm[j], perm[i]
        assert c[torch.arange(128), p].sum() >= total - 1e-9
