"""Maximum-likelihood (FFJORD-style) objective: NLL with the Hutchinson trace and the adjoint.

Optional regularisers of Finlay et al. 2020 ("How to train your neural ODE") are computed on the
same solve by augmenting the dynamics: kinetic energy int |f|^2 dt and Jacobian Frobenius norm
int |eps^T df/dx|^2 dt (Hutchinson), each averaged over the batch and per event dimension.
The ODE solver used in training is the flow's own `train_solver` (config training.solver).
Under DDP each rank draws its Hutchinson probes from its own stream: the run is statistically,
not numerically, the same as one process (divergence='exact' is deterministic given the batch
and matches one process up to round-off).
"""

from __future__ import annotations

import torch

from ..flows.base import Flow, LikelihoodEstimate
from . import distributed
from .objectives import OBJECTIVES


@OBJECTIVES.register("likelihood")
class MaximumLikelihood:
    """loss = -mean log q(x) / D (+ regularisers). D = event dimension, so losses are per dof.

    divergence: 'hutchinson' (training default) or 'exact'; probe: 'rademacher' | 'gaussian'.
    """

    needs_vector_field = False

    def __init__(self, target, divergence: str = "hutchinson", probe: str = "rademacher",
                 kinetic_weight: float = 0.0, jacobian_weight: float = 0.0):
        if divergence not in ("hutchinson", "exact"):
            raise ValueError(f"divergence must be 'hutchinson' or 'exact', got {divergence!r}")
        self.kinetic_weight = float(kinetic_weight)
        self.jacobian_weight = float(jacobian_weight)
        self.estimate = LikelihoodEstimate(divergence, probe,
                                           self.kinetic_weight > 0 or self.jacobian_weight > 0)
        self.dim = target.event_dim

    def __call__(self, flow: Flow, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        nfe0 = flow.nfe
        if distributed.world_size() > 1 and (self.estimate.divergence == "hutchinson"
                                             or self.estimate.regularise):
            out = self._per_rank_probes(flow, x)
        else:
            out = flow.training_log_prob(x, self.estimate)
        nll = -out.log_q.mean()
        loss = (nll / self.dim + self.kinetic_weight * out.kinetic.mean()
                + self.jacobian_weight * out.jacobian_frob.mean())
        stats = {"nll": nll.item(), "nfe": flow.nfe - nfe0}
        if self.estimate.regularise:
            stats.update(kinetic=out.kinetic.mean().item(),
                         jacobian_frob=out.jacobian_frob.mean().item())
        return loss, stats

    def _per_rank_probes(self, flow: Flow, x: torch.Tensor):
        """Under DDP: the Hutchinson probes come from a per-rank stream (seeded from the shared
        RNG, plus the rank) so that the ranks' probes are independent, as in one process."""
        seed = int(torch.randint(0, 2**62, (1,)))  # the same on every rank
        devices = [x.device] if x.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(distributed.fork_seed(seed))
            return flow.training_log_prob(x, self.estimate)
