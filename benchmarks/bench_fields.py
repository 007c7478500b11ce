"""Throughput of vector fields: forward pass + exact divergence (D batched VJPs), samples/s.

    python benchmarks/bench_fields.py [--device cpu|cuda|all] [--min-time 0.5] [--threads N]

Systems: DW4 (4x2), LJ13 (13x3), LJ55 (55x3), phi^4 L=16, 32 (only the event shape matters,
so plain ParticleTarget / LatticeTarget instances stand in for the registered targets).
Fields use their default (config) sizes. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from flowsci.flows import exact_divergence, prior_for
from flowsci.flows.coupling import RealNVP
from flowsci.models import build_field
from flowsci.systems import LatticeTarget, ParticleTarget

SYSTEMS = {  # name: (target, batch)
    "DW4 (4x2)": (ParticleTarget(n_particles=4, dim=2), 64),
    "LJ13 (13x3)": (ParticleTarget(n_particles=13, dim=3), 16),
    "LJ55 (55x3)": (ParticleTarget(n_particles=55, dim=3), 1),
    "phi4 L=16": (LatticeTarget(shape=(16, 16)), 8),
    "phi4 L=32": (LatticeTarget(shape=(32, 32)), 1),
}
FIELDS = {  # label: (registry name, params, applies to)
    "egnn": ("egnn", {}, lambda t: t.kind == "particles"),
    "e3nn": ("e3nn", {}, lambda t: t.kind == "particles" and t.dim == 3),
    "lattice_conv (conv, odd)": ("lattice_conv", {}, lambda t: t.kind == "lattice"),
    "lattice_conv (gerdes)": ("lattice_conv", {"arch": "gerdes"}, lambda t: t.kind == "lattice"),
}


def timed(fn, device: str, min_time: float) -> float:
    """Seconds per call (after one warm-up call), averaged over >= min_time."""
    fn()
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    sync()
    n, start = 0, time.perf_counter()
    while True:
        fn()
        n += 1
        sync()
        if time.perf_counter() - start >= min_time:
            return (time.perf_counter() - start) / n


def bench_field(name: str, params: dict, target, batch: int, device: str,
                min_time: float, analytic: bool = False) -> float:
    torch.manual_seed(0)
    field = build_field({"name": name, "params": params}, target).to(device)
    x0 = prior_for(target).to(device).sample(batch)
    t = torch.tensor(0.5, device=device)

    def step() -> None:
        if analytic:  # the gerdes field's O(V) divergence
            with torch.no_grad():
                field(t, x0), field.divergence(t, x0)
            return
        x = x0.clone().requires_grad_(True)
        exact_divergence(field(t, x), x)
    return batch / timed(step, device, min_time)


def bench_realnvp(target, batch: int, device: str, min_time: float) -> float:
    flow = RealNVP(target, prior_for(target)).to(device)
    x = prior_for(target).to(device).sample(batch)

    def step() -> None:
        with torch.no_grad():
            flow.log_prob(x)
    return batch / timed(step, device, min_time)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="all", choices=["cpu", "cuda", "all"])
    ap.add_argument("--min-time", type=float, default=0.5, help="seconds per measurement")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    devices = [d for d in devices if d == "cpu" or torch.cuda.is_available()]
    rows = []
    for sys_name, (target, batch) in SYSTEMS.items():
        for label, (name, params, applies) in FIELDS.items():
            if not applies(target):
                continue
            rows.append((label + " + exact div (autograd)", sys_name, target.event_dim, batch,
                         [bench_field(name, params, target, batch, d, args.min_time)
                          for d in devices]))
            if params.get("arch") == "gerdes":
                rows.append((label + " + analytic div", sys_name, target.event_dim, batch,
                             [bench_field(name, params, target, batch, d, args.min_time, True)
                              for d in devices]))
        if target.kind == "lattice":
            rows.append(("realnvp log_prob (8 couplings)", sys_name, target.event_dim, batch,
                         [bench_realnvp(target, batch, d, args.min_time) for d in devices]))
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads"
          + (f", CUDA: {torch.cuda.get_device_name()}" if "cuda" in devices else ""))
    print()
    print("| field | system | D | batch | " + " | ".join(f"{d} samples/s" for d in devices) + " |")
    print("| --- | --- | ---: | ---: | " + " | ".join("---:" for _ in devices) + " |")
    for label, sys_name, D, batch, vals in rows:
        print(f"| {label} | {sys_name} | {D} | {batch} | "
              + " | ".join(f"{v:,.0f}" if v >= 100 else f"{v:.3g}" for v in vals) + " |")


if __name__ == "__main__":
    main()
