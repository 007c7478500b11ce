"""Divergence of a vector field: exact (full Jacobian trace) or Hutchinson (one VJP per call).

Both take f = field output [B, *event] computed from x [B, *event] with x.requires_grad, and
return div [B]. `create_graph=True` keeps the graph for training through the divergence.
"""

from __future__ import annotations

import torch

from ..registry import Registry

DIVERGENCES: Registry = Registry("divergence")


@DIVERGENCES.register("exact")
def exact_divergence(f: torch.Tensor, x: torch.Tensor, create_graph: bool = False,
                     probe: torch.Tensor | None = None) -> torch.Tensor:
    """Tr(df/dx) per sample by D vector-Jacobian products batched over samples.

    Uses one batched VJP (vmap over basis vectors) when the field supports it, else a loop
    over the D event dimensions (never over samples). Cost: D backward passes.
    """
    B = f.shape[0]
    D = f[0].numel()
    f_flat = f.reshape(B, D)
    eye = torch.eye(D, dtype=f.dtype, device=f.device)
    try:
        basis = eye.unsqueeze(1).expand(D, B, D).reshape(D, *f.shape)
        (jac_rows,) = torch.autograd.grad(f, x, basis, create_graph=create_graph,
                                          retain_graph=True, is_grads_batched=True)
        # jac_rows[k, b] = e_k^T J_b ; the trace takes the k-th component of row k.
        return torch.einsum("kbk->b", jac_rows.reshape(D, B, D))
    except RuntimeError:
        pass
    div = torch.zeros(B, dtype=f.dtype, device=f.device)
    for k in range(D):
        (g,) = torch.autograd.grad(f_flat[:, k].sum(), x, create_graph=create_graph,
                                   retain_graph=True)
        div = div + g.reshape(B, D)[:, k]
    return div


@DIVERGENCES.register("hutchinson")
def hutchinson_divergence(f: torch.Tensor, x: torch.Tensor, create_graph: bool = False,
                          probe: torch.Tensor | None = None) -> torch.Tensor:
    """Unbiased estimate eps^T (df/dx) eps with a probe fixed for the whole solve.

    probe: [B, *event], Rademacher or Gaussian (E[eps eps^T] = I); see `draw_probe`.
    """
    if probe is None:
        raise ValueError("hutchinson_divergence needs a probe (draw it once per solve)")
    (vjp,) = torch.autograd.grad(f, x, probe, create_graph=create_graph)
    return (vjp * probe).flatten(1).sum(-1)


def draw_probe(like: torch.Tensor, kind: str = "rademacher",
               generator: torch.Generator | None = None) -> torch.Tensor:
    """A probe vector with E[eps eps^T] = I, shaped like `like`."""
    if kind == "rademacher":
        return torch.randint(0, 2, like.shape, generator=generator, device=like.device).to(
            like.dtype) * 2 - 1
    if kind == "gaussian":
        return torch.randn(like.shape, generator=generator, device=like.device, dtype=like.dtype)
    raise ValueError(f"unknown probe {kind!r}; use 'rademacher' or 'gaussian'")
