"""ESS against training time: what another hour of training buys (issue 23, item 3).

    python benchmarks/ess_vs_training.py config/presets/dw4.yaml --run dw4_eqot \
        --stops 1000 2500 5000 10000 20000 30000 --n-samples 2000

Trains the run with the train stage in pieces (`stop_after` = each stop, resuming from its
own checkpoint, so the pieces add up to one ordinary training), and after each piece draws
`--n-samples` exact samples from the checkpoint's EMA weights with the sample stage's code
path (same solver, batches and chirality handling; the same prior draws at every stop) and
reweights them: Kish ESS (% of the samples requested), Pareto k-hat, the last validation NLL
logged, and the training time of the checkpoint (the train stage's own clock). One CSV row
per stop in --out (default benchmarks/results/ess_vs_training_<run>.csv), written atomically;
a rerun skips the stops already recorded and resumes the training where it stopped.
Preprocesses the system's data first when data.h5 is missing.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from flowsci import paths  # noqa: E402
from flowsci.config import load_config  # noqa: E402
from flowsci.flows.build import build_flow  # noqa: E402
from flowsci.device import resolve_dtype  # noqa: E402
from flowsci.io import atomic_output  # noqa: E402
from flowsci.model_file import load_plain  # noqa: E402
from flowsci.reweighting.estimators import ess_fraction, log_weights, pareto_khat  # noqa: E402
from flowsci.stages.preprocess import preprocess  # noqa: E402
from flowsci.stages.sample import draw_samples  # noqa: E402
from flowsci.stages.train import train  # noqa: E402
from flowsci.systems import build_target  # noqa: E402
from flowsci.training.checkpoint import latest_checkpoint  # noqa: E402

FIELDS = ["step", "train_s", "val_nll", "n_samples", "n_failed", "ess_pct", "khat", "nfe",
          "sample_s"]


def last_val_nll(train_log: Path, step: int) -> str:
    """The last validation NLL logged at or before `step` ('' if none)."""
    if not train_log.is_file():
        return ""
    with open(train_log, newline="") as f:
        vals = [r["val_nll"] for r in csv.DictReader(f)
                if r.get("val_nll") not in ("", None) and int(r["step"]) <= step]
    return vals[-1] if vals else ""


def evaluate_checkpoint(config: dict, run: str, ckpt: Path, n: int, seed: int) -> dict:
    """ESS, k-hat, NFE of n exact samples of the checkpoint's EMA weights."""
    spec = config["runs"][run]
    target = build_target(config["systems"][spec["system"]]["target"], "target")
    state = load_plain(ckpt, "checkpoint")
    flow = build_flow(spec, target, run)
    ema = {k: v for k, v in state["ema"].items() if k != "__updates__"}
    flow.load_state_dict({**state["model"], **ema})
    flow = flow.to(dtype=resolve_dtype(spec["sampling"]["dtype"])).eval()
    res = draw_samples(config, run, flow, target, n, seed, progress=False)
    log_w = log_weights(res["energies"].double().numpy(), res["log_q"].double().numpy())
    n_ok = len(log_w)
    return {"step": int(state["step"]), "train_s": round(float(state["elapsed"]), 1),
            "n_samples": n, "n_failed": n - n_ok,
            # failed solves count as zero weight: the ESS is a fraction of the n requested
            "ess_pct": round(100 * ess_fraction(log_w) * n_ok / n, 3),
            "khat": round(float(pareto_khat(log_w)), 3), "nfe": res["nfe"],
            "sample_s": round(res["seconds"], 1)}


def read_rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def write_rows(path: Path, rows: list[dict]) -> None:
    with atomic_output(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        w.writeheader()
        w.writerows(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("config", help="preset or config YAML")
    p.add_argument("--run", required=True)
    p.add_argument("--stops", type=int, nargs="+", required=True, help="training steps")
    p.add_argument("--n-samples", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0, help="prior draws (the same at every stop)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    config = load_config(a.config, a.set)
    system = config["runs"][a.run]["system"]
    out = a.out or ROOT / "benchmarks" / "results" / f"ess_vs_training_{a.run}.csv"
    if not paths.data_file(config, system).is_file():
        preprocess(config, system, progress=False)
    rows = read_rows(out)
    done = {int(r["step"]) for r in rows}
    run_dir = paths.model_file(config, a.run).parent
    for stop in sorted(a.stops):
        if stop in done:
            continue
        t0 = time.perf_counter()
        finished = train(config, a.run, progress=False, stop_after=stop) is not None
        ckpt = latest_checkpoint(run_dir / "checkpoints")
        row = evaluate_checkpoint(config, a.run, ckpt, a.n_samples, a.seed)
        row["val_nll"] = last_val_nll(run_dir / "train_log.csv", row["step"])
        if row["step"] not in done:
            rows.append(row)
            done.add(row["step"])
            write_rows(out, rows)
        print(f"step {row['step']}: train {row['train_s']} s, val NLL {row['val_nll']}, "
              f"ESS {row['ess_pct']} %, k-hat {row['khat']} "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)
        if finished:  # the configured steps (or early stopping) ended the training
            break
    return 0


if __name__ == "__main__":
    sys.exit(main())
