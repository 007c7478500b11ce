"""Where each stage reads and writes (design.md, 'Stages, files and commands').

`TEMPLATES` is the one spelling of every stage file: the stage functions fill in all fields,
and the Snakemake rules (`workflow/rules/*.smk`) use `rule_path`, which fills in only the
results directory and leaves {system}, {run}, {shard} as wildcards.
"""

from __future__ import annotations

from pathlib import Path

TEMPLATES = {
    "data": "{results}/{system}/data.h5",
    "run_dir": "{results}/{system}/{run}",
    "model": "{results}/{system}/{run}/model.pt",
    "train_log": "{results}/{system}/{run}/train_log.csv",
    "shard": "{results}/{system}/{run}/samples/shard-{shard}.h5",
    "samples": "{results}/{system}/{run}/samples.h5",
    "reweight": "{results}/{system}/{run}/reweight.h5",
    "metrics": "{results}/{system}/{run}/metrics.json",
    "figures": "{results}/{system}/{run}/figures",
    "table_html": "{results}/{system}/{run}/table.html",
    "table_csv": "{results}/{system}/{run}/table.csv",
    "summary": "{results}/summary.csv",
    # refine stage (runs.<run>.refine.enabled): chains.h5 (flow_mcmc) or particles.h5
    "refine_dir": "{results}/{system}/{run}/refine",
    "refine_chains": "{results}/{system}/{run}/refine/chains.h5",
    "refine_particles": "{results}/{system}/{run}/refine/particles.h5",
    "refine_metrics": "{results}/{system}/{run}/refine/metrics.json",
    # on demand (`snakemake <path>`, not part of `all`): flowsci export, resampled by weight
    "export": "{results}/{system}/{run}/export/resampled.{format}",
    # the Snakemake rules' logs (stderr of each stage command: its log and progress lines)
    "log_preprocess": "{results}/{system}/logs/preprocess.log",
    "log_train": "{results}/{system}/{run}/logs/train.log",
    "log_sample": "{results}/{system}/{run}/logs/sample-{shard}.log",
    "log_gather": "{results}/{system}/{run}/logs/sample-gather.log",
    "log_reweight": "{results}/{system}/{run}/logs/reweight.log",
    "log_report": "{results}/{system}/{run}/logs/report.log",
    "log_refine": "{results}/{system}/{run}/logs/refine.log",
    "log_summary": "{results}/logs/report_summary.log",
    "log_export": "{results}/{system}/{run}/logs/export-{format}.log",
}
LOG_STAGES = ("preprocess", "train", "sample", "gather", "reweight", "refine", "report",
              "summary")


def rule_path(name: str, results: str) -> str:
    """The Snakemake pattern of stage file `name` ({system}, {run}, {shard} left as wildcards)."""
    return TEMPLATES[name].replace("{results}", results)


def _path(name: str, config: dict, run: str | None = None, system: str | None = None,
          **fields) -> Path:
    if run is not None:
        system = config["runs"][run]["system"]
    return Path(TEMPLATES[name].format(results=config["results_dir"], system=system, run=run,
                                       **fields))


def data_file(config: dict, system: str) -> Path:
    return _path("data", config, system=system)


def run_dir(config: dict, run: str) -> Path:
    return _path("run_dir", config, run)


def model_file(config: dict, run: str) -> Path:
    return _path("model", config, run)


def train_log(config: dict, run: str) -> Path:
    return _path("train_log", config, run)


def shard_file(config: dict, run: str, shard: int) -> Path:
    return _path("shard", config, run, shard=shard)


def samples_file(config: dict, run: str) -> Path:
    """All shards gathered into one file."""
    return _path("samples", config, run)


def reweight_file(config: dict, run: str) -> Path:
    return _path("reweight", config, run)


def metrics_file(config: dict, run: str) -> Path:
    return _path("metrics", config, run)


def figures_dir(config: dict, run: str) -> Path:
    return _path("figures", config, run)


def table_files(config: dict, run: str) -> tuple[Path, Path]:
    """(table.html, table.csv) of a run's report."""
    return _path("table_html", config, run), _path("table_csv", config, run)


def refine_dir(config: dict, run: str) -> Path:
    return _path("refine_dir", config, run)


def refine_output(config: dict, run: str) -> Path:
    """chains.h5 (method flow_mcmc) or particles.h5 (resample_move) of the refine stage."""
    method = config["runs"][run]["refine"]["method"]
    return _path("refine_particles" if method == "resample_move" else "refine_chains",
                 config, run)


def refine_metrics(config: dict, run: str) -> Path:
    return _path("refine_metrics", config, run)


def summary_file(config: dict, out_dir: str | None = None) -> Path:
    return Path(out_dir) / "summary.csv" if out_dir else _path("summary", config)


def log_file(config: dict, stage: str, run: str | None = None, system: str | None = None,
             shard: int | None = None) -> Path:
    """The log of a stage's Snakemake job (LOG_STAGES): 'preprocess' takes system, 'summary'
    nothing, the others run (and 'sample' its shard)."""
    if stage not in LOG_STAGES:
        raise ValueError(f"no log for stage {stage!r}; stages with logs: {', '.join(LOG_STAGES)}")
    return _path(f"log_{stage}", config, run, system, shard=shard)
