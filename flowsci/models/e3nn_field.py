"""Tensor-product message-passing vector field built from e3nn (NequIP-style).

Per edge: spherical harmonics Y(r_ij / |r_ij|) up to `lmax`, a Gaussian radial basis of |r_ij|
and the time features feed an MLP giving the per-edge weights of a 'uvu' tensor product
h_j (x) Y -> messages; messages are summed over neighbours, mixed by o3.Linear with a linear
self-connection, and passed through a gated nonlinearity (SiLU/tanh on scalars, sigmoid
gates on l > 0). The last block maps to `1x1o` per particle; the output is made mean-free.

symmetry='O3': parity-consistent network, equivariant to rotations and reflections.
symmetry='SO3': the input scalars are also fed as pseudo-scalars (0o), which breaks parity on
purpose, so the field may be chiral (rotations only); give the hidden irreps odd-parity
entries such as 1e / 0o to use it. Particles must live in 3D.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from ..geometry import remove_mean
from .base import VECTOR_FIELDS, VectorField, broadcast_time
from .embeddings import FourierTime, mlp
from .graph import check_graph, edge_index, smooth_envelope

if TYPE_CHECKING:  # e3nn is imported lazily: it pulls in torch._dynamo (seconds at start-up)
    from e3nn import o3


def uvu_tensor_product(irreps_in: o3.Irreps, irreps_sh: o3.Irreps,
                       keep: o3.Irreps) -> o3.TensorProduct:
    """Channel-wise ('uvu') TP with external per-edge weights, outputs restricted to `keep`."""
    from e3nn import o3

    mid, instructions = [], []
    for i, (mul, ir_in) in enumerate(irreps_in):
        for j, (_, ir_sh) in enumerate(irreps_sh):
            for ir_out in ir_in * ir_sh:
                if ir_out in keep:
                    instructions.append((i, j, len(mid), "uvu", True))
                    mid.append((mul, ir_out))
    mid_irreps, perm, _ = o3.Irreps(mid).sort()
    instructions = [(a, b, perm[c], m, w) for a, b, c, m, w in instructions]
    return o3.TensorProduct(irreps_in, irreps_sh, mid_irreps, instructions,
                            shared_weights=False, internal_weights=False,
                            _optimize_einsums=False)


class GateAct(nn.Module):
    """Gated nonlinearity on [scalars | gates (0e) | gated (l > 0)] -> [scalars | gated].

    SiLU on even scalars, tanh on odd (0o) ones (parity-preserving), sigmoid gates scale the
    l > 0 irreps. (e3nn.nn.Gate does the same with moment-normalised activations, whose
    Monte-Carlo normalisation costs ~0.1 s per instance at construction.)
    """

    def __init__(self, scalars: "o3.Irreps", gated: "o3.Irreps"):
        from e3nn import o3

        super().__init__()
        gates = o3.Irreps(f"{gated.num_irreps}x0e") if gated.num_irreps else o3.Irreps("")
        self.irreps_in = scalars + gates + gated
        self.irreps_out = scalars + gated
        self.split = [scalars.dim, gates.dim, gated.dim]
        odd = [ir.p == -1 for mul, ir in scalars for _ in range(mul)]
        self.register_buffer("odd", torch.tensor(odd, dtype=torch.bool), persistent=False)
        irs = [ir for mul, ir in gated for _ in range(mul)]  # one gate per gated irrep
        index = [k for k, ir in enumerate(irs) for _ in range(ir.dim)]
        self.register_buffer("gate_index", torch.tensor(index, dtype=torch.long),
                             persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s, g, v = x.split(self.split, dim=-1)
        s = torch.where(self.odd, torch.tanh(s), torch.nn.functional.silu(s))
        return torch.cat([s, v * torch.sigmoid(g)[..., self.gate_index]], dim=-1)


class Interaction(nn.Module):
    """One message-passing block: irreps_in -> irreps_out (gated unless `gate=False`)."""

    def __init__(self, irreps_in: o3.Irreps, irreps_sh: o3.Irreps, irreps_out: o3.Irreps,
                 edge_feat: int, radial_hidden: int, gate: bool = True):
        from e3nn import o3

        super().__init__()
        self.irreps_in = irreps_in
        if gate:
            scalars = o3.Irreps([(m, ir) for m, ir in irreps_out if ir.l == 0])
            gated = o3.Irreps([(m, ir) for m, ir in irreps_out if ir.l > 0])
            self.act = GateAct(scalars, gated)
            pre = self.act.irreps_in
        else:
            self.act, pre = nn.Identity(), irreps_out
        keep = o3.Irreps([(1, ir) for _, ir in pre])
        self.tp = uvu_tensor_product(irreps_in, irreps_sh, keep)
        self.radial = mlp(edge_feat, radial_hidden, self.tp.weight_numel, 2)
        self.lin = o3.Linear(self.tp.irreps_out.simplify(), pre, _optimize_einsums=False)
        self.self_lin = o3.Linear(irreps_in, pre, _optimize_einsums=False)
        self.irreps_out = self.act.irreps_out if gate else irreps_out

    def forward(self, h: torch.Tensor, sh: torch.Tensor, edge_feat: torch.Tensor,
                env: torch.Tensor | None, senders: torch.Tensor, norm: float) -> torch.Tensor:
        """h: [B, n, in], sh: [B, E, sh], edge_feat: [B, E, F], env: [B, E, 1] or None."""
        B, n, _ = h.shape
        msg = self.tp(h[:, senders], sh, self.radial(edge_feat))  # [B, E, mid]
        if env is not None:
            msg = msg * env
        agg = msg.reshape(B, n, n - 1, -1).sum(2) / norm  # edges grouped by receiver
        return self.act(self.lin(agg) + self.self_lin(h))


@VECTOR_FIELDS.register("e3nn")
class E3NNField(VectorField):
    """e3nn tensor-product field for 3D particles. x: [B, n, 3] -> v: [B, n, 3] (mean-free).

    irreps_hidden: hidden node irreps (string); lmax: spherical-harmonics degree; n_layers:
    hidden blocks (plus one output block); n_basis, r_max: Gaussian radial basis on [0, r_max];
    radial_hidden: width of the radial MLP; symmetry: 'O3' | 'SO3'; graph: 'full' | 'radius'
    (smooth envelope of radius `cutoff`); aggregation_norm: neighbour-sum divisor (n - 1).
    """

    def __init__(self, target, irreps_hidden: str = "8x0e + 4x1o + 4x1e", lmax: int = 2,
                 n_layers: int = 2, n_basis: int = 8, r_max: float = 5.0,
                 radial_hidden: int = 16, n_time_freq: int = 4, type_dim: int = 8,
                 n_types: int | None = None, symmetry: str = "O3", graph: str = "full",
                 cutoff: float | None = None, aggregation_norm: float | None = None):
        from e3nn import o3

        super().__init__()
        if target.kind != "particles":
            raise ValueError("e3nn needs a particle target")
        if target.dim != 3:
            raise ValueError(f"e3nn field needs particles in 3D, got dim={target.dim}; "
                             "use 'egnn' for other dimensions")
        if symmetry not in ("O3", "SO3"):
            raise ValueError(f"symmetry must be 'O3' or 'SO3', got {symmetry!r}")
        check_graph(graph, cutoff)
        n = target.n_particles
        if n < 2:
            raise ValueError("e3nn field needs at least 2 particles")
        types = torch.as_tensor(target.particle_types, dtype=torch.long)
        self.register_buffer("types", types, persistent=False)
        self.type_embed = nn.Embedding(n_types or int(types.max()) + 1, type_dim)
        self.time = FourierTime(n_time_freq)
        hidden = o3.Irreps(irreps_hidden).simplify()
        n_scalar = max(sum(m for m, ir in hidden if ir.l == 0), 1)
        self.embed = nn.Linear(self.time.dim + type_dim, n_scalar)
        self.chiral = symmetry == "SO3"
        irreps = o3.Irreps(f"{n_scalar}x0e" + (f" + {n_scalar}x0o" if self.chiral else ""))
        self.irreps_sh = o3.Irreps.spherical_harmonics(lmax)
        self.sh = o3.SphericalHarmonics(self.irreps_sh, normalize=True, normalization="component")
        self.n_basis, self.r_max = n_basis, float(r_max)
        edge_feat = n_basis + self.time.dim
        blocks = []
        for _ in range(n_layers):
            blocks.append(Interaction(irreps, self.irreps_sh, hidden, edge_feat, radial_hidden))
            irreps = blocks[-1].irreps_out
        blocks.append(Interaction(irreps, self.irreps_sh, o3.Irreps("1x1o"), edge_feat,
                                  radial_hidden, gate=False))
        self.blocks = nn.ModuleList(blocks)
        recv, send = edge_index(n)
        self.register_buffer("receivers", recv, persistent=False)
        self.register_buffer("senders", send, persistent=False)
        self.cutoff = float(cutoff) if graph == "radius" else None
        self.norm = float(aggregation_norm or (n - 1))

    def forward(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        from e3nn.math import soft_one_hot_linspace

        B, n, _ = x.shape
        tt = self.time(broadcast_time(t, B, x))  # [B, T]
        types = self.type_embed(self.types).to(x.dtype).unsqueeze(0).expand(B, -1, -1)
        s = self.embed(torch.cat([tt.unsqueeze(1).expand(-1, n, -1), types], dim=-1))
        h = torch.cat([s, s], dim=-1) if self.chiral else s  # [B, n, irreps.dim]
        vec = x[:, self.receivers] - x[:, self.senders]  # [B, E, 3]
        r = torch.sqrt((vec * vec).sum(-1) + 1e-12)
        sh = self.sh(vec)
        basis = soft_one_hot_linspace(r, 0.0, self.r_max, self.n_basis, "gaussian", False)
        edge_feat = torch.cat([basis * self.n_basis**0.5,
                               tt.unsqueeze(1).expand(-1, r.shape[1], -1)], dim=-1)
        env = None if self.cutoff is None else smooth_envelope(r, self.cutoff).unsqueeze(-1)
        for block in self.blocks:
            h = block(h, sh, edge_feat, env, self.senders, self.norm)
        return remove_mean(h)
