"""The training-objective contract and registry.

An objective is built once per run as OBJECTIVES.build(name, params, target=target) (params
from config `training.objective.params`; nothing else is passed) and called every step:

    objective(flow, x) -> (loss: scalar Tensor with grad, stats: dict[str, float])

flow: the run's `Flow` (flows/base.py), on the batch's device and dtype; x: a data batch
[B, *event_shape] (centred for particles). Stats are logged per step ('nll', 'nfe', ...).
How an objective uses the flow is its own business: the likelihood objective calls
`flow.training_log_prob` (any Flow); the flow-matching objectives regress `flow.field` and
draw from `flow.prior`, so they declare `needs_vector_field = True` and the train stage
refuses them for flows without a vector field (e.g. realnvp) before training starts.
"""

from __future__ import annotations

from typing import Protocol

import torch

from ..flows.base import Flow
from ..registry import Registry


class Objective(Protocol):
    needs_vector_field: bool

    def __call__(self, flow: Flow, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]: ...


OBJECTIVES: Registry[Objective] = Registry("training objective")
