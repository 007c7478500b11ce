"""Continuous normalizing flow: augmented dynamics on [x, log p] integrated by torchdiffeq.

Convention: t = 0 is the prior, t = 1 the data. With dx/dt = f(t, x) and
d log p / dt = -div f, log q(x_1) = log p0(x_0) - int_0^1 div f(t, x_t) dt.
Every solve builds its own `AugmentedDynamics` from explicit arguments; the CNF itself holds
only settings fixed at construction (solvers, exact-trace strategy) and an NFE counter.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torchdiffeq import odeint, odeint_adjoint
from torchdiffeq._impl.odeint import SOLVERS
from torchdiffeq._impl.solvers import FixedGridODESolver

from ..models.base import VectorField
from .base import Flow, LikelihoodEstimate, TrainingLogProb
from .divergence import ExactTrace, draw_probe, hutchinson_divergence
from .priors import Prior

# torchdiffeq's own solver table is the one list of method names (the config schema's enum is
# checked against it in the tests).
FIXED_STEP = frozenset(k for k, v in SOLVERS.items() if issubclass(v, FixedGridODESolver))


@dataclass
class SolverConfig:
    """ODE solver settings (config sections `flow` and `training.solver`)."""

    method: str = "dopri5"
    rtol: float = 1e-5
    atol: float = 1e-5
    step_size: float | None = None  # fixed-step methods: dt; default 1/n_steps
    n_steps: int = 20
    adjoint: bool = True
    options: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.method not in SOLVERS:
            raise ValueError(f"unknown ODE solver {self.method!r}; torchdiffeq has "
                             f"{', '.join(sorted(SOLVERS))}")

    def odeint_kwargs(self) -> dict:
        opts = dict(self.options)
        if self.method in FIXED_STEP:
            opts.setdefault("step_size", self.step_size or 1.0 / self.n_steps)
        return {"method": self.method, "rtol": self.rtol, "atol": self.atol, "options": opts}


class NFECounter:
    """Function evaluations, shared by the dynamics objects of one CNF."""

    def __init__(self):
        self.n = 0


class AugmentedDynamics(nn.Module):
    """d/dt (x, logp[, kinetic, jacobian_frob]) for one solve.

    divergence: 'exact' (uses `trace`), 'hutchinson' (uses `probe`) or None (no log-density:
    state is (x,) alone); regularise: add |f|^2/D and |eps^T J|^2/D (needs a probe);
    create_graph: keep the graph through the divergence (training by direct backprop or the
    adjoint's backward pass).
    """

    def __init__(self, field: nn.Module, divergence: str | None, *, trace: ExactTrace | None = None,
                 probe: torch.Tensor | None = None, create_graph: bool = False,
                 regularise: bool = False, counter: NFECounter | None = None):
        super().__init__()
        if divergence not in ("exact", "hutchinson", None):
            raise ValueError(f"divergence must be 'exact' or 'hutchinson', got {divergence!r}")
        if (divergence == "hutchinson" or regularise) and probe is None:
            raise ValueError("the Hutchinson trace and the regularisers need a probe")
        self.field = field
        self.divergence = divergence
        self.trace = trace or ExactTrace()
        self.probe = probe
        self.create_graph = create_graph
        self.regularise = regularise
        self.counter = counter or NFECounter()

    def forward(self, t: torch.Tensor, state: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        self.counter.n += 1
        x = state[0]
        if self.divergence is None:
            return (self.field(t, x),)
        # The adjoint's forward pass runs without grad: no graph through the divergence needed.
        create_graph = self.create_graph and torch.is_grad_enabled()
        vjp = None
        with torch.enable_grad():
            if not x.requires_grad:
                x = x.requires_grad_(True)
            if self.divergence == "exact":
                f, div = self.trace(self.field, t, x, create_graph)
            elif self.regularise:  # one VJP gives both the trace estimate and |eps^T J|^2
                f = self.field(t, x)
                (vjp,) = torch.autograd.grad(f, x, self.probe, create_graph=create_graph)
                div = (vjp * self.probe).flatten(1).sum(-1)
            else:
                f = self.field(t, x)
                div = hutchinson_divergence(f, x, self.probe, create_graph)
        out: tuple[torch.Tensor, ...] = (f, -div)
        if self.regularise:
            dim = f[0].numel()
            out += ((f * f).flatten(1).sum(-1) / dim, (vjp * vjp).flatten(1).sum(-1) / dim)
        if not create_graph:
            out = tuple(o.detach() for o in out)
        return out


class CNF(Flow):
    """A CNF q = (flow of `field` from t=0 to 1)_# prior.

    solver: sampling and evaluation (exact trace); train_solver: maximum-likelihood training
    (default: `solver`); exact_trace: strategy name ('auto' or one of
    divergence.TRACE_METHODS) and trace_chunk: basis vectors per pass (memory bound).
    """

    def __init__(self, field: VectorField, prior: Prior, solver: SolverConfig | None = None,
                 train_solver: SolverConfig | None = None, exact_trace: str = "auto",
                 trace_chunk: int | None = None):
        super().__init__()
        self.field = field
        self.prior = prior
        self.solver = solver or SolverConfig()
        self.train_solver = train_solver or self.solver
        self.trace = ExactTrace(exact_trace, trace_chunk)
        self._counter = NFECounter()

    @property
    def nfe(self) -> int:
        return self._counter.n

    def with_solver(self, solver: SolverConfig) -> "CNF":
        """The same density model (shared field and prior) integrated with another solver."""
        return CNF(self.field, self.prior, solver, self.train_solver, self.trace.requested,
                   self.trace.chunk)

    @property
    def exact_method(self) -> str:
        """The exact-trace strategy in use ('auto' until the first exact solve chose one)."""
        return self.trace.method or self.trace.requested

    def _solve(self, state: tuple[torch.Tensor, ...], t0: float, t1: float,
               divergence: str | None, probe: str = "rademacher", train: bool = False,
               regularise: bool = False) -> tuple[torch.Tensor, ...]:
        """Integrate the augmented state from t0 to t1 with a fresh dynamics object."""
        x = state[0]
        stochastic = divergence == "hutchinson" or regularise
        dyn = AugmentedDynamics(self.field, divergence, trace=self.trace,
                                probe=draw_probe(x, probe) if stochastic else None,
                                create_graph=train, regularise=regularise, counter=self._counter)
        solver = self.train_solver if train else self.solver
        t = torch.tensor([t0, t1], dtype=x.dtype, device=x.device)
        if train and solver.adjoint:
            out = odeint_adjoint(dyn, state, t, adjoint_params=tuple(self.field.parameters()),
                                 **solver.odeint_kwargs())
        else:
            out = odeint(dyn, state, t, **solver.odeint_kwargs())
        return tuple(o[-1] for o in out)

    def log_prob(self, x: torch.Tensor, divergence: str = "exact", probe: str = "rademacher",
                 train: bool = False) -> torch.Tensor:
        """log q(x) by integrating data -> prior. x: [B, *event] -> [B]. divergence='exact'
        for anything reweighted; train=True uses `train_solver` and keeps the graph."""
        zeros = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        z, delta = self._solve((x, zeros), 1.0, 0.0, divergence, probe, train)
        return self.prior.log_prob(z) - delta

    def training_log_prob(self, x: torch.Tensor,
                          estimate: LikelihoodEstimate = LikelihoodEstimate()) -> TrainingLogProb:
        """Training-time log q(x) with the train solver; with estimate.regularise also
        int_0^1 |f|^2/D dt and int_0^1 |eps^T df/dx|^2/D dt (Finlay et al. 2020) from the same
        solve (needs the Hutchinson probe)."""
        if not estimate.regularise:
            lq = self.log_prob(x, estimate.divergence, estimate.probe, train=True)
            zero = torch.zeros_like(lq)
            return TrainingLogProb(lq, zero, zero)
        if estimate.divergence != "hutchinson":
            raise ValueError("the Jacobian-Frobenius regulariser needs divergence='hutchinson'")
        zeros = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        z, delta, kin, frob = self._solve((x, zeros, zeros, zeros), 1.0, 0.0, "hutchinson",
                                          estimate.probe, train=True, regularise=True)
        # integrating 1 -> 0 accumulates -int_0^1; flip the sign of the regularisers
        return TrainingLogProb(self.prior.log_prob(z) - delta, -kin, -frob)

    def push_forward(self, z: torch.Tensor) -> torch.Tensor:
        """x = T(z) by the train solver, with the graph (no log-density: a plain solve)."""
        return self._solve((z,), 0.0, 1.0, None, train=True)[0]

    def pull_back(self, x: torch.Tensor) -> torch.Tensor:
        """z = T^-1(x) by the train solver (the inverse of push_forward up to its error)."""
        with torch.no_grad():
            return self._solve((x,), 1.0, 0.0, None, train=True)[0].detach()

    def sample(self, n: int, with_log_prob: bool = True,
               generator: torch.Generator | None = None, z: torch.Tensor | None = None):
        """Draw n samples prior -> data. Returns x, or (x, log q) with the exact trace."""
        if z is None:
            z = self.prior.sample(n, generator=generator)
        with torch.no_grad():
            if not with_log_prob:
                return self._solve((z,), 0.0, 1.0, None)[0]
            x, logq = self._solve((z, self.prior.log_prob(z)), 0.0, 1.0, "exact")
        return x.detach(), logq.detach()
