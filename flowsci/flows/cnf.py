"""Continuous normalizing flow: augmented dynamics on [x, log p] integrated by torchdiffeq.

Convention: t = 0 is the prior, t = 1 the data. With dx/dt = f(t, x) and
d log p / dt = -div f, log q(x_1) = log p0(x_0) - int_0^1 div f(t, x_t) dt.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torchdiffeq import odeint, odeint_adjoint

from .divergence import DIVERGENCES, draw_probe
from .priors import Prior

FIXED_STEP = {"euler", "midpoint", "rk4", "explicit_adams", "implicit_adams"}


@dataclass
class SolverConfig:
    """ODE solver settings (config section `flow`)."""

    method: str = "dopri5"
    rtol: float = 1e-5
    atol: float = 1e-5
    step_size: float | None = None  # fixed-step methods: dt; default 1/n_steps
    n_steps: int = 20
    adjoint: bool = True
    options: dict = field(default_factory=dict)

    def odeint_kwargs(self) -> dict:
        opts = dict(self.options)
        if self.method in FIXED_STEP:
            opts.setdefault("step_size", self.step_size or 1.0 / self.n_steps)
        return {"method": self.method, "rtol": self.rtol, "atol": self.atol, "options": opts}


class AugmentedDynamics(nn.Module):
    """d/dt (x, logp) = (f(t, x), -div f). Counts function evaluations in `nfe`.

    Set `divergence`, `probe` and `create_graph` before each solve (see CNF._solve).
    """

    def __init__(self, field: nn.Module):
        super().__init__()
        self.field = field
        self.divergence = "exact"
        self.probe: torch.Tensor | None = None
        self.create_graph = False
        self.nfe = 0

    def forward(self, t: torch.Tensor, state: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        """state = (x, logp) or, with regularisers, (x, logp, kinetic, jacobian_frobenius)."""
        x = state[0]
        self.nfe += 1
        # The adjoint's forward pass runs without grad: no graph through the divergence needed.
        create_graph = self.create_graph and torch.is_grad_enabled()
        regularise = len(state) == 4
        with torch.enable_grad():
            if not x.requires_grad:
                x = x.requires_grad_(True)
            f = self.field(t, x)
            if self.divergence == "exact" and getattr(self.field, "analytic_divergence", False):
                div = self.field.divergence(t, x)
            elif regularise:  # one VJP gives both the trace estimate and |eps^T J|^2
                (vjp,) = torch.autograd.grad(f, x, self.probe, create_graph=create_graph)
                div = (vjp * self.probe).flatten(1).sum(-1)
            else:
                div = DIVERGENCES.get(self.divergence)(f, x, create_graph=create_graph,
                                                       probe=self.probe)
        if regularise:
            dim = f[0].numel()
            kinetic = (f * f).flatten(1).sum(-1) / dim
            frob = (vjp * vjp).flatten(1).sum(-1) / dim
            out = (f, -div, kinetic, frob)
        else:
            out = (f, -div)
        if not create_graph:
            out = tuple(o.detach() for o in out)
        return out


class CNF(nn.Module):
    """A CNF q = (flow of `field` from t=0 to 1)_# prior.

    log_prob(x): [B, *event] -> [B]; sample(n): -> (x [n, *event], log q [n]).
    """

    def __init__(self, field: nn.Module, prior: Prior, solver: SolverConfig | None = None):
        super().__init__()
        self.dynamics = AugmentedDynamics(field)
        self.prior = prior
        self.solver = solver or SolverConfig()

    @property
    def field(self) -> nn.Module:
        return self.dynamics.field

    @property
    def nfe(self) -> int:
        return self.dynamics.nfe

    def _solve(self, state: tuple[torch.Tensor, ...], t0: float, t1: float, divergence: str,
               probe: str, train: bool, solver: SolverConfig | None = None):
        """Integrate the augmented state from t0 to t1; returns the final state tuple."""
        solver = solver or self.solver
        x = state[0]
        dyn = self.dynamics
        dyn.divergence = divergence
        dyn.probe = draw_probe(x, probe) if divergence == "hutchinson" else None
        dyn.create_graph = train
        t = torch.tensor([t0, t1], dtype=x.dtype, device=x.device)
        kwargs = solver.odeint_kwargs()
        if train and solver.adjoint:
            out = odeint_adjoint(dyn, state, t, adjoint_params=tuple(dyn.parameters()), **kwargs)
        else:
            out = odeint(dyn, state, t, **kwargs)
        return tuple(o[-1] for o in out)

    def log_prob(self, x: torch.Tensor, divergence: str = "exact", probe: str = "rademacher",
                 train: bool = False, solver: SolverConfig | None = None) -> torch.Tensor:
        """log q(x) by integrating data -> prior. Use divergence='exact' for reweighting."""
        zeros = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        z, delta = self._solve((x, zeros), 1.0, 0.0, divergence, probe, train, solver)
        return self.prior.log_prob(z) - delta

    def log_prob_regularised(self, x: torch.Tensor, divergence: str = "hutchinson",
                             probe: str = "rademacher", solver: SolverConfig | None = None):
        """Training-time log q(x) plus int_0^1 |f|^2/D dt and int_0^1 |eps^T df/dx|^2/D dt
        (Finlay et al. 2020), from one solve with a Hutchinson probe. Returns three [B]."""
        if divergence != "hutchinson":
            raise ValueError("the Jacobian-Frobenius regulariser needs divergence='hutchinson'")
        zeros = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        z, delta, kin, frob = self._solve((x, zeros, zeros, zeros), 1.0, 0.0, divergence, probe,
                                          True, solver)
        # integrating 1 -> 0 accumulates -int_0^1; flip the sign of the regularisers
        return self.prior.log_prob(z) - delta, -kin, -frob

    def sample(self, n: int, with_log_prob: bool = True, divergence: str = "exact",
               generator: torch.Generator | None = None, solver: SolverConfig | None = None,
               z: torch.Tensor | None = None):
        """Draw n samples prior -> data. Returns x, or (x, log q) with the exact trace."""
        if z is None:
            z = self.prior.sample(n, generator=generator)
        if not with_log_prob:
            t = torch.tensor([0.0, 1.0], dtype=z.dtype, device=z.device)
            with torch.no_grad():
                return odeint(lambda s, y: self.field(s, y), z, t,
                              **(solver or self.solver).odeint_kwargs())[-1]
        x, logq = self._solve((z, self.prior.log_prob(z)), 0.0, 1.0, divergence, "rademacher",
                              False, solver)
        return x.detach(), logq.detach()
