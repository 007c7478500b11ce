"""Energy-based fine-tuning: reverse KL(q || p) with path gradients (Vaitl et al. 2022, "Path-
gradient estimators for continuous normalizing flows"; Vaitl et al. 2025, arXiv 2505.10139).

KL(q || p) = E_z[log q(T(z)) + u(T(z))] + log Z. Its path gradient drops the score term
E[d log q_theta / d theta at fixed x] (zero in expectation) and keeps only the dependence
through the sample x = T_theta(z):

    grad = E_z[(dT_theta(z)/dtheta)^T g(x)],   g(x) = d/dx [log q_theta(x) + u(x)] at x = T(z)

with theta held fixed inside g. g is computed by differentiating the exact log q (inverse
solve with the exact divergence) and the energy with respect to x only; the step then
backpropagates the surrogate sum_i x_i . g_i through a plain forward solve x = T(z). At q = p
g vanishes for every sample ("sticking the landing"): the estimator's variance goes to zero
as the flow converges, which is why it beats the total-gradient reverse KL for fine-tuning.
The data batch only sets the batch size; no data are used. The logged loss is the reverse-KL
estimate mean(log q + u) per degree of freedom (= (KL - log Z) / D).
"""

from __future__ import annotations

import torch

from ..flows.base import Flow, LikelihoodEstimate
from .distributed import global_rows
from .objectives import OBJECTIVES


EXACT = LikelihoodEstimate(divergence="exact")


@OBJECTIVES.register("reverse_kl")
class ReverseKLPathGradient:
    """loss = mean_z [log q(T z) + u(T z)] / D with the path gradient (module docstring).

    batch_size: samples per step and process (default: the data batch's size, i.e. this
    process's slice of training.batch_size under DDP, where the prior draws of the global batch
    are sliced like the data: the same draws as one process); clip_gradient: each sample's
    g is scaled down to at most this multiple of the batch's median |g| (a Lennard-Jones
    collision has |g| ~ 1e13: bounded, it still pushes the pair apart without swamping the
    step); None leaves g as is; clip_energy: samples with energies this many kT over the batch
    median are dropped from the step instead (None, the default, keeps all: dropping them
    lets the flow put more mass where the energy is highest).
    """

    needs_vector_field = False
    log_stats = ("dropped", "clipped")  # samples left out / bounded per step

    def __init__(self, target, batch_size: int | None = None, clip_gradient: float | None = 10.0,
                 clip_energy: float | None = None):
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        for name, v in (("clip_gradient", clip_gradient), ("clip_energy", clip_energy)):
            if v is not None and not v > 0:
                raise ValueError(f"{name} must be > 0 or null, got {v}")
        self.target = target
        self.batch_size = batch_size
        self.clip_gradient = clip_gradient
        self.clip_energy = clip_energy
        self.dim = target.event_dim

    def __call__(self, flow: Flow, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        nfe0 = flow.nfe
        n = self.batch_size or len(x)
        z = global_rows(lambda m: flow.prior.sample(m), n).to(x.device, x.dtype)
        xt = flow.push_forward(z)  # graph to the parameters
        g, log_q, u = self.sample_gradient(flow, xt.detach())
        keep = torch.isfinite(g.flatten(1)).all(1) & torch.isfinite(log_q) & torch.isfinite(u)
        if self.clip_energy is not None and keep.any():
            keep &= u <= u[keep].median() + self.clip_energy
        if not keep.any():
            raise FloatingPointError("reverse_kl: no sample with a finite energy, log q and "
                                     "gradient in this batch")
        g, n_clipped = bound_sample_gradients(g[keep], self.clip_gradient)
        kl = (log_q[keep] + u[keep]).mean()
        surrogate = (xt[keep] * g).flatten(1).sum(-1).mean()
        # value: the KL estimate; gradient: the path gradient only
        loss = (surrogate - surrogate.detach() + kl.detach()) / self.dim
        stats = {"nll": float("nan"), "nfe": flow.nfe - nfe0, "reverse_kl": kl.item(),
                 "dropped": int((~keep).sum()), "clipped": n_clipped}
        return loss, stats

    def sample_gradient(self, flow: Flow, x: torch.Tensor
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """g = d/dx [log q(x) + u(x)] at fixed parameters, with log q [B] and u [B] at x."""
        x = x.requires_grad_(True)
        with torch.enable_grad():
            log_q = _exact_train_log_prob(flow, x)
            u = self.target.energy(x)
            (g,) = torch.autograd.grad((log_q + u).sum(), x)
        return g.detach(), log_q.detach(), u.detach()


def bound_sample_gradients(g: torch.Tensor, factor: float | None) -> tuple[torch.Tensor, int]:
    """Scale each sample's g [B, *event] to norm <= factor x the batch median norm.

    Directions are kept; samples under the bound are unchanged. Returns (g, number scaled).
    """
    if factor is None or len(g) < 2:
        return g, 0
    norm = g.flatten(1).norm(dim=1)
    bound = factor * norm.median()
    scale = torch.where(norm > bound, bound / norm, torch.ones_like(norm))
    return g * scale.view(-1, *[1] * (g.dim() - 1)), int((norm > bound).sum())


def _exact_train_log_prob(flow: Flow, x: torch.Tensor) -> torch.Tensor:
    """Exact log q(x) keeping the graph to x (train solver for a CNF)."""
    return flow.training_log_prob(x, EXACT).log_q
