"""Peak memory and speed of one maximum-likelihood training step: adjoint vs direct backprop.

    python benchmarks/bench_adjoint_memory.py [--device cpu|cuda] [--steps 4 8 16 32 64]
                                              [--systems dw4 lj13] [--repeats 3]

One step = MaximumLikelihood (Hutchinson trace, Rademacher probe) forward + backward + Adam
update of a CNF with the default EGNN field, rk4 with n_steps fixed steps (4 field evaluations
each), `SolverConfig(adjoint=True)` (torchdiffeq odeint_adjoint) or False (backprop through the
solver). Every configuration runs in a fresh subprocess.

What "peak memory" measures:
- cuda: torch.cuda.max_memory_allocated() during the step minus memory_allocated() before it
  (tensor memory held by PyTorch's caching allocator; model, optimizer state and batch excluded).
- cpu: increase of the process's peak resident set size (VmHWM, reset through
  /proc/self/clear_refs after a warm-up step) over the resident size (VmRSS) before the step.
  glibc is told to serve allocations >= 64 KiB by mmap (MALLOC_MMAP_THRESHOLD_), so freed
  tensors go back to the OS and the warm-up step does not pre-pay the measured one. It counts
  everything the step touches (tensors, autograd graph, allocator overhead), not only tensors.
Speed: training steps per second, median over `repeats` timed steps after the warm-up.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

SYSTEMS = {"dw4": 64, "lj13": 16}  # system: batch size


def _status_kb(key: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def _target(system: str):
    from flowsci.systems import TARGETS, ParticleTarget
    from flowsci.systems.double_well import DoubleWell

    if system == "dw4":
        return DoubleWell()
    if system in TARGETS:
        return TARGETS.build(system, {})
    return ParticleTarget(n_particles=13, dim=3)  # only the event shape matters here


def worker(system: str, n_steps: int, adjoint: bool, device: str, repeats: int,
           threads: int) -> dict:
    """Run one configuration in this process; returns the measurements."""
    import torch

    if threads > 0:
        torch.set_num_threads(threads)
    import flowsci.models  # noqa: F401
    from flowsci.flows import CNF, SolverConfig, prior_for
    from flowsci.models import build_field
    from flowsci.training.likelihood import MaximumLikelihood

    torch.manual_seed(0)
    target = _target(system)
    solver = SolverConfig(method="rk4", n_steps=n_steps, adjoint=adjoint)
    cnf = CNF(build_field({"name": "egnn"}, target), prior_for(target), solver).to(device)
    objective = MaximumLikelihood(target, solver=solver)
    opt = torch.optim.Adam(cnf.parameters(), lr=1e-4)
    x = prior_for(target, 1.5).sample(SYSTEMS[system]).to(device)

    def step() -> dict:
        loss, stats = objective(cnf, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return stats

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    step()  # warm-up: lazy initialisation, optimizer state
    sync()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        stats = step()
        sync()
        peak_mb = (torch.cuda.max_memory_allocated() - before) / 2**20
    else:
        import gc

        gc.collect()
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # reset VmHWM to the current RSS
        before = _status_kb("VmRSS")
        stats = step()
        peak_mb = (_status_kb("VmHWM") - before) / 1024
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t0)
    times = times or [float("inf")]
    return {"system": system, "n_steps": n_steps, "adjoint": adjoint, "peak_mb": peak_mb,
            "steps_per_s": 1.0 / statistics.median(times), "nfe": stats["nfe"],
            "batch": SYSTEMS[system], "threads": torch.get_num_threads()}


def run_config(system: str, n_steps: int, adjoint: bool, device: str, repeats: int,
               threads: int) -> dict:
    """Memory in one fresh subprocess (mmap-backed allocations), speed in another (plain)."""
    results = []
    for mode, env in (("memory", {"MALLOC_MMAP_THRESHOLD_": "65536",
                                   "MALLOC_TRIM_THRESHOLD_": "65536"}), ("speed", {})):
        cmd = [sys.executable, __file__, "--worker", system, str(n_steps), str(int(adjoint)),
               "--device", device, "--repeats", str(repeats if mode == "speed" else 0),
               "--threads", str(threads)]
        out = subprocess.run(cmd, env=dict(os.environ, **env), capture_output=True, text=True,
                             check=True)
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    mem, speed = results
    return dict(mem, steps_per_s=speed["steps_per_s"]) if device == "cpu" else speed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if _cuda() else "cpu")
    ap.add_argument("--steps", type=int, nargs="+", default=[4, 8, 16, 32, 64])
    ap.add_argument("--systems", nargs="+", default=list(SYSTEMS), choices=list(SYSTEMS))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    ap.add_argument("--worker", nargs=3, metavar=("SYSTEM", "N_STEPS", "ADJOINT"))
    args = ap.parse_args()
    if args.worker:
        system, n, adj = args.worker
        print(json.dumps(worker(system, int(n), bool(int(adj)), args.device, args.repeats,
                                args.threads)))
        return
    import torch

    print(f"device: {args.device}; {platform.machine()}; Python {platform.python_version()}; "
          f"torch {torch.__version__}; threads {args.threads or torch.get_num_threads()}")
    print("| system (batch) | rk4 steps | NFE fwd | peak MB adjoint | peak MB direct "
          "| steps/s adjoint | steps/s direct |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for system in args.systems:
        for n in args.steps:
            a = run_config(system, n, True, args.device, args.repeats, args.threads)
            d = run_config(system, n, False, args.device, args.repeats, args.threads)
            print(f"| {system} ({a['batch']}) | {n} | {4 * n} | {a['peak_mb']:.1f} "
                  f"| {d['peak_mb']:.1f} | {a['steps_per_s']:.2f} | {d['steps_per_s']:.2f} |",
                  flush=True)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


if __name__ == "__main__":
    main()
