"""Checkpoints with everything needed for an exact resume (loaded with weights_only=True).

A checkpoint holds the plain (never DDP-wrapped) module state, optimizer, scheduler, EMA, the
shared data RNG and the global torch RNG, the step, the fingerprint and the failure guard's
state (`guard`: learning-rate factor and rollbacks so far) and, with early stopping, its state. Non-finite weights are never
written (`save_checkpoint` raises) and never resumed (`load_checkpoint` refuses the file).
`capture_state` / `restore_state` are the same state in memory (the guard's rollback copy).
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import torch

from ..errors import DataError
from ..io import atomic_output
from ..model_file import load_plain
from .guard import NonFiniteError

_NAME = re.compile(r"ckpt-(\d+)\.pt$")


def capture_state(step: int, elapsed: float, model, opt, sched, ema, gen: torch.Generator,
                  fingerprint: str = "", guard: dict | None = None, copy_: bool = False,
                  early_stopping: dict | None = None) -> dict:
    """The checkpoint dict (tensors shared with the live objects unless copy_=True);
    early_stopping: training/early_stopping.py's state, when the run uses it."""
    state = {
        "step": step, "elapsed": elapsed, "fingerprint": fingerprint,
        "model": model.state_dict(), "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(), "ema": ema.state_dict(),
        "rng_data": gen.get_state(), "rng_torch": torch.get_rng_state(),
        "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "guard": dict(guard or {}),
    }
    if early_stopping is not None:
        state["early_stopping"] = early_stopping
    return copy.deepcopy(state) if copy_ else state


def first_non_finite(state: dict) -> str | None:
    """'model.<key>' or 'ema.<key>' of the first tensor with a NaN/inf entry, else None."""
    for part in ("model", "ema"):
        for k, v in state.get(part, {}).items():
            if torch.is_tensor(v) and v.is_floating_point() and not bool(torch.isfinite(v).all()):
                return f"{part}.{k}"
    return None


def save_checkpoint(ckpt_dir: Path, step: int, elapsed: float, model, opt, sched, ema,
                    gen: torch.Generator, fingerprint: str = "", keep: int = 2,
                    guard: dict | None = None) -> Path:
    """Write ckpt_dir/ckpt-{step}.pt atomically, keeping the newest `keep`. NonFiniteError
    (nothing written) when the weights or their EMA hold NaN or inf."""
    return write_state(ckpt_dir, capture_state(step, elapsed, model, opt, sched, ema, gen,
                                               fingerprint, guard), keep)


def write_state(ckpt_dir: Path, state: dict, keep: int = 2) -> Path:
    """Write a `capture_state` dict as ckpt-{step}.pt (refusing non-finite weights)."""
    path = Path(ckpt_dir) / f"ckpt-{state['step']}.pt"
    if (bad := first_non_finite(state)) is not None:
        raise NonFiniteError(f"{path}: refusing to write a checkpoint with non-finite values "
                             f"in {bad} at step {state['step']}")
    with atomic_output(path) as tmp:
        torch.save(state, tmp)
    for old in sorted(Path(ckpt_dir).glob("ckpt-*.pt"), key=_step_of)[:-keep]:
        old.unlink()
    return path


def _step_of(p: Path) -> int:
    m = _NAME.search(p.name)
    return int(m.group(1)) if m else -1


def latest_checkpoint(ckpt_dir: Path, max_step: int | None = None) -> Path | None:
    """The newest ckpt-{step}.pt (with step <= max_step if given), else None. DataError when
    only checkpoints past max_step exist: resuming one would save a model trained for more
    steps than training.steps, which is never accepted as done and so rewritten every call."""
    found = sorted((p for p in Path(ckpt_dir).glob("ckpt-*.pt") if _NAME.search(p.name)),
                   key=_step_of)
    if max_step is None or not found:
        return found[-1] if found else None
    usable = [p for p in found if _step_of(p) <= max_step]
    if not usable:
        raise DataError(f"{found[0]}: checkpoint at step {_step_of(found[0])} is past "
                        f"training.steps = {max_step}; raise training.steps or delete "
                        f"{Path(ckpt_dir)} to retrain")
    return usable[-1]


# What a checkpoint must hold, and the type of each entry.
CHECKPOINT_KEYS = {"step": int, "elapsed": (int, float), "model": dict, "optimizer": dict,
                   "scheduler": dict, "ema": dict, "rng_data": torch.Tensor,
                   "rng_torch": torch.Tensor}


def check_structure(path: Path, state) -> None:
    """DataError naming the file unless `state` is a checkpoint dict (CHECKPOINT_KEYS) whose
    weights are tensors and whose RNG states are byte tensors."""
    if not isinstance(state, dict):
        raise DataError(f"{path}: not a checkpoint (a {type(state).__name__}, expected a "
                        "mapping); delete it to restart")
    missing = sorted(set(CHECKPOINT_KEYS) - set(state))
    if missing:
        raise DataError(f"{path}: checkpoint lacks {missing}; delete it to restart")
    for key, types in CHECKPOINT_KEYS.items():
        if not isinstance(state[key], types) or isinstance(state[key], bool):
            raise DataError(f"{path}: checkpoint entry {key!r} is a {type(state[key]).__name__}; "
                            "delete it to restart")
    for part in ("model", "ema"):
        if not all(isinstance(k, str) and torch.is_tensor(v) for k, v in state[part].items()):
            raise DataError(f"{path}: checkpoint {part!r} holds non-tensor weights; delete it "
                            "to restart")
    for key in ("rng_data", "rng_torch"):
        if state[key].dtype != torch.uint8 or state[key].ndim != 1:
            raise DataError(f"{path}: checkpoint {key!r} is not a random-generator state; "
                            "delete it to restart")


def restore_state(state: dict, model, opt, sched, ema, gen: torch.Generator) -> None:
    """Load a `capture_state` dict into the live objects (tensors are copied in place)."""
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    ema.load_state_dict(state["ema"])
    gen.set_state(state["rng_data"])
    torch.set_rng_state(state["rng_torch"])
    if state["rng_cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng_cuda"])


def load_checkpoint(path: Path, model, opt, sched, ema, gen: torch.Generator,
                    fingerprint: str = "") -> dict:
    """Resume from `path`; DataError naming the file if it is unreadable, was written for
    another fingerprint, or holds non-finite weights. Returns the checkpoint dict."""
    try:
        state = load_plain(path, "checkpoint")
    except DataError as e:
        raise DataError(f"{e}; delete it to restart") from None
    check_structure(path, state)
    if state.get("fingerprint", "") != fingerprint:
        raise DataError(f"{path}: checkpoint was written for other data or training settings; "
                        f"delete {Path(path).parent} to train from scratch")
    if (bad := first_non_finite(state)) is not None:
        raise DataError(f"{path}: checkpoint holds non-finite weights ({bad}); delete it to "
                        f"resume from an earlier checkpoint, or delete {Path(path).parent} "
                        "and lower training.lr")
    try:
        restore_state(state, model, opt, sched, ema, gen)
    except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as e:
        first = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
        why = (first[1] if len(first) > 1 and first[0].startswith("Error(s)") else
               (first or [type(e).__name__])[0])[:200]
        raise DataError(f"{path}: checkpoint does not fit the configured model and optimizer "
                        f"({why}); delete it to restart") from None
    return state
