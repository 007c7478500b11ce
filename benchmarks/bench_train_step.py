"""Where one training step's time goes, per objective, and 1 vs 2 torch threads.

    python benchmarks/bench_train_step.py [--system dw4|lj13] [--batch 256] [--steps 30]
                                          [--threads 1 2] [--objectives ...]

Per objective (EGNN 32 x 3 on the system, the train stage's loop settings), the phases of
one step as training/loop.py runs them, timed separately on the same batches: data indexing,
the coupling (flow-matching objectives), the objective's forward (field, loss), backward,
gradient clipping, optimiser + schedule, EMA update, one CSV log row, and the validation
amortised over val_every = 100 steps (exact NLL of 256 validation samples). Then the real
loop (`train_flow`) for --steps steps per thread count: its seconds per step against the sum
of the phases shows the loop's own overhead. Median of the steps, milliseconds.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import io
import platform
import statistics
import time

import torch

from flowsci.flows.build import build_flow
from flowsci.geometry import remove_mean
from flowsci.systems import build_target
from flowsci.training import OBJECTIVES
from flowsci.training.ema import EMA
from flowsci.training.loop import TrainSettings, train_flow, validation_nll

TARGETS = {"dw4": {"name": "dw4", "params": {"a": 0.0, "b": -4.0, "c": 0.9, "d0": 4.0}},
           "lj13": {"name": "lj13", "params": {}}}
OBJECTIVE_PARAMS = {
    "flow_matching": {}, "ot_flow_matching": {}, "equivariant_ot_flow_matching": {},
    "likelihood": {"divergence": "hutchinson", "probe": "rademacher"}}


def build(system: str, objective: str):
    target = build_target(TARGETS[system])
    run = {"model": {"name": "egnn", "params": {"hidden": 32, "n_layers": 3}},
           "flow": {"method": "dopri5", "rtol": 1e-5, "atol": 1e-5},
           "training": {"solver": {"method": "midpoint", "n_steps": 8, "adjoint": True}}}
    torch.manual_seed(0)
    flow = build_flow(run, target)
    obj = OBJECTIVES.build(objective, OBJECTIVE_PARAMS[objective], target=target)
    return target, flow, obj


def phases(system: str, objective: str, batch: int, steps: int, data: torch.Tensor) -> dict:
    target, flow, obj = build(system, objective)
    params = [p for p in flow.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    ema = EMA(flow, 0.999)
    gen = torch.Generator().manual_seed(0)
    out = {k: [] for k in ("data", "coupling", "forward", "backward", "clip", "optimiser",
                           "ema", "log")}
    sink = csv.writer(io.StringIO())
    for _ in range(steps):
        t = time.perf_counter
        t0 = t()
        idx = torch.randint(0, len(data), (batch,), generator=gen)
        x = data[idx]
        t1 = t()
        if hasattr(obj, "couple"):  # timed alone on the same batch, then excluded below
            x0 = remove_mean(flow.prior.sample(batch))
            with torch.no_grad():
                obj.couple(x0, remove_mean(x))
        t2 = t()
        loss, stats = obj(flow, x)
        t3 = t()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        t4 = t()
        torch.nn.utils.clip_grad_norm_(params, 10.0)
        t5 = t()
        opt.step()
        sched.step()
        t6 = t()
        ema.update(flow)
        t7 = t()
        sink.writerow([loss.item(), stats.get("nfe", 0), time.time()])
        t8 = t()
        coupling = t2 - t1
        for k, v in zip(out, (t1 - t0, coupling, t3 - t2 - coupling, t4 - t3, t5 - t4, t6 - t5,
                              t7 - t6, t8 - t7)):
            out[k].append(v)
    res = {k: statistics.median(v) * 1e3 for k, v in out.items()}
    start = time.perf_counter()
    with ema.applied(flow):
        validation_nll(flow, data[:256])
    res["validation / 100"] = (time.perf_counter() - start) * 1e3 / 100
    return res


def loop_ms(system: str, objective: str, batch: int, steps: int, data: torch.Tensor,
            threads: int) -> float:
    torch.set_num_threads(threads)
    try:
        _, flow, obj = build(system, objective)
        settings = TrainSettings(steps=steps, batch_size=batch, val_every=10 ** 9,
                                 checkpoint_every=10 ** 9)
        start = time.perf_counter()
        train_flow(flow, obj, data, settings, progress=False)
        return (time.perf_counter() - start) * 1e3 / steps
    finally:
        torch.set_num_threads(1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--system", default="dw4", choices=list(TARGETS))
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--objectives", nargs="+", default=list(OBJECTIVE_PARAMS),
                    choices=list(OBJECTIVE_PARAMS))
    args = ap.parse_args()
    torch.set_num_threads(1)
    target = build_target(TARGETS[args.system])
    data = remove_mean(torch.randn(4096, target.n_particles, target.dim) * 1.5)
    print(f"{datetime.date.today()} | {platform.machine()} | torch {torch.__version__} | "
          f"{args.system}, EGNN 32x3, batch {args.batch}, median of {args.steps} steps, ms\n")
    rows = {o: phases(args.system, o, args.batch, args.steps, data) for o in args.objectives}
    loops = {(o, th): loop_ms(args.system, o, args.batch, args.steps, data, th)
             for th in args.threads for o in args.objectives}
    names = list(next(iter(rows.values())))
    print("| objective | " + " | ".join(names) + " | sum | " +
          " | ".join(f"train_flow {th} thr" for th in args.threads) + " |")
    print("|" + " --- |" * (len(names) + 2 + len(args.threads)))
    for o, r in rows.items():
        total = sum(v for k, v in r.items() if not k.startswith("validation"))
        print(f"| {o} | " + " | ".join(f"{r[k]:.1f}" for k in names) + f" | {total:.1f} | " +
              " | ".join(f"{loops[(o, th)]:.1f}" for th in args.threads) + " |")


if __name__ == "__main__":
    main()
