"""Build the flow of a run from its config: a CNF around a registered vector field, or a
complete flow model registered in FLOW_MODELS (e.g. a coupling-flow baseline)."""

from __future__ import annotations

from torch import nn

from ..models.base import VECTOR_FIELDS
from ..registry import Registry
from .cnf import CNF, SolverConfig
from .priors import prior_for

# Complete flows (not vector fields): factory(target=..., prior=..., **params) -> module with
# log_prob(x, **kw) -> [B] and sample(n, with_log_prob=True, generator=None, **kw).
FLOW_MODELS: Registry[nn.Module] = Registry("flow model")


def solver_from(spec: dict) -> SolverConfig:
    return SolverConfig(**{k: v for k, v in spec.items()
                           if k in SolverConfig.__dataclass_fields__})


def build_flow(run_cfg: dict, target) -> nn.Module:
    """The flow of config section runs.<run> for `target` (on CPU, float32)."""
    import flowsci.flows.coupling, flowsci.models  # noqa: F401,E401  (register built-ins)

    prior = prior_for(target, run_cfg.get("prior", {}).get("scale", 1.0))
    model = run_cfg["model"]
    if model["name"] in FLOW_MODELS:
        return FLOW_MODELS.build(model["name"], model.get("params", {}), target=target,
                                 prior=prior)
    field = VECTOR_FIELDS.build(model["name"], model.get("params", {}), target=target)
    return CNF(field, prior, solver_from(run_cfg.get("flow", {})))
