"""What the training loop does when a step goes wrong (see docs/training.md, "When training
fails").

Every step the loop hands the (rank-averaged) loss and gradient norm to `StepGuard.verdict`:
- finite: the step is taken ('ok');
- NaN/inf loss or gradient norm: the step is skipped ('skip': no optimizer step, no EMA
  update, no log row; logged and counted);
- `max_bad_steps` such steps in a row: 'rollback' — the loop restores the last good state (the
  last checkpoint, kept in memory) and `rolled_back` lowers the learning rate by `lr_factor`
  (logged; the factor is saved in later checkpoints so a resume keeps it);
- a rollback beyond `max_rollbacks`: `TrainingDivergedError` naming the run and step.
A gradient norm of exactly 0 for `dead_steps` steps in a row (or the whole run when it is
shorter) gives one warning: the network may be dead.
Under DDP the inputs are already averaged over the ranks, so every rank decides alike.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from ..errors import FlowsciError

log = logging.getLogger(__name__)


class NonFiniteError(FlowsciError, FloatingPointError):
    """Non-finite weights where finite ones are required (e.g. a checkpoint being written)."""


class TrainingDivergedError(NonFiniteError):
    """Training kept producing non-finite losses or gradients after every rollback."""


@dataclass(frozen=True)
class GuardSettings:
    """Limits of the failure guard (not in the config: these defaults serve every run)."""

    max_bad_steps: int = 5  # consecutive non-finite steps before a rollback
    max_rollbacks: int = 3  # rollbacks before giving up
    lr_factor: float = 0.5  # learning-rate multiplier per rollback
    dead_steps: int = 20  # consecutive zero gradient norms before the dead-network warning


class StepGuard:
    """Per-step decisions and the counters behind them. desc names the run in messages;
    total_steps: the run's configured steps; main: this rank writes the log messages."""

    def __init__(self, settings: GuardSettings, desc: str, total_steps: int, main: bool = True):
        self.settings = settings
        self.desc = desc
        self.main = main
        self.dead_after = max(1, min(settings.dead_steps, total_steps))
        self.lr_scale = 1.0
        self.rollbacks = 0
        self.skipped = 0
        self.bad_streak = 0
        self.zero_streak = 0
        self.warnings: list[str] = []

    def state(self) -> dict:
        """What a checkpoint keeps: the learning-rate factor and the rollbacks so far."""
        return {"lr_scale": float(self.lr_scale), "rollbacks": int(self.rollbacks)}

    def load(self, state: dict | None) -> None:
        state = state or {}
        self.lr_scale = float(state.get("lr_scale", 1.0))
        self.rollbacks = int(state.get("rollbacks", 0))

    def _warn(self, msg: str) -> None:
        if self.main:
            log.warning(msg)

    def verdict(self, step: int, loss: float, grad_norm: float) -> str:
        """'ok', 'skip' or 'rollback' for the attempt at global step `step` (1-based)."""
        if math.isfinite(loss) and math.isfinite(grad_norm):
            self.bad_streak = 0
            self.zero_streak = self.zero_streak + 1 if grad_norm == 0.0 else 0
            if self.zero_streak == self.dead_after:
                msg = (f"{self.desc}: gradient norm has been 0 for {self.zero_streak} steps "
                       f"(step {step}): the network may be dead; lower training.lr")
                self.warnings.append(msg)
                self._warn(msg)
            return "ok"
        self.skipped += 1
        self.bad_streak += 1
        what = "loss" if not math.isfinite(loss) else "gradient norm"
        self._warn(f"{self.desc}: step {step} skipped: non-finite {what} (loss {loss:.4g}, "
                   f"gradient norm {grad_norm:.4g}); no update")
        return "rollback" if self.bad_streak >= self.settings.max_bad_steps else "skip"

    def start_rollback(self, step: int, cause: str = "") -> None:
        """Count a rollback and lower the learning-rate factor; TrainingDivergedError when
        the budget is spent. cause: why (default: the run of non-finite steps)."""
        cause = cause or f"{self.bad_streak} consecutive steps with a non-finite loss or " \
                         "gradient norm"
        if self.rollbacks >= self.settings.max_rollbacks:
            raise TrainingDivergedError(
                f"{self.desc}: training diverged at step {step}: {cause} after "
                f"{self.rollbacks} rollbacks (learning rate x{self.lr_scale:g}); lower "
                "training.lr (the last checkpoint on disk is finite)")
        self.rollbacks += 1
        self.lr_scale *= self.settings.lr_factor
        self.bad_streak = 0
        self.zero_streak = 0
        self._cause = cause

    def rolled_back(self, step: int, to_step: int, opt, sched) -> None:
        """After the loop restored the state of `to_step`: set the lowered learning rate."""
        factor = sched.lr_lambdas[0](sched.last_epoch)
        for group, base in zip(opt.param_groups, sched.base_lrs):
            group["lr"] = base * factor
        sched._last_lr = [g["lr"] for g in opt.param_groups]
        self._warn(f"{self.desc}: {self._cause} at step {step}; rolled back to step {to_step} "
                   f"with the learning rate x{self.lr_scale:g} (lr now "
                   f"{opt.param_groups[0]['lr']:.3g}); rollback {self.rollbacks} of "
                   f"{self.settings.max_rollbacks}")
