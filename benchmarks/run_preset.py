"""Rerun one science preset end to end and append its rows to docs/results.md.

    python benchmarks/run_preset.py dw4                  # all stages, then record
    python benchmarks/run_preset.py dw4 --record-only    # record finished outputs only
    python benchmarks/run_preset.py phi4_L8 --runs phi4_L8_fm --nll-test 2000

Runs the stage commands the workflow runs (`flowsci preprocess`, `train` per run, second
phases after their `init_from` run, `sample`, `reweight`, `report`) with the preset's config,
then per run: the test NLL with the exact trace in a tight float64 solve (dopri5,
rtol = atol = 1e-8; nats of the flow's density: on the (n-1)d mean-free subspace for
particles, per configuration for lattices) on the first `--nll-test` test configurations,
stored in metrics.json as test_nll_tight (the report's summary.csv shows it); and from
metrics.json the ESS (% of requested samples), Pareto k-hat, independence-MH acceptance,
reweighted and reference mean energy (reference error: block bootstrap), training and
sampling time (the stages' own clocks). One Markdown row per run is appended to the table
under the marker in docs/results.md, with date, machine and command.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from flowsci import paths  # noqa: E402
from flowsci.config import load_config  # noqa: E402
from flowsci.flows.cnf import SolverConfig  # noqa: E402
from flowsci.io import atomic_output  # noqa: E402
from flowsci.stages.sample import load_trained_flow  # noqa: E402
from flowsci.stages.train import load_split  # noqa: E402

MARKER = "<!-- measured runs: rows appended by benchmarks/run_preset.py -->"
TIGHT = SolverConfig(method="dopri5", rtol=1e-8, atol=1e-8)


def training_order(config: dict, runs: list[str]) -> list[str]:
    """Runs with every init_from source before the run that starts from it."""
    order: list[str] = []

    def visit(run: str) -> None:
        source = config["runs"][run].get("init_from")
        if source and source not in order:
            visit(source)
        if run not in order:
            order.append(run)

    for run in runs:
        visit(run)
    return order


def run_stages(config_path: Path, config: dict, runs: list[str],
               overrides: list[str]) -> dict[str, float]:
    """The stage commands in workflow order; wall seconds per command."""
    env = {**os.environ, "FLOWSCI_PROGRESS_INTERVAL": "60"}
    commands = [["preprocess"]] + [["train", "--run", r] for r in training_order(config, runs)]
    commands += [[stage, "--run", r] for stage in ("sample", "reweight", "report") for r in runs]
    walls = {}
    for cmd in commands:
        t0 = time.perf_counter()
        sets = [f"--set={o}" for o in overrides]
        subprocess.run(["flowsci", *cmd, "-c", str(config_path), "-q", *sets], check=True,
                       env=env)
        walls[" ".join(cmd)] = time.perf_counter() - t0
    return walls


def tight_test_nll(config: dict, run: str, n: int, device: torch.device) -> tuple[float, float]:
    """Mean and standard error of -log q on the first n test configurations (float64)."""
    flow, _, _ = load_trained_flow(config, run, device, torch.float64)
    flow = flow.with_solver(TIGHT) if hasattr(flow, "with_solver") else flow
    x = load_split(config, config["runs"][run]["system"], "test")[:n].to(device)
    with torch.no_grad():
        nll = torch.cat([-flow.log_prob(x[i:i + 250]) for i in range(0, len(x), 250)])
    nll = nll.cpu().numpy()
    return float(nll.mean()), float(nll.std(ddof=1) / np.sqrt(len(nll)))


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}"


def record_nll(config: dict, run: str, nll: tuple[float, float], n: int) -> dict:
    """Store the tight test NLL in the run's metrics.json (the report's summary shows it);
    returns the updated metrics."""
    path = paths.metrics_file(config, run)
    m = json.loads(path.read_text())
    m.update(test_nll_tight=nll[0], test_nll_tight_err=nll[1], test_nll_tight_n=n)
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(m, indent=2, sort_keys=True))
    return m


def row(preset: str, run: str, m: dict, nll: tuple[float, float | None], where: str,
        overrides: list[str] = (), n_nll: int = 1000) -> str:
    """One table row from the run's metrics `m`; a run with `--set` overrides names them
    beside the preset, a test NLL on other than the first 1000 test configurations says on how
    many, the train stage's NLL (error None) is marked ‡."""
    u = m["observables"].get("mean_energy", {})
    fmt = lambda v, e: "—" if v is None else f"{v:.3f} ± {e:.3f}" if e is not None else f"{v:.3f}"  # noqa: E731
    mh = (m.get("mh") or {}).get("acceptance")
    preset = " ".join([preset, *(f"`--set {o}`" for o in overrides)])
    if nll[1] is None:  # --nll-test 0
        nll_cell = f"{nll[0]:.3f} ‡"
    else:
        nll_cell = f"{nll[0]:.3f} ± {nll[1]:.3f}" + (f" (n = {n_nll})" if n_nll != 1000 else "")
    cells = [dt.date.today().isoformat(), preset, run, f"{m['n_requested']:,}", nll_cell,
             f"{100 * m['ess_fraction']:.2f}",
             f"{m['pareto_k']:.2f}" if m.get("pareto_k") is not None else "—",
             f"{mh:.3f}" if mh is not None else "—",
             fmt(u.get("reweighted"), u.get("reweighted_err")),
             fmt(u.get("data"), u.get("data_err")),
             f"{m.get('training_time_s') or float('nan'):.0f}",
             f"{m.get('sampling_time_s') or float('nan'):.0f}", where]
    return "| " + " | ".join(cells) + " |"


def append_rows(doc: Path, rows: list[str]) -> None:
    text = doc.read_text()
    if MARKER not in text:
        raise SystemExit(f"{doc}: marker {MARKER!r} not found")
    head, tail = text.split(MARKER, 1)
    lines = tail.split("\n")
    end = 1
    while end < len(lines) and lines[end].startswith("|"):  # the table after the marker
        end += 1
    lines[end:end] = rows
    doc.write_text(head + MARKER + "\n".join(lines))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("preset", help="name of config/presets/<preset>.yaml")
    p.add_argument("--runs", nargs="*", help="runs to run and record (default: all)")
    p.add_argument("--record-only", action="store_true", help="only record finished outputs")
    p.add_argument("--nll-test", type=int, default=1000,
                   help="test configurations for the tight NLL; 0: use the train stage's test "
                        "NLL (first training.test_samples, float32, the run's solver), marked ‡")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--doc", default=str(ROOT / "docs" / "results.md"))
    p.add_argument("--no-append", action="store_true", help="print the rows only")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, passed to every stage (e.g. results_dir=/scratch)")
    a = p.parse_args()
    config_path = ROOT / "config" / "presets" / f"{a.preset}.yaml"
    os.chdir(ROOT)  # the presets' results_dir is relative to the repository
    config = load_config(config_path, a.set)
    runs = a.runs or list(config["runs"])
    if not a.record_only:
        for cmd, wall in run_stages(config_path, config, runs, a.set).items():
            print(f"{cmd}: {wall:.0f} s wall", flush=True)
    device = torch.device(a.device)
    where = machine(device)
    rows = []
    for r in runs:
        m = json.loads(paths.metrics_file(config, r).read_text())
        if a.nll_test == 0:  # the train stage's value (float32, the run's solver), marked
            nll = (m["test_nll"], None)
        elif a.record_only and m.get("test_nll_tight_n") == a.nll_test:  # already computed
            nll = (m["test_nll_tight"], m["test_nll_tight_err"])
        else:
            nll = tight_test_nll(config, r, a.nll_test, device)
            m = record_nll(config, r, nll, a.nll_test)
        rows.append(row(a.preset, r, m, nll, where, a.set, a.nll_test))
    sets = [f"--set={o}" for o in a.set]
    subprocess.run(["flowsci", "report", "-c", str(config_path), "-q", "--summary-only", *sets,
                    *[f"--run={r}" for r in runs]], check=True)  # summary.csv, tight NLL
    print("\n".join(rows))
    if not a.no_append:
        append_rows(Path(a.doc), rows)


if __name__ == "__main__":
    main()
