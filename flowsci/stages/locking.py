"""Which lock each command takes and which temporaries it may clean (see flowsci.locks).

One lock per output set: a run's training, one sample shard, the gather, the reweighting, a
run's report, the summary, and a system's data file. Shards of one run therefore still run in
parallel, while two trainings of one run (e.g. an orphaned trainer next to its rerun) cannot.
Under `torchrun` only rank 0 locks (the other ranks write nothing).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

from .. import paths
from ..locks import exclusive_lock, remove_stray_temporaries


def _lock_and_outputs(config: dict, stage: str, run: str | None, system: str | None,
                      shard: int | None, out: str | None) -> tuple[Path, str, list[Path]]:
    if stage == "preprocess":
        data = Path(out) if out else paths.data_file(config, system)
        return (data.with_name(f".{data.name}.lock"), f"preprocessing of {data}",
                [data, data.with_name(f".{data.name}.generator-checkpoint")])
    if stage == "summary":
        summary = paths.summary_file(config, out)
        return summary.with_name(".summary.lock"), "the summary report", [summary]
    run_dir = paths.run_dir(config, run)
    if stage == "train":
        return (run_dir / ".train.lock", f"training of run {run!r}",
                [paths.model_file(config, run), run_dir / "checkpoints" / "ckpt-*.pt"])
    if stage == "sample":
        shard_file = paths.shard_file(config, run, shard)
        return (shard_file.with_name(f".{shard_file.stem}.lock"),
                f"sampling of run {run!r} shard {shard}", [shard_file])
    if stage == "gather":
        return run_dir / ".gather.lock", f"gathering of run {run!r}", [paths.samples_file(config, run)]
    if stage == "reweight":
        return (run_dir / ".reweight.lock", f"reweighting of run {run!r}",
                [paths.reweight_file(config, run), paths.metrics_file(config, run)])
    if stage == "refine":
        return (run_dir / ".refine.lock", f"the refinement of run {run!r}",
                [paths.refine_output(config, run), paths.refine_metrics(config, run),
                 paths.refine_dir(config, run) / "checkpoint-*.pt"])
    if stage == "report":
        html, csv = paths.table_files(config, run)
        return (run_dir / ".report.lock", f"the report of run {run!r}",
                [html, csv, paths.figures_dir(config, run) / "*.png"])
    raise ValueError(f"no lock defined for stage {stage!r}")


@contextlib.contextmanager
def stage_lock(config: dict, stage: str, run: str | None = None, system: str | None = None,
               shard: int | None = None, out: str | None = None) -> Iterator[None]:
    """Hold the stage's lock (BusyError if taken) and clean its outputs' stray temporaries."""
    if int(os.environ.get("RANK", "0")) != 0:
        yield
        return
    lock, what, outputs = _lock_and_outputs(config, stage, run, system, shard, out)
    with exclusive_lock(lock, what):
        remove_stray_temporaries(outputs)
        yield
