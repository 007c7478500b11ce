"""Does torch.compile speed up the autograd exact trace? Eager vs compiled field, per strategy.

One function evaluation with the exact divergence (forward + D backward passes) of a field at
its config defaults, eager and `torch.compile`d (default inductor backend), for the two
reverse-mode strategies of flowsci.flows.divergence. Reports the first call (compile time
included) and the best of --repeats later calls; a strategy that fails under compile is
reported as such.

    python benchmarks/bench_compile_trace.py --system lj13 --field egnn --batch 64
"""

from __future__ import annotations

import argparse
import time

import torch

import flowsci.models  # noqa: F401
from flowsci.flows.divergence import vjp_batched_divergence, vjp_loop_divergence
from flowsci.models import VECTOR_FIELDS
from flowsci.systems import build_target

STRATEGIES = {"vjp_loop": vjp_loop_divergence, "vjp_batched": vjp_batched_divergence}


def one_evaluation(field, strategy, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    xr = x.clone().requires_grad_(True)
    return strategy(field(t, xr), xr)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--system", default="lj13")
    p.add_argument("--field", default="egnn")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    target = build_target({"name": a.system})
    torch.manual_seed(0)
    field = VECTOR_FIELDS.build(a.field, {}, target=target).to(dev)
    x = torch.randn(a.batch, *target.event_shape, device=dev)
    t = torch.tensor(0.3, device=dev)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    print(f"| field | strategy | first call (s) | best of {a.repeats} (s) |")
    print("| --- | --- | ---: | ---: |")
    for label, f in (("eager", field), ("compiled", torch.compile(field))):
        for name, strategy in STRATEGIES.items():
            try:
                sync()
                t0 = time.perf_counter()
                one_evaluation(f, strategy, t, x)
                sync()
                first, best = time.perf_counter() - t0, float("inf")
                for _ in range(a.repeats):
                    t0 = time.perf_counter()
                    one_evaluation(f, strategy, t, x)
                    sync()
                    best = min(best, time.perf_counter() - t0)
                print(f"| {a.field} {label} | {name} | {first:.3g} | {best:.3g} |", flush=True)
            except Exception as e:  # compile or batching failures are the result
                print(f"| {a.field} {label} | {name} | failed: {type(e).__name__}: "
                      f"{str(e).splitlines()[0][:120]} | — |", flush=True)


if __name__ == "__main__":
    main()
