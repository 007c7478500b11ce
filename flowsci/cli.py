"""`flowsci <stage>`: the five stages and `export` as commands, each calling the stage
function of the same name in flowsci.stages with the same options; `flowsci status`
summarises where every system and run of a config stands.

Logging goes to stderr (a Snakemake rule redirects it to the rule's log). Without a terminal,
or with --quiet, long loops write progress lines there (flowsci.progress) instead of bars."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from typing import Callable

from .config import load_config
from .errors import ConfigError, FlowsciError
from .progress import ENV_INTERVAL, interval_from_env
from .stages.locking import stage_lock

log = logging.getLogger("flowsci")


def _names(cfg: dict, a: argparse.Namespace, section: str, option: str) -> list[str]:
    """The --run / --system names given (default: all), each checked against the config."""
    given = getattr(a, option) or list(cfg[section])
    for name in given:
        if name not in cfg[section]:
            raise ConfigError(f"--{option} {name!r}: no such entry in the config's {section} "
                              f"(it has: {', '.join(cfg[section]) or 'none'})")
    return given


def _is_allocation_failure(e: RuntimeError) -> bool:
    text = str(e).lower()
    return "can't allocate memory" in text or "out of memory" in text


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}: must be a step >= 1")
    return value


def _preprocess(cfg: dict, a: argparse.Namespace) -> None:
    from .stages.preprocess import preprocess

    for system in _names(cfg, a, "systems", "system"):
        with stage_lock(cfg, "preprocess", system=system, out=a.out):
            print(preprocess(cfg, system, out=a.out, force=a.force, progress=not a.quiet))


def _train(cfg: dict, a: argparse.Namespace) -> None:
    from .stages.train import train

    for run in _names(cfg, a, "runs", "run"):
        with stage_lock(cfg, "train", run=run):
            path = train(cfg, run, progress=not a.quiet, device=a.device, stop_after=a.stop_after)
        print(path if path else f"{run}: stopped at step {a.stop_after}; run again to resume")


def _sample(cfg: dict, a: argparse.Namespace) -> None:
    from .stages.sample import gather, sample

    for run in _names(cfg, a, "runs", "run"):
        if not a.gather:
            n_shards = cfg["runs"][run]["sampling"]["n_shards"]
            for i in [a.shard] if a.shard is not None else range(n_shards):
                with stage_lock(cfg, "sample", run=run, shard=i):
                    print(sample(cfg, run, shard=i, progress=not a.quiet, device=a.device))
        if a.gather or a.shard is None:
            with stage_lock(cfg, "gather", run=run):
                print(gather(cfg, run))


def _reweight(cfg: dict, a: argparse.Namespace) -> None:
    from .stages.reweight import reweight

    for run in _names(cfg, a, "runs", "run"):
        with stage_lock(cfg, "reweight", run=run):
            print(reweight(cfg, run))


def _refine(cfg: dict, a: argparse.Namespace) -> None:
    from .stages.refine import refine

    for run in _names(cfg, a, "runs", "run"):
        if not cfg["runs"][run]["refine"]["enabled"] and not a.run:
            continue  # all runs: only those with refine enabled; a named run always
        with stage_lock(cfg, "refine", run=run):
            path = refine(cfg, run, progress=not a.quiet, stop_after=a.stop_after)
        print(path if path else f"{run}: stopped at cycle {a.stop_after}; run again to resume")


def _report(cfg: dict, a: argparse.Namespace) -> None:
    from .stages.report import report

    runs = _names(cfg, a, "runs", "run")
    with contextlib.ExitStack() as locks:
        if not a.summary_only:
            for run in runs:
                locks.enter_context(stage_lock(cfg, "report", run=run))
        if not a.no_summary:
            locks.enter_context(stage_lock(cfg, "summary", out=a.out))
        for path in report(cfg, runs=a.run, out_dir=a.out, figures=not a.summary_only,
                           summary=not a.no_summary):
            print(path)


def _export(cfg: dict, a: argparse.Namespace) -> None:
    from .stages.export import export

    runs = _names(cfg, a, "runs", "run")
    if len(runs) != 1:
        raise ConfigError(f"export: name one run with --run (the config has: {', '.join(runs)})")
    out = export(cfg, runs[0], a.format, a.output, resample=a.resample, source=a.source,
                 seed=a.seed)
    print(out["output"])
    print(out["weights"])
    print(f"{out['n_frames']} frames, {out['n_distinct']} distinct configurations")


def _status(cfg: dict, a: argparse.Namespace) -> None:
    from .stages.status import format_table, status

    print(format_table(status(cfg)))


STAGES: dict[str, tuple[Callable, str]] = {
    "preprocess": (_preprocess, "raw input or generator -> validated results/{system}/data.h5"),
    "train": (_train, "train the run's flow (resumes from checkpoints)"),
    "sample": (_sample, "sample with exact log q into shards, then gather"),
    "reweight": (_reweight, "importance weights, ESS, observables with error bars"),
    "refine": (_refine, "flow-assisted MCMC or resample-move on the target (runs.<run>.refine)"),
    "report": (_report, "figures, tables and summary.csv"),
    "export": (_export, "samples (raw or resampled by weight) or reference data as "
                        "DCD/XTC/PDB, extxyz or npy, with weights and log q beside (CSV)"),
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="flowsci", description=__doc__)
    sub = p.add_subparsers(dest="stage", required=True)
    for name, (_, help_) in STAGES.items():
        s = sub.add_parser(name, help=help_, description=help_)
        s.add_argument("--config", "-c", default="config/config.yaml", help="YAML config file")
        s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config key, e.g. runs.egnn_mle.training.steps=10")
        s.add_argument("--quiet", "-q", action="store_true",
                       help="no progress bars (progress is logged as lines instead)")
        s.add_argument("--progress-interval", type=float, default=None, metavar="SECONDS",
                       help=f"seconds between progress lines when there is no bar (default "
                            f"${ENV_INTERVAL} or 30; a line also every 10%% of the work)")
        s.add_argument("--verbose", "-v", action="store_true")
        if name == "preprocess":
            s.add_argument("--system", action="append", help="system name (default: all)")
            s.add_argument("--out", help="output path (default results/{system}/data.h5)")
            s.add_argument("--force", action="store_true",
                           help="overwrite an existing file holding a different dataset")
        elif name == "export":
            s.add_argument("--run", action="append", required=True, help="run name")
        else:
            s.add_argument("--run", action="append", help="run name (default: all runs)")
        if name in ("train", "sample"):
            s.add_argument("--device", choices=["auto", "cpu", "cuda"], default=None)
        if name == "train":
            s.add_argument("--stop-after", type=_positive_int, default=None,
                           help="stop after this global step (continue later from checkpoint)")
        if name == "refine":
            s.add_argument("--stop-after", type=int, default=None,
                           help="stop at this cycle (continue later from the checkpoint)")
        if name == "sample":
            s.add_argument("--shard", type=int, default=None, help="only this shard")
            s.add_argument("--gather", action="store_true", help="only gather existing shards")
        if name == "export":
            from .stages.export import SOURCES, WRITERS
            s.add_argument("--format", "-f", required=True, choices=list(WRITERS))
            s.add_argument("--output", "-o", required=True, help="file to write")
            how = s.add_mutually_exclusive_group()
            how.add_argument("--resample", type=int, default=None, metavar="N",
                             help="N frames drawn by systematic resampling of the weights")
            how.add_argument("--raw", action="store_true",
                             help="every stored configuration, weights beside (default)")
            s.add_argument("--source", choices=list(SOURCES), default="samples")
            s.add_argument("--seed", type=int, default=0, help="resampling seed")
        if name == "report":
            s.add_argument("--out", help="directory for summary.csv (default results_dir)")
            which = s.add_mutually_exclusive_group()
            which.add_argument("--no-summary", action="store_true", help="only per-run outputs")
            which.add_argument("--summary-only", action="store_true", help="only summary.csv")
    help_ = "table of every system and run: stage reached, last progress line, ETA"
    s = sub.add_parser("status", help=help_, description=help_)
    s.add_argument("--config", "-c", default="config/config.yaml", help="YAML config file")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key (e.g. results_dir=other)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if getattr(args, "verbose", False) else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    try:
        if getattr(args, "progress_interval", None) is not None:
            if not args.progress_interval >= 0:
                raise ConfigError(f"--progress-interval {args.progress_interval}: must be >= 0")
            os.environ[ENV_INTERVAL] = str(args.progress_interval)
        try:
            interval_from_env()
        except ValueError as e:
            raise ConfigError(str(e)) from None
        cfg = load_config(args.config, args.set)
        run = _status if args.stage == "status" else STAGES[args.stage][0]
        run(cfg, args)
    except FlowsciError as e:  # one line, whatever the wrapped library's message looked like
        print(f"flowsci {args.stage}: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    except (MemoryError, RuntimeError) as e:
        if not isinstance(e, MemoryError) and not _is_allocation_failure(e):
            raise
        print(f"flowsci {args.stage}: error: out of memory ({' '.join(str(e).split())[:160]}); "
              "lower the sizes of this stage in the config (training.batch_size, "
              "sampling.batch_size, reweighting.n_bins, n_samples, val_samples)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # outputs are atomic and work is checkpointed: say so, briefly
        print(f"flowsci {args.stage}: interrupted; finished outputs and checkpoints are kept, "
              "rerun the same command to resume", file=sys.stderr)
        return 130
    except OSError as e:  # the file system refused: name the file, not a traceback
        where = f"{e.filename}: " if e.filename else ""
        print(f"flowsci {args.stage}: error: {where}{e.strerror or e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
