"""Flow-assisted MCMC (Gabrie, Rotskoff & Vanden-Eijnden 2022; Albergo et al. 2019).

C chains on the target p ∝ exp(-u). Each cycle: K local p-invariant steps (a kernel from
`kernels`), then one global independence move per chain whose proposal is the next unused
flow sample x' of the pool (independent of the chains, with its exact log q), accepted with
    min(1, p(x') q(x) / (p(x) q(x'))) = min(1, exp([-u(x') - log q(x')] - [-u(x) - log q(x)])).
q(x) at the current state is one exact log q solve per chain that moved since its last solve,
batched over chains. Both moves leave p invariant, so their cycle does (detailed balance of
each part; exact up to the error of the flow's log q solve, which samples.h5 records).
The first `burn_in` cycles adapt the step size and are not recorded. Chains start from
systematic resampling (by importance weight) of a reserved first block of the pool, which
proposals never reuse. global_moves = False gives plain local MCMC (the baseline).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from ..reweighting import log_weights, systematic_resample
from .adaptation import DualAveraging
from .kernels import ChainState, LocalKernel, initial_state, metropolis


@dataclass
class ChainResult:
    """Recorded cycles after burn-in. x [T, C, *event], u [T, C]; local_accept [C] mean
    acceptance probability of the local steps, global_accept [C] accepted / offered global
    moves (nan if none offered), n_offered [C]; step_size (final); costs: n_evals
    (energy+force evaluations, configurations), n_log_q (exact log q solves, configurations),
    cpu_seconds (process time, summed over resumes); pool_used: flow samples consumed."""

    x: np.ndarray
    u: np.ndarray
    local_accept: np.ndarray
    global_accept: np.ndarray
    n_offered: np.ndarray
    step_size: float
    n_evals: int
    n_log_q: int
    cpu_seconds: float
    pool_used: int
    n_init: int


def independence_log_alpha(u: torch.Tensor, log_q: torch.Tensor, u_prop: torch.Tensor,
                           log_q_prop: torch.Tensor) -> torch.Tensor:
    """log of p(x') q(x) / (p(x) q(x')) for current states (u, log q) and independent
    proposals (u', log q'), [C] each; -inf for proposals with a non-finite u' or log q'."""
    la = (-u_prop - log_q_prop) - (-u - log_q)
    ok = torch.isfinite(u_prop) & torch.isfinite(log_q_prop)
    return torch.where(ok, torch.nan_to_num(la, nan=-float("inf")), -float("inf"))


class FlowMCMC:
    """The sampler with all of its state (checkpointable with state_dict / load_state_dict).

    pool: flow samples x [N, *event], log_q [N], u [N] (float64 tensors); log_q_fn: exact
    log q of configurations [B, *event] -> [B]; n_chains C, n_local K, n_cycles, burn_in.
    """

    def __init__(self, kernel: LocalKernel, log_q_fn: Callable[[torch.Tensor], torch.Tensor],
                 pool: dict[str, torch.Tensor], n_chains: int, n_local: int, n_cycles: int,
                 burn_in: int, adapt: DualAveraging, generator: torch.Generator,
                 global_moves: bool = True, n_init: int | None = None):
        if n_chains < 1:
            raise ValueError(f"n_chains must be >= 1, got {n_chains}")
        if n_local < 0 or (n_local == 0 and not global_moves):
            raise ValueError("no moves: n_local = 0 and no global moves")
        self.kernel, self.potential, self.log_q_fn = kernel, kernel.potential, log_q_fn
        self.pool = pool
        self.n_chains, self.n_local, self.n_cycles = int(n_chains), int(n_local), int(n_cycles)
        self.burn_in, self.adapt, self.gen = int(burn_in), adapt, generator
        self.global_moves = bool(global_moves)
        n_pool = len(pool["x"])
        self.n_init = int(n_init if n_init is not None else min(max(8 * n_chains, 1), n_pool // 2))
        if not 1 <= self.n_init <= n_pool:
            raise ValueError(f"the pool has {n_pool} flow samples, too few to start "
                             f"{n_chains} chains")
        self.cycle, self.pointer, self.n_log_q, self.cpu_seconds = 0, self.n_init, 0, 0.0
        idx = self._initial_indices()
        self.state = initial_state(self.potential, pool["x"][idx])
        self.log_q = pool["log_q"][idx].clone()
        self.log_q_valid = torch.ones(n_chains, dtype=torch.bool)
        self.records: dict[str, list[torch.Tensor]] = {"x": [], "u": []}
        self.local_sum = torch.zeros(n_chains, dtype=torch.float64)
        self.local_n = 0
        self.global_acc = torch.zeros(n_chains, dtype=torch.float64)
        self.n_offered = torch.zeros(n_chains, dtype=torch.float64)

    def _initial_indices(self) -> torch.Tensor:
        lw = log_weights(self.pool["u"][: self.n_init].numpy(),
                         self.pool["log_q"][: self.n_init].numpy())
        seed = int(torch.randint(2**31 - 1, (1,), generator=self.gen))
        return torch.as_tensor(systematic_resample(lw, self.n_chains, seed=seed))

    @property
    def done(self) -> bool:
        return self.cycle >= self.burn_in + self.n_cycles

    def run_cycle(self) -> None:
        """K local steps (adapting during burn-in), then the global move."""
        t0 = time.process_time()
        burn = self.cycle < self.burn_in
        for _ in range(self.n_local):
            new, prob = self.kernel.step(self.state, self.adapt.step_size, self.gen)
            self.log_q_valid &= torch.all((new.x == self.state.x).flatten(1), dim=1)
            self.state = new
            if burn:
                self.adapt.update(float(prob.mean()))
            else:
                self.local_sum += prob
                self.local_n += 1
        if self.cycle + 1 == self.burn_in:
            self.adapt.freeze()
        if self.global_moves and self.pointer + self.n_chains <= len(self.pool["x"]):
            self._global_move(burn)
        if not burn:
            self.records["x"].append(self.state.x.clone())
            self.records["u"].append(self.state.u.clone())
        self.cycle += 1
        self.cpu_seconds += time.process_time() - t0

    def _global_move(self, burn: bool) -> None:
        stale = ~self.log_q_valid
        if stale.any():  # one batched exact solve for the chains that moved
            self.log_q[stale] = self.log_q_fn(self.state.x[stale]).to(self.log_q)
            self.n_log_q += int(stale.sum())
            self.log_q_valid[:] = True
        sl = slice(self.pointer, self.pointer + self.n_chains)
        self.pointer += self.n_chains
        x_p, lq_p, u_p = self.pool["x"][sl], self.pool["log_q"][sl], self.pool["u"][sl]
        accept, _ = metropolis(independence_log_alpha(self.state.u, self.log_q, u_p, lq_p),
                               self.gen)
        if accept.any():
            u, g = self.potential.value_and_grad(x_p[accept])
            new = ChainState(self.state.x.clone(), self.state.u.clone(), self.state.grad.clone())
            new.x[accept], new.u[accept], new.grad[accept] = x_p[accept], u, g
            self.state = new
            self.log_q[accept] = lq_p[accept].to(self.log_q)
        if not burn:
            self.global_acc += accept.double()
            self.n_offered += 1

    def result(self) -> ChainResult:
        stack = (lambda v: torch.stack(v).numpy() if v else np.empty((0, self.n_chains)))
        with np.errstate(invalid="ignore", divide="ignore"):
            g_acc = (self.global_acc / self.n_offered).numpy()
        return ChainResult(
            x=stack(self.records["x"]), u=stack(self.records["u"]),
            local_accept=(self.local_sum / max(self.local_n, 1)).numpy()
            if self.local_n else np.full(self.n_chains, np.nan),
            global_accept=g_acc, n_offered=self.n_offered.numpy(),
            step_size=float(self.adapt.step_size), n_evals=int(self.potential.n_evals),
            n_log_q=self.n_log_q, cpu_seconds=self.cpu_seconds,
            pool_used=self.pointer - self.n_init, n_init=self.n_init)

    def state_dict(self) -> dict:
        """Everything needed to continue bit-identically."""
        return {"cycle": self.cycle, "pointer": self.pointer, "n_log_q": self.n_log_q,
                "cpu_seconds": self.cpu_seconds, "n_evals": self.potential.n_evals,
                "x": self.state.x, "u": self.state.u, "grad": self.state.grad,
                "log_q": self.log_q, "log_q_valid": self.log_q_valid,
                "records": {k: list(v) for k, v in self.records.items()},
                "local_sum": self.local_sum, "local_n": self.local_n,
                "global_acc": self.global_acc, "n_offered": self.n_offered,
                "adapt": self.adapt.state(), "generator": self.gen.get_state()}

    def load_state_dict(self, sd: dict) -> None:
        self.cycle, self.pointer, self.n_log_q = sd["cycle"], sd["pointer"], sd["n_log_q"]
        self.cpu_seconds, self.potential.n_evals = sd["cpu_seconds"], sd["n_evals"]
        self.state = ChainState(sd["x"], sd["u"], sd["grad"])
        self.log_q, self.log_q_valid = sd["log_q"], sd["log_q_valid"]
        self.records = {k: list(v) for k, v in sd["records"].items()}
        self.local_sum, self.local_n = sd["local_sum"], sd["local_n"]
        self.global_acc, self.n_offered = sd["global_acc"], sd["n_offered"]
        self.adapt = DualAveraging(**sd["adapt"])
        self.gen.set_state(sd["generator"])


def run_flow_mcmc(sampler: FlowMCMC, on_cycle: Callable[[FlowMCMC], None] | None = None,
                  stop_after: int | None = None) -> ChainResult:
    """Run the remaining cycles (up to cycle `stop_after`), calling on_cycle after each."""
    while not sampler.done and (stop_after is None or sampler.cycle < stop_after):
        sampler.run_cycle()
        if on_cycle is not None:
            on_cycle(sampler)
    return sampler.result()
