"""Training loop shared by all objectives: AdamW, LR schedule, EMA, clipping, validation NLL
with the exact trace, checkpoints with exact resume, progress (a bar on a terminal, log lines
with loss, last validation NLL and ETA otherwise) and a CSV log."""

from __future__ import annotations

import copy
import csv
import math
import time
from dataclasses import dataclass, fields
from pathlib import Path

import torch
from torch import nn

from ..flows.base import Flow
from ..io import DiskFullError, is_disk_full
from ..progress import Progress
from . import distributed
from .checkpoint import (capture_state, first_non_finite, latest_checkpoint, load_checkpoint,
                         restore_state, write_state)
from .early_stopping import EarlyStopping, validation_loss
from .ema import EMA
from .guard import GuardSettings, StepGuard

LOG_FIELDS = ["step", "loss", "nll", "nfe", "grad_norm", "lr", "seconds", "val_nll"]


@dataclass
class TrainSettings:
    """Mirror of config section runs.<run>.training (minus objective/solver)."""

    steps: int = 1000
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.0
    lr_schedule: str = "cosine"
    warmup_steps: int = 0
    grad_clip: float = 10.0
    ema_decay: float = 0.999
    val_every: int = 100
    val_samples: int = 256
    checkpoint_every: int = 100
    seed: int = 0
    early_stopping: dict | None = None  # training/early_stopping.py (None: off)

    @classmethod
    def from_config(cls, section: dict) -> "TrainSettings":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in section.items() if k in names})


def lr_lambda(settings: TrainSettings, scale=lambda: 1.0):
    """step -> learning-rate multiplier: warm-up, then constant or cosine, times scale() (the
    failure guard's factor, lowered by each rollback)."""

    def factor(step: int) -> float:
        if step < settings.warmup_steps:
            return (step + 1) / settings.warmup_steps * scale()
        if settings.lr_schedule == "constant":
            return scale()
        span = max(settings.steps - settings.warmup_steps, 1)
        progress = min((step - settings.warmup_steps) / span, 1.0)
        return (0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * progress))) * scale()

    return factor


@torch.no_grad()
def validation_nll(flow: Flow, x: torch.Tensor, batch_size: int = 512) -> float:
    """Mean -log q(x) with the exact divergence (the number reweighting relies on); NaN for
    an empty x."""
    if len(x) == 0:
        return float("nan")
    total = 0.0
    for start in range(0, len(x), batch_size):
        xb = x[start:start + batch_size]
        total += -flow.log_prob(xb).sum().item()
    return total / len(x)


class _Objective(nn.Module):
    """What DDP wraps: forward(x) = objective(flow, x), so that DDP sees the forward pass
    whose backward it synchronises, however often the flow calls its field inside."""

    def __init__(self, flow: nn.Module, objective):
        super().__init__()
        self.flow = flow
        self.objective = objective

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        return self.objective(self.flow, x)


def _wrap(flow: nn.Module, objective, device: torch.device) -> nn.Module:
    """The objective as a module; under torchrun wrapped in DistributedDataParallel (which
    broadcasts rank 0's parameters and averages the gradients in backward)."""
    module = _Objective(flow, objective)
    if not distributed.active():
        return module
    from torch.nn.parallel import DistributedDataParallel as DDP

    # find_unused_parameters: some fields have parameters that an objective never reaches
    # (e.g. flow matching evaluates the field without its divergence); they keep grad None.
    return DDP(module, device_ids=[device.index] if device.type == "cuda" else None,
               find_unused_parameters=True)


class _Quiet:
    """Progress stand-in for ranks other than 0 (they write nothing)."""

    def __enter__(self) -> "_Quiet":
        return self

    def __exit__(self, *_) -> None:
        return None

    def update(self, n: int = 1, **figures) -> None:
        return None


def train_flow(flow: nn.Module, objective, train_x: torch.Tensor, settings: TrainSettings,
               val_x: torch.Tensor | None = None, out_dir: str | Path | None = None,
               progress: bool = True, stop_after: int | None = None,
               fingerprint: str = "", desc: str = "train",
               guard: GuardSettings | None = None) -> dict:
    """Train `flow` in place; resume from out_dir/checkpoints if a checkpoint exists.

    train_x, val_x: [N, *event] on the flow's device. Writes out_dir/train_log.csv and
    out_dir/checkpoints/ckpt-{step}.pt. stop_after: end early after that global step (used to
    run long trainings in chunks, and by the resume test). fingerprint: identifies the data
    and settings; a checkpoint written with another fingerprint is refused, not resumed.
    progress: a bar on a terminal; log lines (flowsci.progress) are written either way when
    there is no bar. desc: names the loop in those. guard: limits of the failure handling
    (guard.py). Under torchrun (distributed.session) every rank trains on its slice of each
    global batch through DDP; only rank 0 writes files and progress. Returns the final state
    summary (step, elapsed, EMA weights, finished, skipped_steps, rollbacks, warnings).
    """
    where = distributed.info()
    rows = distributed.rank_slice(settings.batch_size, where)
    params = [p for p in flow.parameters() if p.requires_grad]
    device = params[0].device if params else train_x.device
    guard_ = StepGuard(guard or GuardSettings(), desc, settings.steps, main=where.is_main)
    opt = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(settings, lambda: guard_.lr_scale))
    ema = EMA(flow, settings.ema_decay)
    gen = torch.Generator().manual_seed(settings.seed)
    torch.manual_seed(settings.seed)
    stopper = EarlyStopping.from_config(settings.early_stopping)

    def stop_requested() -> bool:
        return stopper is not None and stopper.should_stop

    step, elapsed = 0, 0.0
    out_dir = Path(out_dir) if out_dir is not None else None
    ckpt_dir = out_dir / "checkpoints" if out_dir is not None else None
    if ckpt_dir is not None and (ckpt := latest_checkpoint(ckpt_dir, settings.steps)) is not None:
        state = load_checkpoint(ckpt, flow, opt, sched, ema, gen, fingerprint)
        step, elapsed = state["step"], state["elapsed"]
        guard_.load(state.get("guard"))
        if stopper is not None:
            stopper.load(state.get("early_stopping"))
    model = _wrap(flow, objective, device)
    distributed.barrier()  # every rank has read the checkpoint before rank 0 writes one

    def snapshot() -> dict:
        return capture_state(step, elapsed, flow, opt, sched, ema, gen, fingerprint,
                             guard_.state(), copy_=True,
                             early_stopping=stopper.state() if stopper else None)

    good = snapshot()  # the state a rollback returns to (the last checkpoint)
    main_dir = out_dir if where.is_main else None
    extra = list(getattr(objective, "log_stats", ()))  # the objective's own columns
    if stopper is not None and stopper.metric == "val_loss":
        extra.append("val_loss")
    log = _Log(main_dir / "train_log.csv" if main_dir else None, resume_step=step,
               fields=LOG_FIELDS + extra)
    last = min(stop_after if stop_after is not None else settings.steps, settings.steps)
    figures = {"loss": float("nan"), "val_nll": log.last_val_nll}
    bar = (Progress(settings.steps, desc, initial=step, unit="step", bar=progress,
                    mininterval=2.0, figures=figures) if where.is_main else _Quiet())
    with bar:
        while step < last and not stop_requested():
            t0 = time.perf_counter()
            idx = torch.randint(0, len(train_x), (settings.batch_size,), generator=gen)
            batch = train_x[idx[rows].to(train_x.device)]
            loss, stats = model(batch)
            nll = stats.get("nll", float("nan"))
            loss_g, nll_g = distributed.mean_across(torch.tensor(
                [loss.item(), nll], dtype=torch.float64, device=device)).tolist()
            grad_norm = float("nan")
            opt.zero_grad(set_to_none=True)
            if math.isfinite(loss_g):  # the same decision on every rank: all or none call backward
                loss.backward()
                grad_norm = float(torch.nn.utils.clip_grad_norm_(params, settings.grad_clip))
                grad_norm = distributed.mean_across(torch.tensor(
                    [grad_norm], dtype=torch.float64, device=device)).item()
            verdict = guard_.verdict(step + 1, loss_g, grad_norm)
            elapsed += time.perf_counter() - t0
            if verdict != "ok":
                opt.zero_grad(set_to_none=True)
                if verdict == "rollback":
                    step = _rollback(guard_, good, step + 1, flow, opt, sched, ema, gen, log,
                                     ckpt_dir if where.is_main else None, keep_elapsed=elapsed,
                                     stopper=stopper)
                continue
            opt.step()
            sched.step()
            ema.update(flow)
            step += 1
            row = {"step": step, "loss": loss_g, "nll": nll_g, "nfe": stats.get("nfe", 0),
                   "grad_norm": grad_norm, "lr": sched.get_last_lr()[0],
                   "seconds": time.perf_counter() - t0, "val_nll": "",
                   **{k: stats.get(k, "") for k in extra}}
            if (val_x is not None and len(val_x)
                    and (step % settings.val_every == 0 or step == settings.steps)):
                _validate(row, flow, objective, ema, val_x[:settings.val_samples], stopper,
                          step, where.is_main)
            log.write(row)
            figures = {"loss": row["loss"], "nfe": row["nfe"]}
            if row["val_nll"] != "":
                figures["val_nll"] = row["val_nll"]
            bar.update(1, **figures)
            if step % settings.checkpoint_every == 0 or step == last or stop_requested():
                candidate = snapshot()
                if (bad := first_non_finite(candidate)) is not None:  # same on every rank
                    guard_.start_rollback(step, f"non-finite weights ({bad})")
                    step = _rollback(guard_, good, step, flow, opt, sched, ema, gen, log,
                                     ckpt_dir if where.is_main else None, keep_elapsed=elapsed,
                                     started=True, stopper=stopper)
                    continue
                good = candidate
                if ckpt_dir is not None and where.is_main:
                    write_state(ckpt_dir, good)
    log.close()
    distributed.barrier()  # no rank leaves while rank 0 still writes
    stopped = stop_requested()
    weights = ema.weights()
    if stopper is not None and stopper.best_weights and (stopped or step >= settings.steps):
        weights = {k: v.to(weights[k].device) for k, v in stopper.best_weights.items()}
    return {"step": step, "elapsed": elapsed, "ema": weights,
            "finished": step >= settings.steps or stopped, "stopped_early": stopped,
            "best_step": stopper.best_step if stopper is not None else step,
            "skipped_steps": guard_.skipped,
            "rollbacks": guard_.rollbacks, "lr_scale": guard_.lr_scale,
            "warnings": list(guard_.warnings)}


def _validate(row: dict, flow, objective, ema: EMA, val_x: torch.Tensor,
              stopper: EarlyStopping | None, step: int, is_main: bool) -> None:
    """The validation of the EMA weights at `step` into the log row, and early stopping's
    verdict. The NLL is rank 0's (as before); the stopping metric is computed on every rank
    (same weights, same validation data, same seed), so all ranks stop at the same step."""
    with ema.applied(flow):
        if is_main or (stopper is not None and stopper.metric == "val_nll"):
            row["val_nll"] = validation_nll(flow, val_x)
        if stopper is None:
            return
        if stopper.metric == "val_loss":
            row["val_loss"] = validation_loss(objective, flow, val_x)
        stopper.observe(step, row[stopper.metric], ema.weights())


def _rollback(guard: StepGuard, good: dict, step: int, flow, opt, sched, ema, gen, log: "_Log",
              ckpt_dir: Path | None, keep_elapsed: float, started: bool = False,
              stopper: EarlyStopping | None = None) -> int:
    """Return to the state `good` with a lowered learning rate (TrainingDivergedError when
    the rollback budget is spent); step: the failing step (for messages). Rewrites the log
    and, with ckpt_dir, the checkpoint (so that a resume keeps the new learning-rate factor);
    early stopping forgets the validations of the rolled-back steps. Returns the step rolled
    back to."""
    if not started:
        guard.start_rollback(step)
    # a copy: Optimizer.load_state_dict keeps the given tensors, which Adam updates in place
    restore_state(copy.deepcopy(good), flow, opt, sched, ema, gen)
    if stopper is not None:
        stopper.load(copy.deepcopy(good.get("early_stopping")) or stopper.initial_state())
    guard.rolled_back(step, good["step"], opt, sched)
    good["guard"] = guard.state()
    good["optimizer"] = copy.deepcopy(opt.state_dict())
    good["scheduler"] = copy.deepcopy(sched.state_dict())
    log.rewind(good["step"])
    if ckpt_dir is not None and good["step"] > 0:
        write_state(ckpt_dir, {**good, "elapsed": keep_elapsed})
    return good["step"]


class _Log:
    """Append-only CSV log; on resume, rows after the checkpointed step are dropped."""

    def __init__(self, path: Path | None, resume_step: int, fields: list[str] = LOG_FIELDS):
        self.fields = fields
        self._open(path, resume_step)

    def rewind(self, step: int) -> None:
        """Drop the rows after `step` (after a rollback)."""
        self.close()
        self._open(self.path, step)

    def _open(self, path: Path | None, resume_step: int) -> None:
        self.path = path
        self.file = None
        self.last_val_nll = float("nan")  # of the kept rows (shown in progress on resume)
        if path is None:
            return
        rows = []
        if resume_step > 0 and path.exists():
            with open(path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= resume_step]
        vals = [r["val_nll"] for r in rows if r.get("val_nll") not in ("", None)]
        if vals:
            self.last_val_nll = float(vals[-1])
        path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(path, "w", newline="")
        self.writer = csv.DictWriter(self.file, fieldnames=self.fields, extrasaction="ignore")
        self.writer.writeheader()
        self.writer.writerows(rows)
        self.file.flush()

    def write(self, row: dict) -> None:
        if self.file is not None:
            try:
                self.writer.writerow(row)
                self.file.flush()
            except OSError as e:
                raise (DiskFullError(self.path, e) if is_disk_full(e) else e) from None

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
