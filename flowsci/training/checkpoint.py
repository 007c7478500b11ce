"""Checkpoints with everything needed for an exact resume (loaded with weights_only=True)."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from ..io import atomic_output
from ..errors import DataError

_NAME = re.compile(r"ckpt-(\d+)\.pt$")


def save_checkpoint(ckpt_dir: Path, step: int, elapsed: float, model, opt, sched, ema,
                    gen: torch.Generator, fingerprint: str = "", keep: int = 2) -> Path:
    state = {
        "step": step, "elapsed": elapsed, "fingerprint": fingerprint,
        "model": model.state_dict(), "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(), "ema": ema.state_dict(),
        "rng_data": gen.get_state(), "rng_torch": torch.get_rng_state(),
        "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    path = Path(ckpt_dir) / f"ckpt-{step}.pt"
    with atomic_output(path) as tmp:
        torch.save(state, tmp)
    for old in sorted(Path(ckpt_dir).glob("ckpt-*.pt"), key=_step_of)[:-keep]:
        old.unlink()
    return path


def _step_of(p: Path) -> int:
    m = _NAME.search(p.name)
    return int(m.group(1)) if m else -1


def latest_checkpoint(ckpt_dir: Path) -> Path | None:
    found = sorted((p for p in Path(ckpt_dir).glob("ckpt-*.pt") if _NAME.search(p.name)),
                   key=_step_of)
    return found[-1] if found else None


def load_checkpoint(path: Path, model, opt, sched, ema, gen: torch.Generator,
                    fingerprint: str = "") -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means a corrupt file
        raise DataError(f"{path}: cannot read checkpoint ({e}); delete it to restart") from None
    if state.get("fingerprint", "") != fingerprint:
        raise DataError(f"{path}: checkpoint was written for other data or training settings; "
                        f"delete {Path(path).parent} to train from scratch")
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    ema.load_state_dict(state["ema"])
    gen.set_state(state["rng_data"])
    torch.set_rng_state(state["rng_torch"])
    if state["rng_cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng_cuda"])
    return state
