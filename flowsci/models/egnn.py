"""E(n)-equivariant graph network vector field (Satorras, Hoogeboom & Welling 2021).

Used for CNFs as in Satorras et al. 2021 (E(n) flows) and Klein et al. 2023: node features
carry time and particle type; each layer updates coordinates along relative vectors, so the
output v = x_L - x_0 (projected to zero mean) is equivariant to rotations, reflections,
translations and permutations of identical particles.

Graph: 'full' (all pairs, small systems) or 'radius': every pair is weighted by the C-inf bump
envelope of `graph.smooth_envelope`, exactly zero beyond `cutoff`, so the field stays smooth
(a hard radius or k-NN graph would make it discontinuous and the CNF ill-posed).
"""

from __future__ import annotations

import torch
from torch import nn

from ..geometry import remove_mean
from .base import VECTOR_FIELDS, VectorField, broadcast_time
from .embeddings import FourierTime, mlp
from .graph import check_graph, smooth_envelope


class EGNNLayer(nn.Module):
    """One E(n) layer: messages m_ij, bounded coordinate update, residual feature update."""

    def __init__(self, hidden: int, edge_dim: int, coord_range: float, norm_eps: float = 1.0):
        super().__init__()
        self.phi_e = mlp(2 * hidden + 1 + edge_dim, hidden, hidden, 2, last_act=True)
        self.phi_x = mlp(hidden, hidden, 1, 2)
        self.phi_h = mlp(2 * hidden, hidden, hidden, 2)
        self.coord_range = coord_range
        self.norm_eps = norm_eps

    def forward(self, h: torch.Tensor, x: torch.Tensor, edge_attr: torch.Tensor,
                mask: torch.Tensor, cutoff: float | None = None,
                norm: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
        """h: [B, n, H], x: [B, n, d], edge_attr: [B, n, n, E], mask: [n, n] (no self-edges).

        cutoff: radius of the smooth envelope (None: full graph); norm: aggregation divisor.
        """
        n = x.shape[1]
        diff = x.unsqueeze(2) - x.unsqueeze(1)  # [B, n, n, d]: x_i - x_j
        sq = (diff * diff).sum(-1, keepdim=True)
        r = torch.sqrt(sq + 1e-8)
        w = mask[..., None] if cutoff is None else mask[..., None] * smooth_envelope(r, cutoff)
        hi = h.unsqueeze(2).expand(-1, -1, n, -1)
        hj = h.unsqueeze(1).expand(-1, n, -1, -1)
        m = self.phi_e(torch.cat([hi, hj, sq, edge_attr], dim=-1)) * w
        # bounded update: unit-ish direction times tanh gate keeps integration stable
        direction = diff / (r + self.norm_eps)
        gate = torch.tanh(self.phi_x(m)) * self.coord_range
        x = x + (direction * gate * w).sum(2) / norm
        h = h + self.phi_h(torch.cat([h, m.sum(2) / norm], dim=-1))
        return h, x


@VECTOR_FIELDS.register("egnn")
class EGNNField(VectorField):
    """EGNN vector field for particle targets. x: [B, n, d] -> v: [B, n, d] (mean-free).

    hidden, n_layers: width/depth; n_time_freq: Fourier time features; coord_range: bound of
    each pair's coordinate update; n_types/type_dim: atom-type embedding (types from
    target.particle_types); graph: 'full' | 'radius' with `cutoff` (smooth envelope);
    aggregation_norm: divisor of neighbour sums (default n - 1).
    """

    def __init__(self, target, hidden: int = 32, n_layers: int = 3, n_time_freq: int = 4,
                 coord_range: float = 3.0, n_types: int | None = None, type_dim: int = 8,
                 graph: str = "full", cutoff: float | None = None,
                 aggregation_norm: float | None = None):
        super().__init__()
        if target.kind != "particles":
            raise ValueError("egnn needs a particle target")
        check_graph(graph, cutoff)
        types = torch.as_tensor(target.particle_types, dtype=torch.long)
        self.register_buffer("types", types, persistent=False)
        n_types = n_types or int(types.max()) + 1
        self.type_embed = nn.Embedding(n_types, type_dim)
        self.time = FourierTime(n_time_freq)
        self.h_in = nn.Linear(self.time.dim + type_dim, hidden)
        self.layers = nn.ModuleList(
            EGNNLayer(hidden, self.time.dim, coord_range) for _ in range(n_layers)
        )
        n = target.n_particles
        self.cutoff = float(cutoff) if graph == "radius" else None
        self.norm = float(aggregation_norm or max(n - 1, 1))
        self.register_buffer("mask", 1.0 - torch.eye(n), persistent=False)

    def forward(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        B, n, _ = x.shape
        tt = self.time(broadcast_time(t, B, x))  # [B, T]
        types = self.type_embed(self.types).to(x.dtype).unsqueeze(0).expand(B, -1, -1)
        h = self.h_in(torch.cat([tt.unsqueeze(1).expand(-1, n, -1), types], dim=-1))
        edge_attr = tt[:, None, None, :].expand(-1, n, n, -1)
        mask = self.mask.to(x.dtype)
        x0 = x
        for layer in self.layers:
            h, x = layer(h, x, edge_attr, mask, self.cutoff, self.norm)
        return remove_mean(x - x0)
