"""Cost of the closed-form exact divergence ('pair_kernel') against egnn + the autograd trace,
and a short DW4 flow-matching comparison of the two fields (test NLL with exact divergence).

    python benchmarks/bench_closed_form_field.py [--reps 5] [--steps 1500] [--skip-train]

One thread, float32, CPU. Timings: best of `reps`, the three measurements interleaved:
(a) pair_kernel forward, (b) pair_kernel forward_and_divergence, (c) egnn forward + exact
divergence by `flowsci.testing.autograd_trace` (D backward passes); (a) and (b) under no_grad
(as in sampling). Fields at their default sizes. Times are CPU time of this process
(time.process_time: robust to other jobs on a shared host; equals wall time on an idle one).
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from flowsci.flows import CNF, SolverConfig, prior_for
from flowsci.models import build_field
from flowsci.systems import ParticleTarget, build_target
from flowsci.testing import autograd_trace

SYSTEMS = {"DW4": (4, 2), "LJ13": (13, 3), "LJ55": (55, 3)}


def best_of(fns: dict, reps: int) -> dict[str, float]:
    """Seconds per call of each fn: one warm-up, then the best of `reps` interleaved rounds."""
    for fn in fns.values():
        fn()
    best = {k: math.inf for k in fns}
    for _ in range(reps):
        for k, fn in fns.items():
            start = time.process_time()
            fn()
            best[k] = min(best[k], time.process_time() - start)
    return best


def bench_speed(reps: int) -> None:
    print("| system | batch | (a) pk fwd ms | (b) pk fwd+div ms | (b)/(a) | (c) egnn fwd+autograd "
          "div ms | (c)/(b) |")
    print("|---|---|---|---|---|---|---|")
    for name, (n, d) in SYSTEMS.items():
        target = ParticleTarget(n_particles=n, dim=d)
        torch.manual_seed(0)
        pk = build_field({"name": "pair_kernel"}, target)
        with torch.no_grad():  # leave the zero init: timings must not see an all-zero field
            for p in pk.parameters():
                p.add_(0.1 * torch.randn_like(p))
        egnn = build_field({"name": "egnn"}, target)
        t = torch.tensor(0.5)
        for batch in (64, 256):
            x = prior_for(target).sample(batch)

            def fwd():
                with torch.no_grad():
                    pk(t, x)

            def fwd_div():
                with torch.no_grad():
                    pk.forward_and_divergence(t, x)

            def egnn_div():
                autograd_trace(egnn, t, x)  # includes its forward pass

            r = best_of({"a": fwd, "b": fwd_div, "c": egnn_div}, reps)
            print(f"| {name} | {batch} | {1e3 * r['a']:.2f} | {1e3 * r['b']:.2f} | "
                  f"{r['b'] / r['a']:.2f} | {1e3 * r['c']:.1f} | {r['c'] / r['b']:.0f} |",
                  flush=True)


def dw4_data(n: int, seed: int) -> torch.Tensor:
    """DW4 reference samples from the 'mcmc' generator (Metropolis). -> [n, 4, 2] float32."""
    from flowsci.data.generate import GENERATORS
    target = build_target({"name": "dw4"})
    gen = GENERATORS.build("mcmc", {"n_samples": n, "n_chains": 100, "burn_in": 1000,
                                    "thin": 20, "seed": seed}, target=target)
    x = torch.as_tensor(gen(progress=False).arrays["positions"])
    return (x - x.mean(-2, keepdim=True)).float()


def train_and_eval(field_spec: dict, train: torch.Tensor, test: torch.Tensor, steps: int,
                   batch: int = 256, lr: float = 1e-3) -> dict[str, float]:
    from flowsci.training.matching import FlowMatching
    target = build_target({"name": "dw4"})
    torch.manual_seed(0)
    flow = CNF(build_field(field_spec, target), prior_for(target), SolverConfig())  # dopri5
    objective = FlowMatching(target)
    opt = torch.optim.AdamW(flow.field.parameters(), lr=lr)
    start = time.process_time()
    losses = []
    for _ in range(steps):
        idx = torch.randint(0, len(train), (batch,))
        loss, _ = objective(flow, train[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    train_s = time.process_time() - start
    start = time.process_time()
    with torch.no_grad():
        nll = -flow.log_prob(test).mean().item()  # exact divergence, dopri5 1e-5
        x, logq = flow.sample(2000, generator=torch.Generator().manual_seed(1))
    eval_s = time.process_time() - start
    logw = -target.energy(x.double()) - logq.double()
    ess = (torch.exp(2 * torch.logsumexp(logw, 0) - torch.logsumexp(2 * logw, 0)) / len(x))
    return {"fm_loss_last100": sum(losses[-100:]) / 100, "test_nll": nll,
            "ess": ess.item(), "train_s": train_s, "eval_s": eval_s,
            "params": sum(p.numel() for p in flow.field.parameters())}


def bench_training(steps: int) -> None:
    train, test = dw4_data(20000, seed=0), dw4_data(2000, seed=1)
    print(f"\nDW4 flow matching: {steps} steps, batch 256, AdamW lr 1e-3; test NLL on "
          f"{len(test)} held-out samples (exact divergence, dopri5); ESS of 2000 samples")
    print("| field | params | FM loss (last 100) | test NLL | ESS | train s | eval s |")
    print("|---|---|---|---|---|---|---|")
    for label, spec in (("pair_kernel", {"name": "pair_kernel"}), ("egnn", {"name": "egnn"})):
        r = train_and_eval(spec, train, test, steps)
        print(f"| {label} | {r['params']} | {r['fm_loss_last100']:.4f} | {r['test_nll']:.4f} | "
              f"{100 * r['ess']:.1f}% | {r['train_s']:.0f} | {r['eval_s']:.0f} |", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--skip-train", action="store_true")
    p.add_argument("--skip-speed", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float32)
    print(f"torch {torch.__version__}, 1 thread, float32, CPU\n")
    if not args.skip_speed:
        bench_speed(args.reps)
    if not args.skip_train:
        bench_training(args.steps)


if __name__ == "__main__":
    main()
