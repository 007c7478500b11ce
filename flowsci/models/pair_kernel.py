"""Pair-kernel vector field with a closed-form exact divergence ('pair_kernel').

Dynamics in the spirit of Koehler, Klein & Noe 2020 ("Equivariant flows"), made many-body by
per-particle environment densities that are differentiated exactly:

    f_i = (1/nu) sum_{j != i} (x_i - x_j) phi_ij,        phi_ij = w(r_ij) psi(a_ij)
    a_ij = W_r e(r_ij) + W_t tau(t) + P[z_i, z_j] + W_s (h_i + h_j) + m_i * m_j
    h_i  = (1/nu_h) sum_{k != i} e(r_ik) (x) onehot(z_k),     m_i = W_m h_i + b[z_i]

r = sqrt(|x_i - x_j|^2 + eps) (the same r in forward and divergence), e: K Gaussian radial
functions on [0, r_max], tau: Fourier time features, P: symmetric type-pair table, psi: SiLU MLP
R^H -> R, w: optional C-inf cutoff envelope (1 without cutoff). a_ij = a_ji, so phi is
symmetric, sum_i f_i = 0 (mean-free) and f is E(n)- and permutation-equivariant.

Exact divergence. Only distances enter phi, so over an unordered pair p = {i, j}
    div = (1/nu) sum_p [2 d phi_p + (d_ij . grad_{x_i} + d_ji . grad_{x_j}) phi_p],
and the bracketed directional derivative is one forward-mode tangent through psi along
    da_p = 2 W_r e'(r) q + W_s (g_ij + g_ji) + (W_m g_ij) * m_j + m_i * (W_m g_ji),
with q = |d_ij|^2 / r and g_ij = (d_ij . grad_{x_i} + d_ji . grad_{x_j}) h_i
    = (1/nu_h) [sum_k e'(r_ik)/r_ik (d_ik . d_ij) (x) onehot(z_k) + e'(r_ij) q_ij (x) onehot(z_j)].
Everything is closed form (no autograd inside, so it works under no_grad and is itself
differentiable for training): cost ~ one extra pass of psi plus O(B n^2 K d) contractions,
against D = n d backward passes for the autograd trace. Each pair's MLP runs once (i < j).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..geometry import remove_mean
from .base import VECTOR_FIELDS, VectorField, broadcast_time
from .embeddings import FourierTime


def silu_and_grad(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """SiLU(z) and its derivative sigma(z) (1 + z (1 - sigma(z))), elementwise."""
    s = torch.sigmoid(z)
    return z * s, s * (1.0 + z * (1.0 - s))


def envelope_and_grad(r: torch.Tensor, cutoff: float) -> tuple[torch.Tensor, torch.Tensor]:
    """C-inf bump w = exp(1 - 1/(1 - (r/rc)^2)) (0 beyond rc) and dw/dr; NaN-free everywhere."""
    s2 = (r / cutoff) ** 2
    inside = s2 < 1.0
    inv = 1.0 / (1.0 - torch.where(inside, s2, torch.zeros_like(s2)))
    w = torch.where(inside, torch.exp(1.0 - inv), torch.zeros_like(s2))
    return w, -w * inv * inv * (2.0 * r / cutoff**2)


class GaussianBasis(nn.Module):
    """r [...] -> (e [..., K], de/dr [..., K]): Gaussians centred on linspace(0, r_max, K),
    width = spacing, times the cutoff envelope when `cutoff` is set."""

    def __init__(self, n_rbf: int, r_max: float, cutoff: float | None = None):
        super().__init__()
        if n_rbf < 2 or r_max <= 0:
            raise ValueError("pair_kernel: need n_rbf >= 2 and r_max > 0")
        self.register_buffer("centres", torch.linspace(0.0, r_max, n_rbf), persistent=False)
        self.width = r_max / (n_rbf - 1)
        self.cutoff = cutoff

    def forward(self, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        u = (r.unsqueeze(-1) - self.centres.to(r.dtype)) / self.width
        e = torch.exp(-0.5 * u * u)
        de = -u / self.width * e
        if self.cutoff is not None:
            w, dw = envelope_and_grad(r, self.cutoff)
            e, de = e * w.unsqueeze(-1), de * w.unsqueeze(-1) + e * dw.unsqueeze(-1)
        return e, de


@VECTOR_FIELDS.register("pair_kernel")
class PairKernelField(VectorField):
    """Pair-kernel field with exact closed-form divergence. x: [B, n, d] -> f: [B, n, d].

    hidden: width H of the pair MLP psi; n_layers: its hidden layers; n_rbf, r_max: radial
    basis; environment: many-body environment densities h_i (False: pure pair kernel);
    cutoff: smooth envelope radius (None: all pairs); aggregation_norm: nu (default n - 1);
    env_norm: nu_h (default min(n - 1, 12)); eps: r = sqrt(|d|^2 + eps).
    """

    analytic_divergence = True

    def __init__(self, target, hidden: int = 64, n_layers: int = 2, n_rbf: int = 20,
                 r_max: float = 8.0, n_time_freq: int = 4, environment: bool = True,
                 n_types: int | None = None, cutoff: float | None = None,
                 aggregation_norm: float | None = None, env_norm: float | None = None,
                 eps: float = 1e-6):
        super().__init__()
        if target.kind != "particles":
            raise ValueError("pair_kernel needs a particle target")
        if n_layers < 1 or hidden < 1 or eps <= 0:
            raise ValueError("pair_kernel: need n_layers >= 1, hidden >= 1 and eps > 0")
        if cutoff is not None and cutoff <= 0:
            raise ValueError("pair_kernel: cutoff must be positive")
        n = target.n_particles
        z = torch.as_tensor(target.atomic_numbers, dtype=torch.long)
        _, types = torch.unique(z, return_inverse=True)
        n_types = n_types or int(types.max()) + 1
        self.register_buffer("types", types, persistent=False)
        self.register_buffer("onehot", F.one_hot(types, n_types).float(), persistent=False)
        i, j = torch.triu_indices(n, n, offset=1)
        self.register_buffer("pi", i, persistent=False)
        self.register_buffer("pj", j, persistent=False)
        self.register_buffer("mask", 1.0 - torch.eye(n), persistent=False)
        self.n_types, self.eps, self.environment = n_types, float(eps), bool(environment)
        self.cutoff = None if cutoff is None else float(cutoff)
        self.norm = float(aggregation_norm or max(n - 1, 1))
        self.env_norm = float(env_norm or min(max(n - 1, 1), 12))

        self.basis = GaussianBasis(n_rbf, r_max, self.cutoff)
        self.time = FourierTime(n_time_freq)
        self.w_t = nn.Linear(self.time.dim, hidden)  # its bias is the first layer's bias
        self.w_r = nn.Linear(n_rbf, hidden, bias=False)
        self.pair_type = nn.Parameter(torch.zeros(n_types, n_types, hidden))
        if self.environment:
            k = n_types * n_rbf
            self.w_s = nn.Linear(k, hidden, bias=False)
            self.w_m = nn.Linear(k, hidden, bias=False)
            self.m_type = nn.Parameter(torch.ones(n_types, hidden))
        self.layers = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(n_layers - 1))
        self.out = nn.Linear(hidden, 1)
        nn.init.zeros_(self.out.weight)  # the field starts at exactly zero; psi's last layer
        nn.init.zeros_(self.out.bias)    # gets gradients at once, the rest after one step

    # ------------------------------------------------------------------ helpers
    def _typed(self, v: torch.Tensor) -> torch.Tensor:
        """[B, n, n, K] -> [B, n, n, T*K]: channels of pair (i, k) placed by the type of k."""
        if self.n_types == 1:
            return v
        oh = self.onehot.to(v.dtype)[None, None, :, :, None]  # [1, 1, n, T, 1]
        return (v.unsqueeze(-2) * oh).flatten(-2)

    def _psi(self, a: torch.Tensor, da: torch.Tensor | None
             ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """psi(a) [B, P] and, given a tangent da [B, P, H], the JVP J_psi(a) da [B, P]."""
        g, s = silu_and_grad(a)
        t = None if da is None else s * da
        for lin in self.layers:
            g, s = silu_and_grad(lin(g))
            t = None if t is None else s * F.linear(t, lin.weight)
        psi = self.out(g).squeeze(-1)
        return psi, None if t is None else F.linear(t, self.out.weight).squeeze(-1)

    def _evaluate(self, t: torch.Tensor, x: torch.Tensor, with_div: bool
                  ) -> tuple[torch.Tensor, torch.Tensor | None]:
        B, n, d = x.shape
        I, J = self.pi, self.pj
        diff = x.unsqueeze(2) - x.unsqueeze(1)  # [B, n, n, d]: x_i - x_j
        sq = (diff * diff).sum(-1)
        r = torch.sqrt(sq + self.eps)
        tt = self.time(broadcast_time(t, B, x))
        table = 0.5 * (self.pair_type + self.pair_type.transpose(0, 1))
        a = self.w_t(tt).unsqueeze(1) + table[self.types[I], self.types[J]]  # [B, P, H]
        if self.environment:
            mask = self.mask.to(x.dtype)
            e_all, de_all = self.basis(r)  # [B, n, n, K]
            e, de = e_all[:, I, J], de_all[:, I, J]
            h = self._typed(e_all * mask.unsqueeze(-1)).sum(2) / self.env_norm  # [B, n, TK]
            m = self.w_m(h) + self.m_type[self.types]  # [B, n, H]
            hi, hj, mi, mj = h[:, I], h[:, J], m[:, I], m[:, J]
            a = a + self.w_s(hi + hj) + mi * mj
        else:
            e, de = self.basis(r[:, I, J])
        a = a + self.w_r(e)

        da = None
        rp, qp = r[:, I, J], sq[:, I, J] / r[:, I, J]
        if with_div:
            da = 2.0 * self.w_r(de * qp.unsqueeze(-1))
            if self.environment:
                q = sq / r * mask
                gp = self._typed(de_all * (mask / r).unsqueeze(-1))   # e'(r_ik)/r_ik [B,n,n,TK]
                gvec = torch.einsum("bikc,bikd->bicd", gp, diff)     # [B, n, TK, d]
                gam = torch.einsum("bicd,bijd->bijc", gvec, diff)    # sum_k ... (d_ik . d_ij)
                gam = (gam + self._typed(de_all * q.unsqueeze(-1))) / self.env_norm
                gf, gb = gam[:, I, J], gam[:, J, I]                  # g_ij, g_ji: [B, P, TK]
                da = da + self.w_s(gf + gb) + self.w_m(gf) * mj + mi * self.w_m(gb)
        psi, dpsi = self._psi(a, da)

        if self.cutoff is not None:
            w, dw = envelope_and_grad(rp, self.cutoff)
            phi = w * psi
            dphi = None if dpsi is None else w * dpsi + 2.0 * dw * qp * psi
        else:
            phi, dphi = psi, dpsi
        fp = diff[:, I, J] * (phi / self.norm).unsqueeze(-1)  # [B, P, d]
        f = torch.zeros_like(x).index_add(1, I, fp).index_add(1, J, -fp)
        div = None if dphi is None else (2.0 * d * phi + dphi).sum(-1) / self.norm
        return remove_mean(f), div

    # ------------------------------------------------------------------ contract
    def forward(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """x: [B, n, d] -> f: [B, n, d] (mean-free)."""
        return self._evaluate(t, x, with_div=False)[0]

    def divergence(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Exact trace of d f / d x over all n*d coordinates: [B]."""
        return self._evaluate(t, x, with_div=True)[1]

    def forward_and_divergence(self, t: torch.Tensor, x: torch.Tensor
                               ) -> tuple[torch.Tensor, torch.Tensor]:
        """(f [B, n, d], exact divergence [B]) with shared work."""
        return self._evaluate(t, x, with_div=True)
