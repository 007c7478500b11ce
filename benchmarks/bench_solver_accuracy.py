"""Error of the exact log q and cost (NFE) of each ODE solver setting on trained models.

For each trained run of a results tree, n test configurations (the data split) are mapped
data -> prior with every solver setting, in the sampling dtype (float32), and compared with a
float64 dopri5 solve at rtol = atol = 1e-10. Writes a JSON and a Markdown table; the cheapest
setting whose max |error| stays below --target nats is marked. --from-prior uses n of the flow's
own samples instead (seeded prior draws pushed through a float64 dopri5 solve at 1e-10): where
the energy-based objectives evaluate log q with their fixed-step training solver.

    python benchmarks/bench_solver_accuracy.py -c config/config.yaml --results results \
        --out benchmarks/results/solver_accuracy
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import date
from pathlib import Path

import torch

from flowsci.config import load_config
from flowsci.flows import SolverConfig
from flowsci.stages.sample import load_trained_flow
from flowsci.stages.train import load_split

SETTINGS = ([("dopri5", dict(rtol=r, atol=r)) for r in (1e-3, 1e-4, 1e-5, 1e-6, 1e-7)]
            + [(m, dict(n_steps=n)) for m in ("rk4", "midpoint") for n in (2, 4, 8, 16, 32)])
REFERENCE = SolverConfig(method="dopri5", rtol=1e-10, atol=1e-10)


def measure(config: dict, run: str, n: int, from_prior: bool = False) -> list[dict]:
    cpu = torch.device("cpu")
    flow32, _, _ = load_trained_flow(config, run, cpu, torch.float32)
    flow64, _, _ = load_trained_flow(config, run, cpu, torch.float64)
    if from_prior:
        z = flow64.prior.sample(n, generator=torch.Generator().manual_seed(0))
        x = flow64.with_solver(REFERENCE).sample(n, with_log_prob=False, z=z)
    else:
        x = load_split(config, config["runs"][run]["system"], "test")[:n]
    with torch.no_grad():
        ref = flow64.with_solver(REFERENCE).log_prob(x)
    rows = []
    for method, kw in SETTINGS:
        solver = SolverConfig(method=method, **kw)
        cnf = flow32.with_solver(solver)
        t0 = time.perf_counter()
        with torch.no_grad():
            lq = cnf.log_prob(x.float()).double()
        err = (lq - ref).abs()
        rows.append({"run": run, "method": method, **kw, "nfe": cnf.nfe,
                     "max_abs_error": float(err.max()), "mean_abs_error": float(err.mean()),
                     "seconds": time.perf_counter() - t0})
    return rows


def markdown(rows: list[dict], target: float) -> str:
    out = ["| run | solver | NFE | max abs error (nats) | mean abs error | s |",
           "| --- | --- | --- | --- | --- | --- |"]
    best = {}
    for r in rows:
        if r["max_abs_error"] < target and (r["run"] not in best or r["nfe"] < best[r["run"]]["nfe"]):
            best[r["run"]] = r
    for r in rows:
        setting = (f"{r['method']} rtol=atol={r['rtol']:g}" if "rtol" in r
                   else f"{r['method']} n_steps={r['n_steps']}")
        mark = " **(cheapest < target)**" if best.get(r["run"]) is r else ""
        out.append(f"| {r['run']} | {setting}{mark} | {r['nfe']} | {r['max_abs_error']:.2e} | "
                   f"{r['mean_abs_error']:.2e} | {r['seconds']:.2f} |")
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-c", "--config", default="config/config.yaml")
    p.add_argument("--results", default=None, help="results_dir (default: the config's)")
    p.add_argument("--run", action="append")
    p.add_argument("-n", type=int, default=256, help="configurations per run")
    p.add_argument("--from-prior", action="store_true",
                   help="the flow's own samples instead of test configurations")
    p.add_argument("--target", type=float, default=0.01, help="max |error| in nats")
    p.add_argument("--out", default="benchmarks/results/solver_accuracy")
    a = p.parse_args()
    torch.set_num_threads(1)
    sets = [f"results_dir={a.results}"] if a.results else []
    config = load_config(a.config, sets)
    rows = [r for run in (a.run or list(config["runs"]))
            for r in measure(config, run, a.n, a.from_prior)]
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"date": str(date.today()), "machine": platform.processor() or platform.machine(),
            "torch": torch.__version__, "threads": 1, "n": a.n, "target": a.target,
            "points": "flow samples" if a.from_prior else "test configurations"}
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    table = markdown(rows, a.target)
    out.with_suffix(".md").write_text(f"{json.dumps(meta)}\n\n{table}\n")
    print(table)


if __name__ == "__main__":
    main()
