"""Energy-based fine-tuning with path gradients: reverse KL(q || p) from the flow's own samples
(Vaitl et al. 2022, "Path-gradient estimators for continuous normalizing flows") and forward
KL(p || q), i.e. maximum likelihood, from data (Vaitl et al. 2024, "Fast and unified path
gradient estimators for normalizing flows"; the fine-tuning after flow matching of Vaitl &
Klein 2025, arXiv 2505.10139).

Both gradients have the same form, and differ only in where the latents z come from:

    grad = E_z[(dT_theta(z)/dtheta)^T g(x)],   g(x) = d/dx [log q_theta(x) + u(x)] at x = T(z)

with theta held fixed inside g. Reverse KL: z ~ prior, x = T(z). Forward KL: x ~ p (a data
batch), z = T^-1(x); the estimator of KL(T^-1_# p || prior) in latent space, whose chain rule
through dz/dtheta = -J^-1 dT/dtheta gives the same expression (so it uses the forces -du/dx at
the data). g is computed by differentiating the exact log q (inverse solve with the exact
divergence) and the energy with respect to x only; the step then backpropagates the surrogate
sum_i x_i . g_i through a plain forward solve x = T(z). At q = p g vanishes for every sample
("sticking the landing"): the estimator's variance goes to zero as the flow converges, which is
why it beats the total gradients for fine-tuning. The forward-KL version never meets the
flow's worst samples (e.g. Lennard-Jones collisions with u ~ 1e13 kT), which dominate the
reverse-KL steps on particle systems.
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
        g, log_q, u = sample_gradient(flow, self.target, xt.detach())
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


@OBJECTIVES.register("forward_kl")
class ForwardKLPathGradient:
    """loss = mean_x [-log q(x)] / D over the data batch (the NLL per dof), with the path gradient
    of the forward KL (module docstring): needs the data and the target's forces.

    clip_gradient: as for reverse_kl (None, the default, leaves every g as is: data samples do
    not collide).
    """

    needs_vector_field = False
    log_stats = ("clipped",)

    def __init__(self, target, clip_gradient: float | None = None):
        if clip_gradient is not None and not clip_gradient > 0:
            raise ValueError(f"clip_gradient must be > 0 or null, got {clip_gradient}")
        self.target = target
        self.clip_gradient = clip_gradient
        self.dim = target.event_dim

    def __call__(self, flow: Flow, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        nfe0 = flow.nfe
        bad = ~torch.isfinite(x.flatten(1)).all(1)
        if bad.any():
            raise FloatingPointError(f"forward_kl: {int(bad.sum())} of {len(x)} data samples "
                                     "have non-finite coordinates")
        g, log_q, u = sample_gradient(flow, self.target, x.detach())
        keep = torch.isfinite(g.flatten(1)).all(1) & torch.isfinite(log_q) & torch.isfinite(u)
        if not keep.all():
            raise FloatingPointError(f"forward_kl: {int((~keep).sum())} of {len(x)} data "
                                     "samples have a non-finite energy, log q or gradient")
        g, n_clipped = bound_sample_gradients(g, self.clip_gradient)
        xt = flow.push_forward(flow.pull_back(x.detach()))  # = x up to the solver, with graph
        nll = -log_q.mean()
        surrogate = (xt * g).flatten(1).sum(-1).mean()
        loss = (surrogate - surrogate.detach() + nll.detach()) / self.dim
        return loss, {"nll": nll.item(), "nfe": flow.nfe - nfe0, "clipped": n_clipped}


def sample_gradient(flow: Flow, target, x: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """g = d/dx [log q(x) + u(x)] [B, *event] at fixed parameters, with log q [B] and u [B]
    at x (exact divergence, the flow's train solver)."""
    x = x.requires_grad_(True)
    with torch.enable_grad():
        log_q = _exact_train_log_prob(flow, x)
        u = target.energy(x)
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
