"""A tiny DW4 flow, objective and data batch shared by the training tests."""

import torch

from flowsci.flows.build import build_flow
from flowsci.systems import build_target
from flowsci.training import OBJECTIVES


def tiny_dw4(train_solver: str = "midpoint", n_steps: int = 3, divergence: str = "hutchinson",
             n: int = 64):
    """(flow, likelihood objective, centred data [n, 4, 2]), all seeded: equal on every call."""
    torch.manual_seed(0)
    target = build_target({"name": "dw4"})
    flow = build_flow({"model": {"name": "egnn", "params": {"hidden": 8, "n_layers": 1}},
                       "flow": {"method": "rk4", "n_steps": 4},
                       "training": {"solver": {"method": train_solver, "n_steps": n_steps}}},
                      target)
    obj = OBJECTIVES.build("likelihood", {"divergence": divergence}, target=target)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 4, 2, generator=g) * 2
    return flow, obj, x - x.mean(1, keepdim=True)
