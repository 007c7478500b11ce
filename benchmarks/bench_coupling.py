"""Cost and quality of the equivariant OT coupling against the field's training step.

    python benchmarks/bench_coupling.py [--systems dw4 lj13 ala2] [--batch 256] [--repeats 3]
                                        [--threads 1] [--slow]

For each system: x1 a batch of target samples (a short MALA run; alanine dipeptide: random
conformers of the shipped structure), x0 prior draws. Rows:
- `field step`: the flow-matching step of the network alone (EGNN 32 x 3 forward, loss,
  backward, Adam), the yardstick of the issue (coupling <= 1/3 of it on LJ13/ala2, <= 1 on DW4);
- `legacy ...`: the coupling as it was (one scipy assignment per pair in a Python loop), with
  the paper's one-pass alignment (starts identity, n_iter 1) and, with --slow, inertia x 3;
- the OrbitAligner searches (flows/orbit_costs.py) at their settings.
Quality: the mean aligned cost of the pairs OT picks on the random batches (lower is better;
`exhaustive` is the exact optimum where it applies) and on a batch of rotated and permuted
copies of x0 (exact recovery: ~0). Times: best of --repeats, runs interleaved, seconds per call.
"""

from __future__ import annotations

import argparse
import datetime
import math
import platform
import time

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from flowsci.flows import prior_for, symmetry
from flowsci.flows.orbit_costs import OrbitAligner
from flowsci.geometry import remove_mean
from flowsci.models import build_field
from flowsci.systems import build_target
from flowsci.training.matching import ot_assignment

TARGETS = {"dw4": {"name": "dw4", "params": {"a": 0.0, "b": -4.0, "c": 0.9, "d0": 4.0}},
           "lj13": {"name": "lj13", "params": {}},
           "ala2": {"name": "ala2", "params": {}}}
MALA_STEP = {"dw4": 0.1, "lj13": 0.03}


def legacy_align_permutation(x, y, groups=None):
    """The coupling's assignment before flows/assignment.py: one scipy call per problem."""
    n = x.shape[-2]
    groups = symmetry.all_particles(n) if groups is None else groups
    batch = x.shape[:-2]
    cost = torch.cdist(y.detach().reshape(-1, n, x.shape[-1]),
                       x.detach().reshape(-1, n, x.shape[-1])) ** 2
    cost = cost.cpu().double().numpy()
    perm = np.tile(np.arange(n), (cost.shape[0], 1))
    for group in groups:
        g = np.asarray(group, dtype=np.int64)
        if len(g) < 2:
            continue
        sub = cost[:, g[:, None], g[None, :]]
        for m in range(sub.shape[0]):
            rows, cols = linear_sum_assignment(sub[m])
            perm[m, g[rows]] = g[cols]
    return torch.as_tensor(perm, device=x.device).reshape(*batch, n)


def legacy_coupling(groups, starts, n_iter):
    def couple(x0, x1):
        fast = symmetry.align_permutation
        symmetry.align_permutation = legacy_align_permutation
        try:
            cost, perm, rot = symmetry.pairwise_align(x0, x1, groups, n_iter, False, starts)
        finally:
            symmetry.align_permutation = fast
        return cost[torch.arange(len(x0)), ot_assignment(cost)].mean().item()
    return couple


def aligner_coupling(groups, n, **options):
    aligner = OrbitAligner(groups, n, **options)

    def couple(x0, x1):
        costs = aligner.costs(x0, x1)
        j = ot_assignment(costs.cost)
        aligned, _ = aligner.align_pairs(x0, x1, costs, j)
        return ((aligned - x1[j]) ** 2).sum((-1, -2)).mean().item()
    return couple


def data_batch(name: str, target, batch: int) -> torch.Tensor:
    if name == "ala2":
        x = target.init_positions(batch, torch.Generator().manual_seed(1))
        x = x.float()
        return remove_mean(x + 0.01 * torch.randn_like(x))  # conformers near the structure
    from flowsci.data.generate.mcmc import metropolis
    data = metropolis(target, n_samples=batch, n_chains=batch, burn_in=1000, thin=1,
                      step_size=MALA_STEP[name], method="mala", seed=1)(progress=False)
    return remove_mean(torch.as_tensor(data.arrays["positions"], dtype=torch.float32))


FIELDS = {"egnn": {"name": "egnn", "params": {"hidden": 32, "n_layers": 3}},
          "pair_kernel": {"name": "pair_kernel", "params": {"r_max": 1.2, "n_rbf": 24}}}


def field_step(target, batch: int, spec: dict):
    field = build_field(spec, target)
    opt = torch.optim.Adam(field.parameters(), 1e-3)
    prior = prior_for(target)
    x1 = prior.sample(batch)

    def step(x0, _):
        t = torch.rand(batch)
        xt = (1 - t[:, None, None]) * x0 + t[:, None, None] * x1
        loss = ((field(t, xt) - (x1 - x0)) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        return float("nan")
    return step


def random_copies(x: torch.Tensor, groups, seed: int = 0) -> torch.Tensor:
    """Each x[i] rotated by a random proper rotation and permuted within the groups."""
    g = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(len(x), x.shape[-1], x.shape[-1], generator=g))
    q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1)).unsqueeze(-2)
    q[torch.linalg.det(q) < 0, :, 0] *= -1
    perm = torch.arange(x.shape[-2]).expand(len(x), -1).clone()
    for group in groups:
        idx = torch.as_tensor(group)
        for i in range(len(x)):
            perm[i, idx] = idx[torch.randperm(len(idx), generator=g)]
    return symmetry.apply_rotation(symmetry.apply_permutation(x, perm), q)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--systems", nargs="+", default=["dw4", "lj13"], choices=list(TARGETS))
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--slow", action="store_true", help="also time the legacy inertia x 3")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{datetime.date.today()} | {platform.processor() or platform.machine()} | "
          f"torch {torch.__version__} | {args.threads} thread(s) | batch {args.batch}\n")
    for name in args.systems:
        torch.manual_seed(0)
        target = build_target(TARGETS[name])
        groups = tuple(tuple(g) for g in target.symmetry.permutations)
        n = target.n_particles
        x1 = data_batch(name, target, args.batch)
        x0 = remove_mean(prior_for(target).sample(args.batch))
        copies = random_copies(x0, groups)
        methods = {"field step (EGNN 32x3 fwd+bwd+Adam)": field_step(target, args.batch,
                                                                     FIELDS["egnn"]),
                   "legacy: one-pass (identity, n_iter 1)": legacy_coupling(groups, "identity", 1)}
        if name == "ala2":  # the preset's field (r_max in nm)
            methods["field step (ala2 preset pair_kernel)"] = field_step(
                target, args.batch, FIELDS["pair_kernel"])
        if args.slow:
            methods["legacy: inertia, n_iter 3"] = legacy_coupling(groups, "inertia", 3)
        methods["all pairs, one-pass (batched assignment)"] = aligner_coupling(
            groups, n, search="all", starts="identity", n_iter=1)
        if args.slow:
            methods["all pairs, inertia, n_iter 1 (batched)"] = aligner_coupling(
                groups, n, search="all", starts="inertia", n_iter=1)
        if np.prod([math.factorial(len(g)) for g in groups]) <= 120:
            methods["exhaustive (default here)"] = aligner_coupling(groups, n)
        for k, frames, n_iter in () if name == "ala2" else ((8, 1, 1), (16, 1, 1), (16, 2, 1), (16, 1, 2), (32, 1, 1)):
            label = f"candidates k={k}, frame starts {frames}, n_iter {n_iter}"
            if (k, frames, n_iter) == (16, 1, 1):
                label += " (default here)" if "exhaustive (default here)" not in methods else ""
            methods[label] = aligner_coupling(groups, n, search="candidates", candidates=k,
                                              frame_starts=frames, n_iter=n_iter)
        best = {m: float("inf") for m in methods}
        quality = {}
        for _ in range(args.repeats):
            for m, fn in methods.items():
                start = time.perf_counter()
                quality[m] = fn(x0, x1)
                best[m] = min(best[m], time.perf_counter() - start)
        copy_quality = {m: fn(x0, copies) for m, fn in methods.items()
                        if not m.startswith("field")}
        step = best[[m for m in methods if m.startswith("field")][-1]]  # the system's field
        print(f"### {name} (n = {n}, groups {[len(g) for g in groups]})\n")
        print("| method | seconds | / field step (last field row) | mean OT cost (random) | mean cost (copies) |")
        print("| --- | ---: | ---: | ---: | ---: |")
        for m in methods:
            q = "" if m.startswith("field") else f"{quality[m]:.4g}"
            c = "" if m.startswith("field") else f"{copy_quality[m]:.2e}"
            print(f"| {m} | {best[m]:.4f} | {best[m] / step:.2f} | {q} | {c} |")
        print()


if __name__ == "__main__":
    main()
