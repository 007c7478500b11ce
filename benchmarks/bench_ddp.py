"""DDP speed-up on CPU: 2 gloo processes (1 thread each) vs 1 process, same global batch.

    python benchmarks/bench_ddp.py [--steps 30] [--batch 256] [--repeats 3] [--out FILE.json]

The workload is the default DW4 maximum-likelihood run (`egnn_mle` in config/config.yaml):
EGNN hidden 32 x 3 layers, float32, Hutchinson trace (Rademacher), midpoint with 8 steps and
the adjoint, global batch 256, `train_flow` for `steps` steps on centred Gaussian data (the
cost of a fixed-step solve does not depend on the data). The two set-ups alternate, `repeats`
times each; reported: the training-loop time (train_flow's `elapsed`: steps only, no start-up,
no validation) and the wall time of the whole command (Python start, imports, torchrun, process
group), best of the repeats, and their ratios, with the machine's 1-minute load average
before and after each run (on a shared machine other jobs take cores from both set-ups).
Needs `torchrun` (torch.distributed.run).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

import torch


def worker(steps: int, batch: int) -> None:
    """One training (run alone, or as one rank under torchrun); rank 0 prints JSON."""
    from flowsci.flows.build import build_flow
    from flowsci.systems import build_target
    from flowsci.training import OBJECTIVES, TrainSettings, distributed, train_flow

    torch.set_num_threads(1)
    with distributed.session(torch.device("cpu")) as where:
        torch.manual_seed(0)
        target = build_target({"name": "dw4"})
        flow = build_flow({"model": {"name": "egnn", "params": {"hidden": 32, "n_layers": 3}},
                           "training": {"solver": {"method": "midpoint", "n_steps": 8,
                                                   "adjoint": True}}}, target)
        obj = OBJECTIVES.build("likelihood", {"divergence": "hutchinson"}, target=target)
        x = torch.randn(4096, 4, 2, generator=torch.Generator().manual_seed(1)) * 2
        x = x - x.mean(1, keepdim=True)
        settings = TrainSettings(steps=steps, batch_size=batch, lr=3e-3, val_every=10**9,
                                 checkpoint_every=10**9, seed=0)
        res = train_flow(flow, obj, x, settings, progress=False)
        if where.is_main:
            print(json.dumps({"loop_s": res["elapsed"], "processes": where.world_size}))


def _launch(n: int, steps: int, batch: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    me = [os.path.abspath(__file__), "--worker", "--steps", str(steps), "--batch", str(batch)]
    cmd = ([sys.executable, *me] if n == 1 else
           [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
            str(n), *me])
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    wall = time.perf_counter() - t0
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("{")][-1]
    # load: 1-min load average before and after (other jobs on the machine slow both set-ups)
    return {**json.loads(line), "wall_s": wall, "load_before": load,
            "load_after": os.getloadavg()[0]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=None, help="also write the results as JSON here")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        worker(a.steps, a.batch)
        return
    runs: dict[int, list[dict]] = {1: [], 2: []}
    for _ in range(a.repeats):  # interleaved, so that a change of machine load hits both
        for n in (1, 2):
            runs[n].append(_launch(n, a.steps, a.batch))
            print(f"{n} process(es): {runs[n][-1]}", flush=True)
    best = {n: {k: min(r[k] for r in rs) for k in ("loop_s", "wall_s")} for n, rs in runs.items()}
    result = {"steps": a.steps, "global_batch": a.batch, "repeats": a.repeats,
              "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
              "torch": torch.__version__, "runs": runs, "best": best,
              "speedup_loop": best[1]["loop_s"] / best[2]["loop_s"],
              "speedup_wall": best[1]["wall_s"] / best[2]["wall_s"]}
    print(f"training loop, {a.steps} steps of global batch {a.batch}: 1 process "
          f"{best[1]['loop_s']:.2f} s, 2 processes {best[2]['loop_s']:.2f} s -> speed-up "
          f"{result['speedup_loop']:.2f}x; whole command {best[1]['wall_s']:.1f} s vs "
          f"{best[2]['wall_s']:.1f} s -> {result['speedup_wall']:.2f}x")
    if a.out:
        with open(a.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
