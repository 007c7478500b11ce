"""Maximum-likelihood (FFJORD-style) objective: NLL with the Hutchinson trace and the adjoint.

Optional regularisers of Finlay et al. 2020 ("How to train your neural ODE") are computed on the
same solve by augmenting the dynamics: kinetic energy int |f|^2 dt and Jacobian Frobenius norm
int |eps^T df/dx|^2 dt (Hutchinson), each averaged over the batch and per event dimension.
"""

from __future__ import annotations

import torch

from ..flows.cnf import CNF, SolverConfig
from .objectives import OBJECTIVES


@OBJECTIVES.register("likelihood")
class MaximumLikelihood:
    """loss = -mean log q(x) / D (+ regularisers). D = event dimension, so losses are per dof.

    divergence: 'hutchinson' (training default) or 'exact'; probe: 'rademacher' | 'gaussian'.
    """

    def __init__(self, target, divergence: str = "hutchinson", probe: str = "rademacher",
                 kinetic_weight: float = 0.0, jacobian_weight: float = 0.0,
                 solver: SolverConfig | None = None):
        self.divergence = divergence
        self.probe = probe
        self.kinetic_weight = float(kinetic_weight)
        self.jacobian_weight = float(jacobian_weight)
        self.dim = target.event_dim
        self.solver = solver

    def __call__(self, flow, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        nfe0 = getattr(flow, "nfe", 0)
        regs = self.kinetic_weight > 0 or self.jacobian_weight > 0
        if isinstance(flow, CNF) and regs:
            logq, kin, jac = flow.log_prob_regularised(x, divergence=self.divergence,
                                                       probe=self.probe, solver=self.solver)
        else:
            logq = flow.log_prob(x, divergence=self.divergence, probe=self.probe, train=True,
                                 solver=self.solver)
            kin = jac = torch.zeros((), dtype=x.dtype, device=x.device)
        nll = -logq.mean()
        loss = nll / self.dim + self.kinetic_weight * kin.mean() + self.jacobian_weight * jac.mean()
        stats = {"nll": nll.item(), "nfe": getattr(flow, "nfe", 0) - nfe0}
        if regs:
            stats.update(kinetic=kin.mean().item(), jacobian_frob=jac.mean().item())
        return loss, stats
