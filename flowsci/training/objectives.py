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

Under DDP (torchrun, see distributed.py) `x` is this rank's slice of the global batch and the
loss must be a mean over it (DDP averages the ranks' gradients). Every rank starts from the
same torch RNG state, so an objective that draws per-sample random numbers (prior samples,
times, noise) must draw them with `distributed.global_rows(draw, len(x))` (for the global
batch, then sliced): otherwise all ranks draw the same rows and the global batch holds N
copies of them.
"""

from __future__ import annotations

from typing import Protocol

import torch

from ..flows.base import Flow
from ..registry import Registry


class Objective(Protocol):
    needs_vector_field: bool
    # optional: names of per-step stats written as extra train_log.csv columns
    # log_stats: tuple[str, ...]

    def __call__(self, flow: Flow, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]: ...


OBJECTIVES: Registry[Objective] = Registry("training objective")
