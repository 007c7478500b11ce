"""Graph helpers shared by the particle fields: smooth cutoff envelopes and dense edge lists.

All graphs are dense (every ordered pair i != j is an edge); a radius graph multiplies each
edge by a smooth envelope w(r) that is exactly zero beyond the cutoff, so the field stays C-inf
in x (no discontinuity when a particle crosses the cutoff, unlike a hard radius/k-NN graph).
"""

from __future__ import annotations

import torch


def smooth_envelope(r: torch.Tensor, cutoff: float) -> torch.Tensor:
    """C-infinity bump w(r) = exp(1 - 1/(1 - (r/rc)^2)) for r < rc, 0 beyond; w(0) = 1.

    All derivatives vanish at r = rc. The untaken branch is made finite before `where`, so
    gradients (and second derivatives) are NaN-free everywhere.
    """
    s2 = (r / cutoff) ** 2
    inside = s2 < 1.0
    s2_safe = torch.where(inside, s2, torch.zeros_like(s2))
    w = torch.exp(1.0 - 1.0 / (1.0 - s2_safe))
    return torch.where(inside, w, torch.zeros_like(w))


def edge_index(n: int, device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Senders/receivers of the complete directed graph without self-loops: 2 x [n(n-1)]."""
    i, j = torch.meshgrid(torch.arange(n, device=device), torch.arange(n, device=device),
                          indexing="ij")
    keep = i != j
    return i[keep], j[keep]


def check_graph(graph: str, cutoff: float | None) -> None:
    """Validate the `graph`/`cutoff` config pair of a particle field."""
    if graph not in ("full", "radius"):
        raise ValueError(f"graph must be 'full' or 'radius', got {graph!r}")
    if graph == "radius" and (cutoff is None or cutoff <= 0):
        raise ValueError("graph='radius' needs a positive cutoff")
