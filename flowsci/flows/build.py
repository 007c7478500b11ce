"""Build the flow of a run from its config: a CNF around a registered vector field, or a
complete flow model registered in FLOW_MODELS (e.g. the RealNVP coupling baseline)."""

from __future__ import annotations

from ..models import VECTOR_FIELDS
from . import coupling  # noqa: F401  (registers the built-in flow models)
from .base import FLOW_MODELS, Flow
from .cnf import CNF, SolverConfig
from .priors import prior_for


def solver_from(spec: dict) -> SolverConfig:
    """SolverConfig from a config `flow` / `training.solver` section (other keys ignored)."""
    return SolverConfig(**{k: v for k, v in spec.items()
                           if k in SolverConfig.__dataclass_fields__})


def build_flow(run_cfg: dict, target, run: str = "<run>") -> Flow:
    """The flow of config section runs.<run> for `target` (on CPU, float32)."""
    prior = prior_for(target, run_cfg.get("prior", {}).get("scale", 1.0))
    model = run_cfg["model"]
    where = f"runs.{run}.model"
    if model["name"] in FLOW_MODELS:
        return FLOW_MODELS.build(model["name"], model.get("params", {}), config_key=where,
                                 target=target, prior=prior)
    field = VECTOR_FIELDS.build(model["name"], model.get("params", {}), config_key=where,
                                target=target)
    flow_cfg = run_cfg.get("flow", {})
    train_solver = run_cfg.get("training", {}).get("solver")
    return CNF(field, prior, solver_from(flow_cfg),
               solver_from(train_solver) if train_solver is not None else None,
               exact_trace=flow_cfg.get("exact_trace", "auto"),
               trace_chunk=flow_cfg.get("trace_chunk"))
