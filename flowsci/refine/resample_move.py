"""Resample-move refinement (Gilks & Berzuini 2001; Tan et al. 2025 use the same step).

From the flow pool (x_i ~ q with exact log q, weights w_i ∝ exp(-u_i - log q_i)):
systematic resampling of N particles (flowsci.reweighting.resampling: E[n_i] = N w_i), then
rounds of K p-invariant local steps per particle. The moves need no log q at all; they turn
the duplicates of one heavy flow sample into distinct configurations of p. Rounds repeat
while the distinct configurations are fewer than min_distinct * N (at most max_rounds).
Each particle keeps its ancestor (its pool index, the "Eve" of Chan & Lai 2013): the
distinct ancestors bound the independent information and do not grow under the moves; the
error bars group particles by ancestor (stats.ancestry_error). The step size adapts during
the first `burn_in` rounds only.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from ..reweighting import log_weights, systematic_resample
from .adaptation import DualAveraging
from .kernels import ChainState, LocalKernel, initial_state


@dataclass
class ResampleMoveResult:
    """x [N, *event], u [N], ancestors [N] (pool indices); per round: distinct_ancestors,
    distinct_configurations, accept (mean acceptance probability); step_size; costs."""

    x: np.ndarray
    u: np.ndarray
    ancestors: np.ndarray
    distinct_ancestors: list[int] = field(default_factory=list)
    distinct_configurations: list[int] = field(default_factory=list)
    accept: list[float] = field(default_factory=list)
    step_size: float = float("nan")
    n_evals: int = 0
    n_log_q: int = 0
    cpu_seconds: float = 0.0


def n_distinct(x: torch.Tensor) -> int:
    """Number of distinct configurations among x [N, *event] (exact equality)."""
    return int(torch.unique(x.flatten(1), dim=0).shape[0])


class ResampleMove:
    """The population and its history (checkpointable: state_dict / load_state_dict)."""

    def __init__(self, kernel: LocalKernel, pool: dict[str, torch.Tensor], n_particles: int,
                 n_local: int, max_rounds: int, burn_in: int, adapt: DualAveraging,
                 generator: torch.Generator, min_distinct: float = 0.9):
        if n_particles < 1:
            raise ValueError(f"n_particles must be >= 1, got {n_particles}")
        if n_local < 1:
            raise ValueError("resample_move needs n_local >= 1 local steps per round")
        self.kernel, self.adapt, self.gen = kernel, adapt, generator
        self.n_local, self.max_rounds, self.burn_in = int(n_local), int(max_rounds), int(burn_in)
        self.min_distinct = float(min_distinct)
        t0 = time.process_time()
        lw = log_weights(pool["u"].numpy(), pool["log_q"].numpy())
        seed = int(torch.randint(2**31 - 1, (1,), generator=generator))
        idx = torch.as_tensor(systematic_resample(lw, int(n_particles), seed=seed))
        self.ancestors = idx.clone()
        self.state = initial_state(kernel.potential, pool["x"][idx])
        self.round = 0
        self.history: dict[str, list] = {
            "distinct_ancestors": [int(torch.unique(idx).numel())],
            "distinct_configurations": [n_distinct(self.state.x)], "accept": [float("nan")]}
        self.cpu_seconds = time.process_time() - t0

    @property
    def done(self) -> bool:
        enough = (self.history["distinct_configurations"][-1]
                  >= self.min_distinct * len(self.ancestors))
        return self.round >= self.max_rounds or (self.round >= max(self.burn_in, 1) and enough)

    def run_round(self) -> None:
        t0 = time.process_time()
        burn = self.round < self.burn_in
        probs = []
        for _ in range(self.n_local):
            self.state, prob = self.kernel.step(self.state, self.adapt.step_size, self.gen)
            probs.append(float(prob.mean()))
            if burn:
                self.adapt.update(probs[-1])
        if self.round + 1 == self.burn_in:
            self.adapt.freeze()
        self.round += 1
        self.history["distinct_ancestors"].append(int(torch.unique(self.ancestors).numel()))
        self.history["distinct_configurations"].append(n_distinct(self.state.x))
        self.history["accept"].append(float(np.mean(probs)))
        self.cpu_seconds += time.process_time() - t0

    def result(self) -> ResampleMoveResult:
        return ResampleMoveResult(
            self.state.x.numpy(), self.state.u.numpy(), self.ancestors.numpy(),
            list(self.history["distinct_ancestors"]),
            list(self.history["distinct_configurations"]), list(self.history["accept"]),
            float(self.adapt.step_size), int(self.kernel.potential.n_evals), 0,
            self.cpu_seconds)

    def state_dict(self) -> dict:
        return {"round": self.round, "x": self.state.x, "u": self.state.u,
                "grad": self.state.grad, "ancestors": self.ancestors,
                "history": {k: list(v) for k, v in self.history.items()},
                "n_evals": self.kernel.potential.n_evals, "cpu_seconds": self.cpu_seconds,
                "adapt": self.adapt.state(), "generator": self.gen.get_state()}

    def load_state_dict(self, sd: dict) -> None:
        self.round, self.ancestors = sd["round"], sd["ancestors"]
        self.state = ChainState(sd["x"], sd["u"], sd["grad"])
        self.history = {k: list(v) for k, v in sd["history"].items()}
        self.kernel.potential.n_evals, self.cpu_seconds = sd["n_evals"], sd["cpu_seconds"]
        self.adapt = DualAveraging(**sd["adapt"])
        self.gen.set_state(sd["generator"])


def resample_move(kernel: LocalKernel, pool: dict[str, torch.Tensor], n_particles: int,
                  n_local: int, max_rounds: int, burn_in: int, adapt: DualAveraging,
                  generator: torch.Generator, min_distinct: float = 0.9) -> ResampleMoveResult:
    """Run resample-move to the end (see the module docstring). pool: x, log_q, u tensors."""
    rm = ResampleMove(kernel, pool, n_particles, n_local, max_rounds, burn_in, adapt, generator,
                      min_distinct)
    while not rm.done:
        rm.run_round()
    return rm.result()
