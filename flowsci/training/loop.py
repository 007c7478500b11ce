"""Training loop shared by all objectives: AdamW, LR schedule, EMA, clipping, validation NLL
with the exact trace, checkpoints with exact resume, progress (a bar on a terminal, log lines
with loss, last validation NLL and ETA otherwise) and a CSV log."""

from __future__ import annotations

import csv
import math
import time
from dataclasses import dataclass, fields
from pathlib import Path

import torch
from torch import nn

from ..flows.base import Flow
from ..progress import Progress
from .checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from .ema import EMA

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

    @classmethod
    def from_config(cls, section: dict) -> "TrainSettings":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in section.items() if k in names})


def lr_lambda(settings: TrainSettings):
    def factor(step: int) -> float:
        if step < settings.warmup_steps:
            return (step + 1) / settings.warmup_steps
        if settings.lr_schedule == "constant":
            return 1.0
        span = max(settings.steps - settings.warmup_steps, 1)
        progress = min((step - settings.warmup_steps) / span, 1.0)
        return 0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * progress))

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


def train_flow(flow: nn.Module, objective, train_x: torch.Tensor, settings: TrainSettings,
               val_x: torch.Tensor | None = None, out_dir: str | Path | None = None,
               progress: bool = True, stop_after: int | None = None,
               fingerprint: str = "", desc: str = "train") -> dict:
    """Train `flow` in place; resume from out_dir/checkpoints if a checkpoint exists.

    train_x, val_x: [N, *event] on the flow's device. Writes out_dir/train_log.csv and
    out_dir/checkpoints/ckpt-{step}.pt. stop_after: end early after that global step (used to
    run long trainings in chunks, and by the resume test). fingerprint: identifies the data
    and settings; a checkpoint written with another fingerprint is refused, not resumed.
    progress: a bar on a terminal; log lines (flowsci.progress) are written either way when
    there is no bar. desc: names the loop in those. Returns the final state summary.
    """
    params = [p for p in flow.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(settings))
    ema = EMA(flow, settings.ema_decay)
    gen = torch.Generator().manual_seed(settings.seed)
    torch.manual_seed(settings.seed)
    step, elapsed = 0, 0.0
    out_dir = Path(out_dir) if out_dir is not None else None
    ckpt_dir = out_dir / "checkpoints" if out_dir is not None else None
    if ckpt_dir is not None and (ckpt := latest_checkpoint(ckpt_dir)) is not None:
        state = load_checkpoint(ckpt, flow, opt, sched, ema, gen, fingerprint)
        step, elapsed = state["step"], state["elapsed"]
    log = _Log(out_dir / "train_log.csv" if out_dir else None, resume_step=step)
    last = stop_after if stop_after is not None else settings.steps
    last = min(last, settings.steps)
    figures = {"loss": float("nan"), "val_nll": log.last_val_nll}
    with Progress(settings.steps, desc, initial=step, unit="step", bar=progress,
                  mininterval=2.0, figures=figures) as bar:
        while step < last:
            t0 = time.perf_counter()
            idx = torch.randint(0, len(train_x), (settings.batch_size,), generator=gen)
            batch = train_x[idx.to(train_x.device)]
            loss, stats = objective(flow, batch)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite training loss at step {step + 1}: {stats}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, settings.grad_clip))
            opt.step()
            sched.step()
            ema.update(flow)
            step += 1
            dt = time.perf_counter() - t0
            elapsed += dt
            row = {"step": step, "loss": loss.item(), "nll": stats.get("nll", float("nan")),
                   "nfe": stats.get("nfe", 0), "grad_norm": grad_norm, "lr": sched.get_last_lr()[0],
                   "seconds": dt, "val_nll": ""}
            if val_x is not None and len(val_x) and (step % settings.val_every == 0
                                                     or step == settings.steps):
                with ema.applied(flow):
                    row["val_nll"] = validation_nll(flow, val_x[:settings.val_samples])
            log.write(row)
            figures = {"loss": row["loss"], "nfe": row["nfe"]}
            if row["val_nll"] != "":
                figures["val_nll"] = row["val_nll"]
            bar.update(1, **figures)
            if ckpt_dir is not None and (step % settings.checkpoint_every == 0 or step == last):
                save_checkpoint(ckpt_dir, step, elapsed, flow, opt, sched, ema, gen, fingerprint)
    log.close()
    return {"step": step, "elapsed": elapsed, "ema": ema.weights(),
            "finished": step >= settings.steps}


class _Log:
    """Append-only CSV log; on resume, rows after the checkpointed step are dropped."""

    def __init__(self, path: Path | None, resume_step: int):
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
        self.writer = csv.DictWriter(self.file, fieldnames=LOG_FIELDS, extrasaction="ignore")
        self.writer.writeheader()
        self.writer.writerows(rows)
        self.file.flush()

    def write(self, row: dict) -> None:
        if self.file is not None:
            self.writer.writerow(row)
            self.file.flush()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
