"""Where each stage reads and writes (design.md, 'Stages, files and commands')."""

from __future__ import annotations

from pathlib import Path


def data_file(config: dict, system: str) -> Path:
    return Path(config["results_dir"]) / system / "data.h5"


def run_dir(config: dict, run: str) -> Path:
    return Path(config["results_dir"]) / config["runs"][run]["system"] / run


def model_file(config: dict, run: str) -> Path:
    return run_dir(config, run) / "model.pt"


def train_log(config: dict, run: str) -> Path:
    return run_dir(config, run) / "train_log.csv"


def shard_file(config: dict, run: str, shard: int) -> Path:
    return run_dir(config, run) / "samples" / f"shard-{shard}.h5"


def samples_file(config: dict, run: str) -> Path:
    """All shards gathered into one file."""
    return run_dir(config, run) / "samples.h5"


def reweight_file(config: dict, run: str) -> Path:
    return run_dir(config, run) / "reweight.h5"


def metrics_file(config: dict, run: str) -> Path:
    return run_dir(config, run) / "metrics.json"


def figures_dir(config: dict, run: str) -> Path:
    return run_dir(config, run) / "figures"
