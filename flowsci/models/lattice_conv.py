"""Translation-equivariant vector fields for scalar fields on periodic L^d lattices (d = 1, 2, 3).

arch='conv': a stack of circular (periodic) convolutions. Z2 (phi -> -phi) handling, `z2`:
  'odd'            bias-free convolutions, tanh activations, time entering only as per-channel
                   gains: every layer is odd in phi, so f(t, -phi) = -f(t, phi) exactly;
  'antisymmetrize' a general net g (biases, SiLU, additive time biases) and
                   f = (g(t, phi) - g(t, -phi)) / 2 (twice the cost);
  'none'           f = g (no Z2 symmetry).
arch='gerdes': the single-layer equivariant field of Gerdes et al. 2022,
  f(t, phi)_x = sum_a sum_y W_a(x - y; t) sin(w_a phi_y),  W_a(r; t) = sum_b V_ab(r) H_b(t),
  with a full-lattice kernel (FFT convolution), learned frequencies w_a and Fourier time
  features H_b; odd in phi, and its divergence is analytic: see `divergence`.
point_symmetric: kernels are averaged over the lattice point group (axis reflections and
permutations), so the field is also equivariant to lattice reflections and, on cubic
lattices, to 90-degree rotations.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import nn

from .base import VECTOR_FIELDS, VectorField, broadcast_time
from .embeddings import FourierTime, mlp

CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def symmetrize_kernel(w: torch.Tensor, d: int, periodic: bool = False,
                      permute: bool = True) -> torch.Tensor:
    """Average w [..., k_1, ..., k_d] over reflections of each spatial axis and, if `permute`,
    over axis permutations. periodic=True reflects r -> -r mod L (full-lattice kernels)."""
    lead = w.dim() - d
    perms = list(itertools.permutations(range(d))) if permute else [tuple(range(d))]
    out = torch.zeros_like(w)
    for perm in perms:
        wp = w.permute(*range(lead), *(lead + p for p in perm))
        for flips in itertools.product((False, True), repeat=d):
            dims = [lead + i for i, f in enumerate(flips) if f]
            wf = wp.flip(dims) if dims else wp
            if periodic and dims:
                wf = wf.roll([1] * len(dims), dims)
            out = out + wf
    return out / (len(perms) * 2**d)


class PeriodicConv(nn.Module):
    """Circular convolution on L^d with optional point-group-symmetric kernel."""

    def __init__(self, d: int, c_in: int, c_out: int, k: int, bias: bool, symmetric: bool):
        super().__init__()
        if k % 2 != 1:
            raise ValueError(f"kernel_size must be odd, got {k}")
        self.d, self.pad, self.symmetric = d, k // 2, symmetric
        self.weight = nn.Parameter(torch.randn(c_out, c_in, *([k] * d)) / (c_in * k**d) ** 0.5)
        self.bias = nn.Parameter(torch.zeros(c_out)) if bias else None

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """h: [B, c_in, *shape] -> [B, c_out, *shape]."""
        w = symmetrize_kernel(self.weight, self.d) if self.symmetric else self.weight
        h = F.pad(h, [self.pad] * (2 * self.d), mode="circular")
        return CONV[self.d](h, w, self.bias)


@VECTOR_FIELDS.register("lattice_conv")
class LatticeConvField(VectorField):
    """Periodic convolutional field. x: [B, *shape] -> v: [B, *shape], shape = target.shape.

    arch: 'conv' | 'gerdes'; hidden, n_layers, kernel_size: conv width/depth/kernel (odd);
    z2: 'odd' | 'antisymmetrize' | 'none' (conv only; gerdes is always odd); n_fourier:
    number of sin(w phi) features (gerdes); point_symmetric: point-group-symmetric kernels.
    """

    def __init__(self, target, arch: str = "conv", hidden: int = 16, n_layers: int = 3,
                 kernel_size: int = 3, n_time_freq: int = 4, z2: str = "odd",
                 n_fourier: int = 8, point_symmetric: bool = True):
        super().__init__()
        if target.kind != "lattice":
            raise ValueError("lattice_conv needs a lattice target")
        self.shape = tuple(target.event_shape)
        self.d = len(self.shape)
        if self.d not in (1, 2, 3):
            raise ValueError(f"lattice_conv supports 1, 2 or 3 dimensions, got shape {self.shape}")
        if arch not in ("conv", "gerdes"):
            raise ValueError(f"arch must be 'conv' or 'gerdes', got {arch!r}")
        if z2 not in ("odd", "antisymmetrize", "none"):
            raise ValueError(f"z2 must be 'odd', 'antisymmetrize' or 'none', got {z2!r}")
        self.arch, self.z2, self.symmetric = arch, z2, point_symmetric
        self.time = FourierTime(n_time_freq)
        if arch == "gerdes":
            self.omega = nn.Parameter(torch.linspace(0.5, 3.0, n_fourier))
            self.V = nn.Parameter(0.01 * torch.randn(n_fourier, self.time.dim, *self.shape))
            return
        odd = z2 == "odd"
        chans = [1] + [hidden] * (n_layers - 1) + [1]
        self.convs = nn.ModuleList(
            PeriodicConv(self.d, a, b, kernel_size, bias=not odd, symmetric=point_symmetric)
            for a, b in zip(chans[:-1], chans[1:]))
        n_cond = sum(chans[1:])  # per-channel gains (odd) or biases (general), per layer
        self.cond = mlp(self.time.dim, hidden, n_cond, 2)
        self.chans = chans[1:]

    def _conv_net(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        B = x.shape[0]
        cond = self.cond(self.time(broadcast_time(t, B, x))).split(self.chans, dim=-1)
        odd = self.z2 == "odd"
        h = x.unsqueeze(1)
        last = len(self.convs) - 1
        for k, (conv, c) in enumerate(zip(self.convs, cond)):
            c = c.reshape(B, -1, *([1] * self.d))
            h = conv(h) * (1.0 + c) if odd else conv(h) + c
            if k < last:
                h = torch.tanh(h) if odd else F.silu(h)
        return h.squeeze(1)

    def _kernel(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Gerdes kernel W [B, A, *shape] at times t."""
        V = self.V.to(x.dtype)
        if self.symmetric:
            V = symmetrize_kernel(V, self.d, periodic=True,
                                  permute=len(set(self.shape)) == 1)
        H = self.time(broadcast_time(t, x.shape[0], x))  # [B, T]
        return torch.einsum("bt,at...->ba...", H, V)

    def _gerdes(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        dims = tuple(range(2, 2 + self.d))
        K = torch.sin(self.omega.to(x.dtype).reshape(1, -1, *([1] * self.d)) * x.unsqueeze(1))
        W = self._kernel(t, x)
        prod = torch.fft.rfftn(K, dim=dims) * torch.fft.rfftn(W, dim=dims)
        return torch.fft.irfftn(prod, s=self.shape, dim=dims).sum(1)

    def forward(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if self.arch == "gerdes":
            return self._gerdes(t, x)
        if self.z2 == "antisymmetrize":
            B = x.shape[0]
            g = self._conv_net(t, torch.cat([x, -x]))
            return 0.5 * (g[:B] - g[B:])
        return self._conv_net(t, x)

    @property
    def analytic_divergence(self) -> bool:
        """True when `divergence` is exact and cheap (the CNF then uses it for 'exact')."""
        return self.arch == "gerdes"

    def divergence(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Exact divergence of the gerdes field in O(V): sum_x sum_a W_a(0) w_a cos(w_a phi_x).

        x: [B, *shape] -> [B]. Only defined for arch='gerdes'.
        """
        if self.arch != "gerdes":
            return super().divergence(t, x)
        W0 = self._kernel(t, x)[(slice(None), slice(None)) + (0,) * self.d]  # [B, A]
        om = self.omega.to(x.dtype)
        c = torch.cos(om.reshape(1, -1, *([1] * self.d)) * x.unsqueeze(1)).flatten(2).sum(-1)
        return (W0 * om * c).sum(-1)
