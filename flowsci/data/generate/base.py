"""Generator contract: a seeded, documented sampler of a target's Boltzmann distribution.

Factories registered in GENERATORS take (target, **params) and return run(progress) ->
GeneratedData. A factory with a `checkpoint` parameter gets a path next to the output from the
preprocess stage and resumes from it after a crash (see Checkpoint, run_chains).
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from ...autocorr import integrated_autocorr_time
from ...registry import Registry


@dataclass
class GeneratedData:
    """What a generator returns; stage code writes it per the HDF5 schema.

    arrays: 'positions' [N, n, d] + 'atomic_numbers' [n] (particles) or 'fields' [N, *shape]
    + 'actions' [N] (lattice); 'energies' [N] reduced energies where defined.
    info: sampler settings and diagnostics (acceptance, autocorrelation), stored as attrs.
    units: the length unit of positions ('reduced', 'nm', 'angstrom'); energies are always kT.
    """

    arrays: dict[str, np.ndarray]
    info: dict[str, Any] = field(default_factory=dict)
    units: str = "reduced"


GENERATORS: Registry = Registry("data generator")


def trajectory_data(target, frames: list[np.ndarray], energies: list[float], info: dict,
                    units: str) -> GeneratedData:
    """GeneratedData of an MD trajectory: frames [n, 3] each, energies in the target's energy
    unit (converted to kT here), with the energy's integrated autocorrelation time in info."""
    u = np.asarray(energies) / target.kT
    return GeneratedData(
        arrays={"positions": np.stack(frames), "energies": u,
                "atomic_numbers": np.asarray(target.atomic_numbers, dtype=np.int64)},
        info={**info, "temperature_K": target.temperature,
              "energy_autocorr_time_thinned": integrated_autocorr_time(u)},
        units=units)


class Checkpoint:
    """Periodic chain-state checkpoint next to a generator's output, reused when rerun.

    path: file to write (None disables checkpointing); key: JSON-able settings that must match
    for a saved state to be resumed (generator name, params, target attrs); every: steps.
    Saved atomically (temporary file + rename); `clear()` after the output is written.
    """

    def __init__(self, path: str | os.PathLike | None, key: dict[str, Any], every: int = 1000):
        self.path = Path(path) if path else None
        self.key = json.dumps(key, sort_keys=True, default=str)
        self.every = max(int(every), 1)

    def load(self) -> dict[str, Any] | None:
        """The saved state if it exists and was written with the same key, else None."""
        if self.path is None or not self.path.exists():
            return None
        try:
            state = torch.load(self.path, weights_only=False)
        except Exception as e:  # corrupt or foreign file: start over
            warnings.warn(f"{self.path}: unreadable generator checkpoint ignored ({e})")
            return None
        if state.get("key") != self.key:
            warnings.warn(f"{self.path}: checkpoint from different settings ignored")
            return None
        return state

    def due(self, step: int) -> bool:
        return self.path is not None and step % self.every == 0

    def save(self, state: dict[str, Any]) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        torch.save({**state, "key": self.key}, tmp)
        os.replace(tmp, self.path)

    def clear(self) -> None:
        if self.path is not None and self.path.exists():
            self.path.unlink()


def run_chains(step: Callable[[dict], tuple[dict, torch.Tensor]], state: dict[str, torch.Tensor],
               record: Callable[[dict], dict[str, torch.Tensor]], *, n_keep: int, burn_in: int,
               thin: int, gen: torch.Generator, ckpt: Checkpoint, desc: str,
               progress: bool) -> tuple[dict[str, torch.Tensor], float]:
    """Run parallel Markov chains; keep every `thin`-th state after `burn_in` steps.

    step(state) -> (state, accepted [C] bool); record(state) -> {name: [C, ...]} to keep.
    Returns ({name: [n_keep_per_chain, C, ...]} (time first), post-burn-in acceptance rate).
    Resumes from `ckpt` (chain state, kept records, RNG state) when it holds a matching state.
    """
    total = burn_in + n_keep * thin
    start, kept, accepted = 0, {}, 0.0
    saved = ckpt.load()
    if saved is not None:
        start, kept, accepted, state = saved["step"], saved["kept"], saved["accepted"], saved["state"]
        gen.set_state(saved["rng"])
    bar = tqdm(total=total, initial=start, desc=desc, disable=not progress, mininterval=1.0)
    for i in range(start, total):
        state, acc = step(state)
        if i >= burn_in:
            accepted += acc.double().mean().item()
            if (i - burn_in + 1) % thin == 0:
                for k, v in record(state).items():
                    kept.setdefault(k, []).append(v.detach().clone())
        bar.update(1)
        if ckpt.due(i + 1) and i + 1 < total:
            ckpt.save({"step": i + 1, "kept": kept, "accepted": accepted, "state": state,
                       "rng": gen.get_state()})
    bar.close()
    return {k: torch.stack(v, 0) for k, v in kept.items()}, accepted / max(total - burn_in, 1)


def chain_major(a: torch.Tensor, n: int) -> np.ndarray:
    """[T, C, ...] (time first) -> [C * T, ...] ordered chain by chain, first n rows."""
    return a.transpose(0, 1).reshape(-1, *a.shape[2:])[:n].numpy()
