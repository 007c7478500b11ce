"""report stage: per-run figures and tables, and a summary.csv across runs.

Per run (in results/{system}/{run}/): figures/{energy,weights,training,observables,
correlations}.png (see flowsci.analysis.plots), table.csv and table.html (scalar observables
and free energies, data / flow / reweighted ± bootstrap error). Across runs:
{out_dir or results_dir}/summary.csv (one row per run).
"""

from __future__ import annotations

from pathlib import Path

from .. import paths
from ..analysis.plots import render_run
from ..analysis.report import (observable_rows, read_metrics, read_reweight, read_train_log,
                               summary_row, write_csv, write_html_table)
from ..errors import ConfigError


def report(config: dict, runs: list[str] | None = None, out_dir: str | None = None,
           figures: bool = True, summary: bool = True) -> list[Path]:
    """Render the report for `runs` (default: all runs in the config); returns written paths.

    figures=False skips the per-run figures and tables; summary=False skips summary.csv (the
    workflow renders runs in parallel jobs and the summary in one job).
    """
    runs = list(config["runs"]) if not runs else list(runs)
    unknown = [r for r in runs if r not in config["runs"]]
    if unknown:
        raise ConfigError(f"unknown run(s) {unknown}; the config has {', '.join(config['runs'])}")
    base = Path(out_dir) if out_dir else Path(config["results_dir"])
    written: list[Path] = []
    rows = []
    for run in runs:
        metrics = read_metrics(paths.metrics_file(config, run))
        rows.append(summary_row(run, metrics))
        if not figures:
            continue
        rw = read_reweight(paths.reweight_file(config, run))
        log = read_train_log(paths.train_log(config, run))
        run_out = paths.run_dir(config, run)
        written += render_run(rw, metrics, log, paths.figures_dir(config, run))
        table = observable_rows(metrics)
        written.append(write_csv(run_out / "table.csv", table))
        written.append(write_html_table(run_out / "table.html", table,
                                        f"{run} ({config['runs'][run]['system']})"))
    if summary:
        written.append(write_csv(base / "summary.csv", rows))
    return written
