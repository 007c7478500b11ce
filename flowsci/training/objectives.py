"""The training-objective contract and registry.

An objective is built as OBJECTIVES.build(name, params, target=target) and called as
objective(cnf, x) -> (loss: scalar Tensor, stats: dict[str, float]) on a data batch
x: [B, *event_shape] (centred for particles). Stats are logged per step (e.g. 'nll', 'nfe').
"""

from __future__ import annotations

from typing import Protocol

import torch

from ..flows.cnf import CNF
from ..registry import Registry


class Objective(Protocol):
    def __call__(self, cnf: CNF, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]: ...


OBJECTIVES: Registry[Objective] = Registry("training objective")
