"""Generator contract: a seeded, documented sampler of a target's Boltzmann distribution.

Factories registered in GENERATORS take (target, **params) and return run(progress) ->
GeneratedData. A factory with a `checkpoint` parameter gets a path next to the output from the
preprocess stage and resumes from it after a crash (see Checkpoint, run_chains).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ...autocorr import integrated_autocorr_time
from ...progress import Progress
from ...registry import Registry
from . import adapt as adaptation
from .checkpoint import Checkpoint
from .diagnostics import check_chains, summary, trajectory_diagnostics

__all__ = ["GENERATORS", "ChainRun", "Checkpoint", "GeneratedData", "chain_data", "chain_major",
           "run_chains", "trajectory_data"]


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
    unit (converted to kT here). info gains the energy's integrated autocorrelation time (in
    frames), effective sample size and split R-hat (diagnostics.trajectory_diagnostics)."""
    u = np.asarray(energies) / target.kT
    return GeneratedData(
        arrays={"positions": np.stack(frames), "energies": u,
                "atomic_numbers": np.asarray(target.atomic_numbers, dtype=np.int64)},
        info={**info, "temperature_K": target.temperature,
              "energy_autocorr_time_thinned": integrated_autocorr_time(u),
              **trajectory_diagnostics(u)},
        units=units)


@dataclass
class ChainRun:
    """Result of run_chains. kept: {name: [T, C, ...]} (time first); acceptance: [C]
    post-burn-in acceptance rates; step_size: [C] frozen (adapted) step sizes; n_steps: steps
    per chain after burn-in."""

    kept: dict[str, torch.Tensor]
    acceptance: np.ndarray
    step_size: np.ndarray
    n_steps: int

    @property
    def acceptance_rate(self) -> float:
        return float(self.acceptance.mean())


StepFn = Callable[[dict, torch.Tensor], tuple[dict, torch.Tensor, torch.Tensor]]


def run_chains(step: StepFn, state: dict[str, torch.Tensor],
               record: Callable[[dict], dict[str, torch.Tensor]], *, n_keep: int, burn_in: int,
               thin: int, gen: torch.Generator, ckpt: Checkpoint, desc: str, progress: bool,
               step_size: float, target_accept: float, adapt: bool = True) -> ChainRun:
    """Run C parallel Markov chains; keep every `thin`-th state after `burn_in` steps.

    step(state, h [C]) -> (state, accepted [C] bool, acceptance probability [C]); h are the
    per-chain step sizes, adapted by dual averaging (adapt.py) towards `target_accept` during
    the first 80 % of the burn-in when `adapt`, frozen after. record(state) -> {name: [C, ...]}.
    Resumes from `ckpt` (chain and adaptation state, kept records, counts, RNG state).
    """
    total = burn_in + n_keep * thin
    n_chains = len(next(iter(state.values())))
    n_adapt = adaptation.adapt_steps(burn_in, adapt)
    ad = adaptation.init_state(step_size, n_chains)
    start, kept = 0, {}
    accepted = torch.zeros(n_chains, dtype=torch.float64)
    saved = ckpt.load()
    if saved is not None:
        try:
            start, kept, accepted, state, ad = _restore(saved, state, ad, record(state), gen,
                                                        burn_in, thin, total)
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            ckpt.ignore(str(e))
            start, kept = 0, {}
    with Progress(total, desc, initial=start, unit="step", bar=progress) as bar:
        h = None
        for i in range(start, total):
            if h is None or i <= n_adapt:  # frozen after n_adapt steps
                h = adaptation.step_size(ad, i, n_adapt)
            state, acc, prob = step(state, h)
            if i < n_adapt:
                ad = adaptation.update(ad, i, prob, target_accept, step_size)
            if i >= burn_in:
                accepted += acc.to(torch.float64)
                if (i - burn_in + 1) % thin == 0:
                    for k, v in record(state).items():
                        kept.setdefault(k, []).append(v.detach().clone())
            if i >= burn_in:
                bar.update(1, phase="sampling",
                           acceptance=float(accepted.mean()) / (i - burn_in + 1))
            else:
                bar.update(1, phase="burn-in")
            if ckpt.due(i + 1) and i + 1 < total:
                ckpt.save({"step": i + 1, "kept": {k: torch.stack(v) for k, v in kept.items()},
                           "accepted": accepted, "state": state, "rng": gen.get_state(),
                           "adapt": ad})
    n_steps = total - burn_in
    return ChainRun({k: torch.stack(v, 0) for k, v in kept.items()},
                    (accepted / max(n_steps, 1)).numpy(),
                    adaptation.step_size(ad, total, n_adapt).numpy(), n_steps)


def _restore(saved: dict, state: dict, ad: dict, rec: dict, gen: torch.Generator,
             burn_in: int, thin: int, total: int) -> tuple:
    """A saved run checked against this one: (step, kept lists, accepted counts [C], state,
    adaptation state); restores the RNG. Raises ValueError if anything does not fit."""
    start = saved["step"]
    if not isinstance(start, int) or not 0 < start < total:
        raise ValueError(f"step {start!r} is not in (0, {total})")
    n_kept = max(start - burn_in, 0) // thin
    n_chains = len(ad["h_bar"])
    _check(saved["state"], {k: (v.dtype, v.shape) for k, v in state.items()}, "state")
    _check(saved["adapt"], {k: (v.dtype, v.shape) for k, v in ad.items()}, "adapt")
    _check({"accepted": saved["accepted"]},
           {"accepted": (torch.float64, torch.Size([n_chains]))}, "counts")
    _check(saved["kept"], {k: (v.dtype, torch.Size([n_kept, *v.shape])) for k, v in rec.items()}
           if n_kept else {}, "kept")
    gen.set_state(saved["rng"])
    kept = {k: list(v.unbind(0)) for k, v in saved["kept"].items()}
    return start, kept, saved["accepted"], saved["state"], saved["adapt"]


def _check(new: Any, ref: dict[str, tuple], what: str) -> None:
    if not isinstance(new, dict) or set(new) != set(ref):
        raise ValueError(f"{what}: saved keys do not match")
    for k, (dtype, shape) in ref.items():
        v = new[k]
        if not isinstance(v, torch.Tensor) or v.dtype != dtype or v.shape != shape:
            raise ValueError(f"{what}.{k}: saved dtype or shape does not match")


def chain_data(run: ChainRun, generator: str, energies: torch.Tensor,
               observables: dict[str, torch.Tensor], drop_stuck_chains: bool
               ) -> tuple[np.ndarray, dict[str, Any]]:
    """Judge the chains (diagnostics.check_chains): (indices of the chains to store, info).

    energies: [T, C] kept reduced energies; observables: {name: [T, C]} key observables.
    Raises DataError naming the chains that did not mix unless drop_stuck_chains.
    """
    obs = {"energy": energies.numpy(), **{k: v.numpy() for k, v in observables.items()}}
    keep, info = check_chains(generator, run.acceptance, run.n_steps, obs,
                              drop_stuck_chains=drop_stuck_chains)
    info = {"acceptance_rate": float(run.acceptance[keep].mean()),
            "chain_acceptance": summary(run.acceptance),
            "step_size_adapted": summary(run.step_size), **info}
    return keep, info


def chain_major(a: torch.Tensor, n: int, chains: np.ndarray | None = None) -> np.ndarray:
    """[T, C, ...] (time first) -> [C' T, ...] ordered chain by chain, first n rows; chains:
    indices of the chains to use (default all)."""
    if chains is not None:
        a = a[:, torch.as_tensor(chains, dtype=torch.long)]
    return a.transpose(0, 1).reshape(-1, *a.shape[2:])[:n].numpy()
