"""Exact orbit distances for the equivariant OT coupling (flows/orbit_costs.py) and the batched
assignment solver under it (flows/assignment.py), against brute force and scipy."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

from flowsci.flows.assignment import linear_assignment_batch
from flowsci.flows.frames import frame_scores, principal_frames
from flowsci.flows.orbit_costs import OrbitAligner, group_permutations, max_rotation_trace
from flowsci.flows.symmetry import (apply_permutation, apply_rotation, kabsch,
                                    squared_distance)
from flowsci.training.matching import ot_assignment


def centred(*shape: int, seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    return x - x.mean(-2, keepdim=True)


def random_rotations(b: int, d: int, seed: int, proper: bool = True) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(b, d, d, generator=g, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1)).unsqueeze(-2)
    if proper:
        q[torch.linalg.det(q) < 0, :, 0] *= -1
    return q


def random_copies(x: torch.Tensor, groups, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    perm = torch.arange(x.shape[-2]).expand(len(x), -1).clone()
    for group in groups:
        idx = torch.as_tensor(group)
        for i in range(len(x)):
            perm[i, idx] = idx[torch.randperm(len(idx), generator=g)]
    return apply_rotation(apply_permutation(x, perm), random_rotations(len(x), x.shape[-1], seed))


def brute_force_costs(x0, x1, groups, reflections=False) -> torch.Tensor:
    """min over every permutation within the groups of the Kabsch distance, pair by pair."""
    perms = group_permutations(groups, x0.shape[-2], 10 ** 6)
    best = torch.full((len(x0), len(x1)), float("inf"), dtype=torch.float64)
    for p in perms:
        xp = x0[:, p]
        for i in range(len(x0)):
            for j in range(len(x1)):
                r = kabsch(xp[i], x1[j], reflections)
                best[i, j] = min(best[i, j], squared_distance(apply_rotation(xp[i], r), x1[j]))
    return best


# -- the batched assignment solver -------------------------------------------------------------

@pytest.mark.parametrize("n", [1, 2, 3, 4, 7, 13, 22])
def test_assignment_is_optimal_like_scipy(n):
    rng = np.random.default_rng(n)
    batches = [rng.random((60, n, n)),  # generic
               rng.integers(0, 3, (60, n, n)).astype(float),  # many ties
               rng.normal(size=(60, n, n)) * 10]  # negative entries
    for costs in batches:
        out = linear_assignment_batch(costs)
        assert out.shape == (60, n) and out.dtype == np.int64
        for k in range(60):
            assert sorted(out[k]) == list(range(n))  # a permutation
            rows, cols = linear_sum_assignment(costs[k])
            assert costs[k][np.arange(n), out[k]].sum() == pytest.approx(
                costs[k][rows, cols].sum(), abs=1e-9)


def test_assignment_refuses_bad_input():
    assert linear_assignment_batch(np.zeros((0, 3, 3))).shape == (0, 3)
    with pytest.raises(ValueError, match="square"):
        linear_assignment_batch(np.zeros((2, 3, 4)))
    with pytest.raises(ValueError, match="finite"):
        linear_assignment_batch(np.full((1, 2, 2), np.nan))


# -- closed-form rotation fit ------------------------------------------------------------------

@pytest.mark.parametrize("d", [2, 3, 4])
@pytest.mark.parametrize("reflections", [False, True])
def test_max_rotation_trace_matches_kabsch(d, reflections):
    x, y = centred(200, 6, d, seed=1), centred(200, 6, d, seed=2)
    if d == 3:  # include near-degenerate (planar) configurations
        x[:50, :, 2] *= 1e-6
    h = x.transpose(-1, -2) @ y
    r = kabsch(x, y, reflections)
    expected = torch.einsum("bij,bji->b", r, h)
    assert torch.allclose(max_rotation_trace(h, reflections), expected, atol=1e-6)
    dist = (x ** 2).sum((-1, -2)) + (y ** 2).sum((-1, -2)) - 2 * max_rotation_trace(h, reflections)
    assert torch.allclose(dist, squared_distance(apply_rotation(x, r), y), atol=1e-6)


def test_group_permutations_enumerates_within_groups():
    perms = group_permutations([(0, 1, 2), (4, 5)], 6, 100)
    assert perms.shape == (12, 6) and torch.equal(perms[0], torch.arange(6))
    assert len({tuple(p.tolist()) for p in perms}) == 12
    assert (perms[:, 3] == 3).all()  # particle 3 is in no group
    assert set(perms[:, :3].flatten().tolist()) == {0, 1, 2}
    assert group_permutations([tuple(range(6))], 6, 719) is None  # 720 > limit


# -- exhaustive search: the exact orbit distance -----------------------------------------------

@pytest.mark.parametrize("d, groups, reflections", [
    (2, [(0, 1, 2, 3)], False), (2, [(0, 1, 2, 3)], True),
    (3, [(0, 1, 2, 3)], False), (3, [(0, 1), (2, 3, 4)], True), (3, [], False)])
def test_exhaustive_costs_equal_brute_force(d, groups, reflections):
    n = 5 if len(groups) != 1 else 4
    x0, x1 = centred(5, n, d, seed=3), centred(4, n, d, seed=4)
    aligner = OrbitAligner(groups, n, reflections=reflections)
    assert aligner.search == "exhaustive"
    costs = aligner.costs(x0, x1)
    assert torch.allclose(costs.cost, brute_force_costs(x0, x1, groups, reflections), atol=1e-9)
    # the aligned pairs reach exactly the costs OT saw
    j = torch.tensor([2, 0, 3, 1, 1])
    aligned, left_out = aligner.align_pairs(x0, x1, costs, j)
    assert left_out == 0
    assert torch.allclose(squared_distance(aligned, x1[j]), costs.cost[torch.arange(5), j],
                          atol=1e-9)


def test_exhaustive_float32_batch_is_invariant_and_recovers_copies():
    groups = [(0, 1, 2, 3)]
    x0, x1 = centred(64, 4, 2, seed=5, dtype=torch.float32), centred(64, 4, 2, seed=6,
                                                                     dtype=torch.float32)
    aligner = OrbitAligner(groups, 4)
    cost = aligner.costs(x0, x1).cost
    moved = random_copies(x0.double(), groups, seed=7).float()  # same orbits
    assert torch.allclose(aligner.costs(moved, x1).cost, cost, atol=1e-4)
    copies = random_copies(x0.double(), groups, seed=8).float()
    costs = aligner.costs(x0, copies)
    j = ot_assignment(costs.cost)
    assert torch.equal(j, torch.arange(64))  # every copy found its original
    aligned, _ = aligner.align_pairs(x0, copies, costs, j)
    assert squared_distance(aligned, copies).max() < 1e-8
    # the aligned x0 is a proper rotation of a permutation of x0: sorted norms unchanged
    assert torch.allclose(aligned.norm(dim=-1).sort(-1).values, x0.norm(dim=-1).sort(-1).values,
                          atol=1e-5)


# -- large groups: lower bound and candidate pairs ---------------------------------------------

def test_frame_scores_are_order_invariant_zero_for_copies_and_mask_improper_maps():
    groups = [(0, 1, 2), (3, 4)]
    x0, x1 = centred(6, 6, 3, seed=9), centred(5, 6, 3, seed=10)
    v0, v1 = principal_frames(x0), principal_frames(x1)
    scores = frame_scores(x0, x1, v0, v1, groups)
    assert scores.shape == (8, 6, 5)
    assert (torch.isinf(scores).sum(0) == 4).all()  # half the sign patterns are improper
    assert not torch.isinf(frame_scores(x0, x1, v0, v1, groups, reflections=True)).any()
    shuffled = x0[:, [2, 0, 1, 4, 3, 5]]  # reorder within the groups: same scores
    assert torch.allclose(frame_scores(shuffled, x1, v0, v1, groups), scores)
    copies = random_copies(x0, groups, seed=11)
    own = frame_scores(x0, copies, v0, principal_frames(copies), groups).amin(0).diagonal()
    assert own.max() < 1e-9


def test_candidates_recover_rotated_permuted_copies_of_lj13_like_batches():
    groups = [tuple(range(13))]
    x0 = centred(48, 13, 3, seed=12)
    copies = random_copies(x0, groups, seed=13)[torch.randperm(48)]
    aligner = OrbitAligner(groups, 13)
    assert aligner.search == "candidates"
    costs = aligner.costs(x0, copies)
    j = ot_assignment(costs.cost)
    aligned, _ = aligner.align_pairs(x0, copies, costs, j)
    assert squared_distance(aligned, copies[j]).max() < 1e-8


def test_left_out_pairs_are_aligned_when_chosen():
    groups = [tuple(range(13))]
    x0, x1 = centred(16, 13, 3, seed=14), centred(16, 13, 3, seed=15)
    aligner = OrbitAligner(groups, 13, candidates=1)  # 1-2 partners per sample
    costs = aligner.costs(x0, x1)
    assert costs.left_out.any() and not costs.left_out.all()
    j = torch.roll(torch.arange(16), 1)  # a plan that uses left-out pairs
    aligned, n_left_out = aligner.align_pairs(x0, x1, costs, j)
    assert n_left_out == int(costs.left_out[torch.arange(16), j].sum()) > 0
    # each chosen pair is aligned at least as well as the one-pass alignment
    one_pass = OrbitAligner(groups, 13, search="all", starts="identity").costs(x0, x1).cost
    assert (squared_distance(aligned, x1[j]) <= one_pass[torch.arange(16), j] + 1e-9).all()


def test_aligner_refuses_bad_settings():
    with pytest.raises(ValueError, match="search must be one of"):
        OrbitAligner([(0, 1)], 2, search="greedy")
    with pytest.raises(ValueError, match="max_permutations"):
        OrbitAligner([tuple(range(13))], 13, search="exhaustive")
    with pytest.raises(ValueError, match=">= 1"):
        OrbitAligner([(0, 1)], 2, candidates=0)
