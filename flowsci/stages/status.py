"""`flowsci status`: where every system and run of a config stands, read from the output files
and the rules' logs only (no daemon, nothing is written).

Stage reached, from the files in flowsci.paths: a system is `none` or `preprocessed`
(`preprocessing` while its log shows progress); a run is `none`, `preprocessed` (its data
exists), `training step k of N` (train_log.csv, no model.pt yet), `trained`, `sampling i of n
shards`, `sampled` (samples.h5), `reweighted` (reweight.h5 + metrics.json) or `reported`
(table.html + table.csv), with '+refining' / '+refined' for runs with refine enabled. The
progress column is the last progress line (flowsci.progress) of
the log of the stage that comes next, with its age; ETA is that line's. A log that ends in an
error after its last progress line is marked `failed`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from .. import paths
from ..progress import format_duration, parse_line

TAIL_BYTES = 1 << 16  # how much of the end of a log (or train_log.csv) is read


@dataclass
class Status:
    """One row of the status table."""

    system: str
    run: str | None
    stage: str
    progress: str = ""
    eta: str = ""
    log: str = ""


def _tail_lines(path: Path, n_bytes: int = TAIL_BYTES) -> list[str]:
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(size - n_bytes, 0))
            data = f.read()
    except OSError:
        return []
    lines = data.decode(errors="replace").splitlines()
    return lines[1:] if size > n_bytes else lines  # the first may be cut


def _failed(line: str) -> bool:
    return ": error: " in line or line.startswith("Traceback (most recent call last)")


def last_progress(path: Path, now: float | None = None) -> tuple[dict, str] | None:
    """(parsed last progress line, short text for the table) of a log; None without one."""
    lines = _tail_lines(path)
    for i in range(len(lines) - 1, -1, -1):
        p = parse_line(lines[i])
        if p is None:
            continue
        failed = any(_failed(line) for line in lines[i + 1:])
        age = (now if now is not None else time.time()) - path.stat().st_mtime
        count = (f"{p['done']}/{p['total']} {p['unit']}s ({100 * p['done'] // p['total']}%)"
                 if p["total"] else f"{p['done']} {p['unit']}s")
        parts = [count] + ([p["rate"]] if p["rate"] else [])
        parts += [f"{k} {v}" for k, v in p["figures"].items()]
        parts.append("FAILED (see log)" if failed else
                     "done" if p["state"] == "done" else f"{format_duration(age)} ago")
        p["failed"] = failed
        return p, ", ".join(parts)
    return None


def _last_step(train_log: Path) -> int:
    """The last step written to train_log.csv (0 if none)."""
    for line in reversed(_tail_lines(train_log, 8192)):
        head = line.split(",", 1)[0]
        if head.isdigit():
            return int(head)
    return 0


def _with_log(row: Status, logs: list[Path], newer_than: float = 0.0) -> Status:
    """Fill the progress columns from the most recently written of `logs` (if any is newer
    than `newer_than`, an mtime) that holds a progress line."""
    found = [p for p in logs if p.is_file() and p.stat().st_mtime >= newer_than]
    for path in sorted(found, key=lambda p: p.stat().st_mtime, reverse=True):
        got = last_progress(path)
        if got is None:
            continue
        p, text = got
        row.progress, row.log = text, str(path)
        row.eta = ("-" if p["failed"] or p["state"] == "done" else format_duration(p["eta"]))
        break
    return row


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def system_status(config: dict, system: str) -> Status:
    data = paths.data_file(config, system)
    log = paths.log_file(config, "preprocess", system=system)
    if data.is_file():
        return Status(system, None, "preprocessed")
    row = _with_log(Status(system, None, "none"), [log])
    if row.progress:
        row.stage = "preprocessing"
    return row


def run_status(config: dict, run: str) -> Status:
    spec = config["runs"][run]
    system = spec["system"]
    row = Status(system, run, "none")
    html, csv = paths.table_files(config, run)
    n_shards = spec["sampling"]["n_shards"]
    shards = [paths.shard_file(config, run, i) for i in range(n_shards)]
    model = paths.model_file(config, run)
    if html.is_file() and csv.is_file():
        row.stage = "reported"
    elif paths.reweight_file(config, run).is_file() and paths.metrics_file(config, run).is_file():
        row.stage = "reweighted"
        _with_log(row, [paths.log_file(config, "report", run)])
    elif paths.samples_file(config, run).is_file():
        row.stage = "sampled"
        _with_log(row, [paths.log_file(config, "reweight", run)])
    elif model.is_file():
        done = sum(p.is_file() for p in shards)
        missing = [paths.log_file(config, "sample", run, shard=i)
                   for i, p in enumerate(shards) if not p.is_file()]
        _with_log(row, missing, newer_than=_mtime(model))
        row.stage = (f"sampling {done} of {n_shards} shards" if done or row.progress
                     else "trained")
    elif paths.train_log(config, run).is_file() or _has_progress(config, run):
        steps = spec["training"]["steps"]
        row.stage = f"training step {_last_step(paths.train_log(config, run))} of {steps}"
        _with_log(row, [paths.log_file(config, "train", run)])
    elif paths.data_file(config, system).is_file():
        row.stage = "preprocessed"
    return _with_refine(config, run, row)


def _with_refine(config: dict, run: str, row: Status) -> Status:
    """Runs with refine enabled: '+refined' once its metrics exist, '+refining' (with its
    progress, unless the main stages show some) while its log has progress lines."""
    if not config["runs"][run].get("refine", {}).get("enabled"):
        return row
    if paths.refine_metrics(config, run).is_file() and paths.refine_output(config, run).is_file():
        row.stage += "+refined"
        return row
    log = paths.log_file(config, "refine", run)
    if paths.samples_file(config, run).is_file() and log.is_file() and \
            _mtime(log) >= _mtime(paths.samples_file(config, run)) and last_progress(log):
        row.stage += "+refining"
        if not row.progress:
            _with_log(row, [log])
    return row


def _has_progress(config: dict, run: str) -> bool:
    log = paths.log_file(config, "train", run)
    data = paths.data_file(config, config["runs"][run]["system"])
    return (log.is_file() and _mtime(log) >= _mtime(data) and data.is_file()
            and last_progress(log) is not None)


def status(config: dict) -> list[Status]:
    """One row per system, then one per run (in config order)."""
    return ([system_status(config, s) for s in config["systems"]]
            + [run_status(config, r) for r in config["runs"]])


HEADER = ("system", "run", "stage", "progress", "ETA", "log")


def format_table(rows: list[Status]) -> str:
    """Plain-text table, columns aligned; '-' for empty cells."""
    cells = [HEADER] + [(r.system, r.run or "-", r.stage, r.progress or "-", r.eta or "-",
                         r.log or "-") for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(HEADER))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
