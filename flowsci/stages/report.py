"""report stage: per-run figures and tables, and a summary.csv across runs.

Per run (in results/{system}/{run}/): figures/{energy,weights,training,observables,
correlations}.png (see flowsci.analysis.plots), table.csv and table.html (scalar observables
and free energies, data / flow / reweighted ± bootstrap error). Across runs:
{out_dir or results_dir}/summary.csv (one row per run).
"""

from __future__ import annotations

import json
from pathlib import Path

from .. import paths
from ..analysis.observables import OBSERVABLE_SETS, ObservableSet
from ..analysis.plots import render_run
from ..analysis.report import (observable_rows, read_metrics, read_reweight, read_train_log,
                               summary_row, write_csv, write_html_table)
from ..errors import ConfigError, DataError


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
    written: list[Path] = []
    rows = []
    for run in runs:
        metrics = read_metrics(paths.metrics_file(config, run))
        rows.append(summary_row(run, metrics))
        if not figures:
            continue
        rw = read_reweight(paths.reweight_file(config, run))
        log = read_train_log(paths.train_log(config, run))
        obs = observables_of(rw, paths.reweight_file(config, run))
        written += render_run(rw, metrics, log, paths.figures_dir(config, run), obs)
        table = observable_rows(metrics)
        html_path, csv_path = paths.table_files(config, run)
        written.append(write_csv(csv_path, table))
        written.append(write_html_table(html_path, table,
                                        f"{run} ({config['runs'][run]['system']})",
                                        warnings=metrics.get("warnings")))
    if summary:
        written.append(write_csv(paths.summary_file(config, out_dir), rows))
    return written


def observables_of(rw: dict, path: Path) -> ObservableSet:
    """The observable set (name and params) that wrote reweight results `rw` read from `path`."""
    attrs = rw["attrs"]
    name = attrs.get("observable_set")
    if not name:
        raise DataError(f"{path}: no observable_set attribute (rerun `flowsci reweight`)")
    params = json.loads(attrs.get("observable_params") or "{}")
    return OBSERVABLE_SETS.build(name, params, config_key=f"{path}: observable_set")
