"""Conditional flow matching (CFM) objectives: regression of the CNF's vector field.

For a coupling (x0, x1) of prior and data samples and t ~ U(0, 1), the linear interpolant
x_t = (1 - t) x0 + t x1 (+ sigma * eps) has conditional velocity u = x1 - x0, and
loss = mean over batch and event dimensions of |v_theta(t, x_t) - u|^2 (Lipman et al. 2023,
Tong et al. 2024). No ODE is solved in training (nfe = 0); the CNF built on the same field gives
exact likelihoods afterwards. Couplings:

- `flow_matching`: x0 independent of x1 (independent CFM).
- `ot_flow_matching`: exact minibatch OT pairing with squared Euclidean cost (POT `ot.emd`).
- `equivariant_ot_flow_matching`: the OT cost of a pair is its distance after aligning x0
  over rotations and permutations of identical particles (`flowsci.flows.orbit_costs`), and
  training uses the aligned x0 (Klein, Kraemer & Noe 2023).
Under DDP (several processes) x0, t and the noise are drawn for the global batch and sliced,
as in one process; the OT couplings are computed within each rank's slice of the batch.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from ..geometry import remove_mean
from ..flows.orbit_costs import OrbitAligner
from .distributed import global_rows
from .objectives import OBJECTIVES


def ot_assignment(cost: torch.Tensor) -> torch.Tensor:
    """Exact OT between two uniform minibatches. cost: [B, B] -> perm [B] (long).

    x0[i] is paired with x1[perm[i]]. Solved by `ot.emd` (network simplex), whose solution for
    uniform square marginals is a permutation matrix; the Hungarian algorithm is the fallback
    if the returned plan is not one (degenerate costs).
    """
    import ot  # imported here: POT pulls in scikit-learn (~3 s), only OT objectives need it

    b = cost.shape[0]
    m = cost.detach().cpu().double().numpy()
    w = np.full(b, 1.0 / b)
    plan = ot.emd(w, w, m, numItermax=max(100_000, 50 * b * b))
    perm = plan.argmax(axis=1)
    if len(np.unique(perm)) != b or not np.allclose(plan.max(axis=1), 1.0 / b):
        perm = linear_sum_assignment(m)[1]
    return torch.as_tensor(perm, dtype=torch.long, device=cost.device)


def squared_cost(x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
    """Pairwise squared Euclidean distances. x0: [B0, *event], x1: [B1, *event] -> [B0, B1]."""
    return torch.cdist(x0.flatten(1), x1.flatten(1)) ** 2


class FlowMatching:
    """Independent CFM with the linear interpolant; loss = MSE per event dimension.

    sigma: std of Gaussian noise added to x_t (0 = deterministic straight paths; for particle
    targets the noise is mean-free). t_min/t_max: range of the uniform time distribution.
    """

    name = "flow_matching"
    needs_vector_field = True

    def __init__(self, target, sigma: float = 0.0, t_min: float = 0.0, t_max: float = 1.0):
        self.target = target
        self.sigma = float(sigma)
        self.t_min, self.t_max = float(t_min), float(t_max)
        self.particles = getattr(target, "kind", None) == "particles"
        if self.sigma < 0 or not 0.0 <= self.t_min < self.t_max <= 1.0:
            raise ValueError(f"{self.name}: need sigma >= 0 and 0 <= t_min < t_max <= 1")

    def couple(self, x0: torch.Tensor, x1: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
        """Pair prior samples x0 with data x1 ([B, *event] each) -> (x0', x1', stats)."""
        return x0, x1, {}

    def _centre(self, x: torch.Tensor) -> torch.Tensor:
        return remove_mean(x) if self.particles else x

    def __call__(self, flow, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """flow: a CNF (uses flow.field, flow.prior); x: data batch [B, *event]."""
        x1 = self._centre(x)
        b = x1.shape[0]
        like = {"dtype": x1.dtype, "device": x1.device}
        # Under DDP the draws are made for the global batch and sliced to this rank
        # (global_rows), so they equal a single-process run's; alone: a plain draw of b.
        x0 = global_rows(lambda n: flow.prior.sample(n), b).to(**like)
        x0 = self._centre(x0)
        with torch.no_grad():
            x0, x1, stats = self.couple(x0, x1)  # under DDP: within this rank's slice
        t = global_rows(lambda n: torch.rand(n, **like), b) * (self.t_max - self.t_min)
        t = t + self.t_min
        tt = t.reshape(b, *([1] * (x1.dim() - 1)))
        xt = (1 - tt) * x0 + tt * x1
        if self.sigma > 0:
            noise = global_rows(lambda n: torch.randn(n, *xt.shape[1:], **like), b)
            xt = xt + self.sigma * self._centre(noise)
        u = x1 - x0
        v = flow.field(t, xt)
        loss = ((v - u) ** 2).mean()
        stats = {"fm_loss": loss.item(), "nfe": 0,
                 "pair_cost": (u * u).flatten(1).sum(-1).mean().item(), **stats}
        return loss, stats


class OTFlowMatching(FlowMatching):
    """CFM with exact minibatch OT coupling (Tong et al. 2024; Pooladian et al. 2023)."""

    name = "ot_flow_matching"

    def couple(self, x0, x1):
        perm = ot_assignment(squared_cost(x0, x1))
        return x0, x1[perm], {}


class EquivariantOTFlowMatching(FlowMatching):
    """Equivariant OT-CFM (Klein et al. 2023) for particle targets.

    Every pair (x0[i], x1[j]) costs its orbit distance min_g |g x0[i] - x1[j]|^2 over rotations
    (proper unless reflections=True) and permutations of identical particles (groups from
    target.symmetry.permutations); OT on these costs picks the pairs and training uses the
    aligned x0. The search (flows.orbit_costs.OrbitAligner): 'auto' is exact for groups with
    at most max_permutations permutations (DW4; molecules without identical atoms) and
    otherwise aligns the `candidates` most promising partners of each sample, from their
    `frame_starts` best principal-axes rotations, n_iter alternations; 'all' aligns every pair
    from the starting rotations `starts` (with starts='identity', n_iter=1: the paper's
    one-pass alignment).
    """

    name = "equivariant_ot_flow_matching"

    def __init__(self, target, sigma: float = 0.0, t_min: float = 0.0, t_max: float = 1.0,
                 n_iter: int = 1, reflections: bool = False, starts: str = "inertia",
                 search: str = "auto", candidates: int = 16, frame_starts: int = 1,
                 max_permutations: int = 120):
        super().__init__(target, sigma, t_min, t_max)
        if not self.particles:
            raise ValueError(f"{self.name} needs a particle target")
        self.aligner = OrbitAligner(target.symmetry.permutations, target.n_particles,
                                    reflections, search, n_iter, starts, candidates,
                                    frame_starts, max_permutations)

    def couple(self, x0, x1):
        costs = self.aligner.costs(x0, x1)
        j = ot_assignment(costs.cost)
        x0a, left_out = self.aligner.align_pairs(x0, x1, costs, j)
        naive = ((x0 - x1[j]) ** 2).flatten(1).sum(-1).mean().item()
        return remove_mean(x0a), x1[j], {"unaligned_cost": naive, "left_out_pairs": left_out}


OBJECTIVES.register("flow_matching")(FlowMatching)
OBJECTIVES.register("ot_flow_matching")(OTFlowMatching)
OBJECTIVES.register("equivariant_ot_flow_matching")(EquivariantOTFlowMatching)
