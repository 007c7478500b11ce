"""RealNVP affine coupling flow for lattice fields (Dinh et al. 2017; Albergo et al. 2019).

Each layer updates one checkerboard sublattice (parity of sum of coordinates) given the other:
    x = m * z + (1 - m) * (z * exp(s(m z)) + t(m z)),    log|det dx/dz| = sum (1 - m) s,
with s = bound * tanh(.) for stable training. s and t are periodic convolutional nets. With
z2=True, s is made even and t odd in the frozen field (symmetrised over +-), so the flow
commutes with phi -> -phi and log q(-x) = log q(x) exactly (the Gaussian prior is even).
The flow is equivariant to lattice shifts by even vectors (shifts that keep the checkerboard)
and, with point_symmetric kernels, to site-centred reflections (i -> -i mod L) and axis swaps.

A `Flow` (flows/base.py) like the CNF: log_prob(x) -> [B], sample(n, with_log_prob, generator)
and `nfe` = 0; its exact log q is cheap, so the likelihood objective trains on it directly.
"""

from __future__ import annotations

import torch
from torch import nn

from ..models.lattice_conv import PeriodicConv
from .base import FLOW_MODELS, Flow
from .priors import Prior


def checkerboard(shape: tuple[int, ...], parity: int) -> torch.Tensor:
    """1.0 on sites whose coordinate sum has the given parity, else 0.0. -> [*shape]."""
    grids = torch.meshgrid(*[torch.arange(s) for s in shape], indexing="ij")
    return ((sum(grids) % 2) == parity).to(torch.get_default_dtype())


class AffineCoupling(nn.Module):
    """One checkerboard affine coupling layer on [B, *shape]."""

    def __init__(self, shape: tuple[int, ...], parity: int, hidden: int, n_conv: int,
                 kernel_size: int, bound: float, z2: bool, symmetric: bool):
        super().__init__()
        d = len(shape)
        self.register_buffer("mask", checkerboard(shape, parity), persistent=False)
        chans = [1] + [hidden] * (n_conv - 1) + [2]
        self.convs = nn.ModuleList(PeriodicConv(d, a, b, kernel_size, True, symmetric)
                                   for a, b in zip(chans[:-1], chans[1:]))
        nn.init.zeros_(self.convs[-1].weight)  # start at the identity map
        self.bound, self.z2 = bound, z2

    def _net(self, h: torch.Tensor) -> torch.Tensor:
        h = h.unsqueeze(1)
        for k, conv in enumerate(self.convs):
            h = conv(h)
            if k < len(self.convs) - 1:
                h = torch.nn.functional.silu(h)
        return h  # [B, 2, *shape]

    def scale_shift(self, frozen: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """s, t [B, *shape] from the frozen sublattice (zero elsewhere)."""
        B = frozen.shape[0]
        if self.z2:
            out = self._net(torch.cat([frozen, -frozen]))
            s_raw = 0.5 * (out[:B, 0] + out[B:, 0])  # even
            t = 0.5 * (out[:B, 1] - out[B:, 1])  # odd
        else:
            out = self._net(frozen)
            s_raw, t = out[:, 0], out[:, 1]
        active = 1.0 - self.mask.to(frozen.dtype)
        return self.bound * torch.tanh(s_raw / self.bound) * active, t * active

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """z -> (x, log|det dx/dz| [B])."""
        m = self.mask.to(z.dtype)
        s, t = self.scale_shift(z * m)
        return z * m + (1 - m) * (z * torch.exp(s) + t), s.flatten(1).sum(-1)

    def inverse(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x -> (z, log|det dz/dx| [B])."""
        m = self.mask.to(x.dtype)
        s, t = self.scale_shift(x * m)
        return x * m + (1 - m) * (x - t) * torch.exp(-s), -s.flatten(1).sum(-1)


@FLOW_MODELS.register("realnvp")
class RealNVP(Flow):
    """Coupling-flow baseline for lattice targets: prior z -> x through `n_layers` couplings.

    n_layers: coupling layers (alternating checkerboard parity); hidden, n_conv, kernel_size:
    the periodic conv nets computing s and t; scale_bound: |s| <= bound; z2: exact Z2
    equivariance; point_symmetric: point-group-symmetric conv kernels.
    """

    def __init__(self, target, prior: Prior, n_layers: int = 8, hidden: int = 16,
                 n_conv: int = 3, kernel_size: int = 3, scale_bound: float = 3.0,
                 z2: bool = True, point_symmetric: bool = True):
        super().__init__()
        if target.kind != "lattice":
            raise ValueError("realnvp (checkerboard coupling) needs a lattice target")
        shape = tuple(target.event_shape)
        if len(shape) not in (1, 2, 3):
            raise ValueError(f"realnvp supports 1-3 dimensional lattices, got {shape}")
        self.prior = prior
        self.layers = nn.ModuleList(
            AffineCoupling(shape, k % 2, hidden, n_conv, kernel_size, scale_bound, z2,
                           point_symmetric) for k in range(n_layers))

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Prior -> data: (x, log|det dx/dz|)."""
        logdet = torch.zeros(z.shape[0], dtype=z.dtype, device=z.device)
        for layer in self.layers:
            z, ld = layer(z)
            logdet = logdet + ld
        return z, logdet

    def inverse(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Data -> prior: (z, log|det dz/dx|)."""
        logdet = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        for layer in reversed(self.layers):
            x, ld = layer.inverse(x)
            logdet = logdet + ld
        return x, logdet

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log q(x) = log p0(f^-1(x)) + log|det df^-1/dx|. x: [B, *shape] -> [B]."""
        z, logdet = self.inverse(x)
        return self.prior.log_prob(z) + logdet

    def push_forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.forward(z)[0]

    def pull_back(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.inverse(x)[0]

    def sample(self, n: int, with_log_prob: bool = True,
               generator: torch.Generator | None = None, z: torch.Tensor | None = None):
        """n samples, and their exact log q if with_log_prob. -> x or (x, log_q)."""
        with torch.no_grad():
            if z is None:
                z = self.prior.sample(n, generator=generator)
            x, logdet = self.forward(z)
            if not with_log_prob:
                return x
            return x, self.prior.log_prob(z) - logdet
