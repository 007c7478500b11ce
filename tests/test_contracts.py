"""The package's explicit contracts (docs/architecture.md): import layering, the Flow and
objective contracts, the vector-field divergence hook, exact-trace strategies, the model file,
one list of solver names, and one error policy."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import flowsci.models  # noqa: F401  (register the fields)
from flowsci.errors import ConfigError, DataError, ResourceError
from flowsci.flows import CNF, FLOW_MODELS, Flow, SolverConfig, prior_for
from flowsci.flows.build import build_flow
from flowsci.flows.divergence import (TRACE_METHODS, ExactTrace, jvp_vmap_divergence,
                                      vjp_batched_divergence, vjp_loop_divergence)
from flowsci.model_file import ModelFile, check_matches, load_model_file, save_model_file
from flowsci.models import VECTOR_FIELDS
from flowsci.systems import LatticeTarget, build_target
from flowsci.testing import assert_divergence_exact, autograd_trace

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "flowsci"
D64 = torch.float64

# Lower layers never import higher ones (same layer: allowed, e.g. data.generate -> data).
# The package itself (flowsci/__init__.py) is the public facade on top: it re-exports
# flowsci.api (lazily) and the version, so no module below imports it.
LAYERS = [
    {"errors", "io", "locks", "geometry", "autocorr", "progress", "version"},
    {"registry", "device", "paths", "config", "testing_base", "atom_selection"},
    {"systems"},
    {"data"},  # data generators and readers use targets; targets never read data files
    {"models"},
    {"flows"},
    {"model_file", "training", "sampling", "chirality"},
    {"reweighting"},
    {"refine"},
    {"analysis"},
    {"stages"},
    {"cli", "testing", "api"},
    {"__init__"},
]
LAYER = {name: i for i, names in enumerate(LAYERS) for name in names}


def _modules() -> dict[str, Path]:
    return {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p
            for p in PKG.rglob("*.py")}


def _imports(mod: str, path: Path) -> set[str]:
    """flowsci modules imported anywhere in `path` (also inside functions)."""
    pkg = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [f"{target}.{a.name}" for a in node.names]
            out |= {n if n in _modules() else target for n in names}
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
    return {m for m in out if m.startswith("flowsci")}


def _layer(mod: str) -> int:
    part = mod.split(".")[1] if "." in mod else "__init__"
    return LAYER[part]


def test_every_import_points_down_and_there_is_no_cycle():
    mods = _modules()
    graph = {m: {i for i in _imports(m, p) if i in mods and i != m} for m, p in mods.items()}
    upward = [(m, i) for m, deps in graph.items() for i in deps if _layer(i) > _layer(m)]
    assert not upward, f"upward imports: {upward}"
    # no cycle among modules (Tarjan-free check: depth-first search with colours)
    state: dict[str, int] = {}

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for d in graph[m]:
            if state.get(d) == 1:
                raise AssertionError(f"import cycle: {' -> '.join(stack + [m, d])}")
            if d not in state:
                visit(d, stack + [m])
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m, [])


def test_no_cycle_between_packages():
    """Packages (flowsci.data, flowsci.systems, ...) form no cycle either: e.g. atom selection
    lives in a leaf below both data and systems."""
    mods = _modules()
    pkg = lambda m: ".".join(m.split(".")[:2])  # noqa: E731
    graph: dict[str, set[str]] = {}
    for m, p in mods.items():
        graph.setdefault(pkg(m), set()).update(pkg(i) for i in _imports(m, p)
                                               if i in mods and pkg(i) != pkg(m))
    for a, deps in graph.items():
        for b in deps:
            assert a not in graph.get(b, set()), f"package cycle: {a} <-> {b}"


def test_every_module_imports_on_its_own():
    mods = sorted(_modules())
    code = ("import importlib, sys\nbad = []\nfor m in sys.argv[1:]:\n"
            "    for k in [k for k in sys.modules if k.startswith('flowsci')]: del sys.modules[k]\n"
            "    try: importlib.import_module(m)\n"
            "    except Exception as e: bad.append(f'{m}: {e!r}')\nprint(bad)")
    r = subprocess.run([sys.executable, "-c", code, *mods], capture_output=True, text=True,
                       timeout=300)
    assert r.stdout.strip() == "[]", r.stdout + r.stderr


def test_schema_solver_names_are_torchdiffeq_solvers():
    from torchdiffeq._impl.odeint import SOLVERS

    schema = yaml.safe_load((ROOT / "workflow/schemas/config.schema.yaml").read_text())
    solver = schema["$defs"]["solver"]["properties"]
    assert set(solver["method"]["enum"]) <= set(SOLVERS)
    assert set(solver["exact_trace"]["enum"]) == {"auto", *TRACE_METHODS}
    with pytest.raises(ValueError, match="unknown ODE solver 'rk5'"):
        SolverConfig(method="rk5")


# ---------------------------------------------------------------- Flow and objective contracts

def _flows():
    dw4 = build_target({"name": "dw4"})
    lat = LatticeTarget(shape=(4, 4))
    cnf = build_flow({"model": {"name": "egnn", "params": {"hidden": 8, "n_layers": 1}},
                      "flow": {"method": "dopri5", "rtol": 1e-9, "atol": 1e-9}}, dw4)
    nvp = build_flow({"model": {"name": "realnvp", "params": {"n_layers": 2, "hidden": 4}}}, lat)
    return [(cnf, dw4), (nvp, lat)]


@pytest.mark.parametrize("case", [0, 1], ids=["cnf", "realnvp"])
def test_flow_contract(case):
    flow, target = _flows()[case]
    flow = flow.double()
    assert isinstance(flow, Flow)
    x, log_q = flow.sample(5, generator=torch.Generator().manual_seed(0))
    assert x.shape == (5, *target.event_shape) and log_q.shape == (5,)
    assert not x.requires_grad and not log_q.requires_grad
    torch.testing.assert_close(flow.log_prob(x), log_q, atol=1e-4, rtol=0)
    assert flow.sample(2, with_log_prob=False).shape == (2, *target.event_shape)
    assert isinstance(flow.nfe, int) and isinstance(flow.exact_method, str)
    out = flow.training_log_prob(x)
    assert out.log_q.shape == (5,) and out.log_q.requires_grad
    # push_forward is the sampling map, with the graph to the parameters
    z = flow.prior.sample(3, generator=torch.Generator().manual_seed(1))
    pushed = flow.push_forward(z)
    assert pushed.requires_grad
    torch.testing.assert_close(pushed.detach(), flow.sample(3, with_log_prob=False, z=z),
                               atol=1e-3, rtol=0)  # the train solver may be coarser
    # pull_back inverts it (no graph): where the forward-KL path gradient starts
    back = flow.pull_back(pushed.detach())
    assert not back.requires_grad
    torch.testing.assert_close(back, z, atol=1e-3, rtol=0)


def test_cnf_solves_share_no_state():
    """A Hutchinson training solve between two exact solves leaves them identical."""
    flow, _ = _flows()[0]
    flow = flow.double()
    x = prior_for(build_target({"name": "dw4"})).double().sample(4)
    first = flow.log_prob(x)
    flow.log_prob(x, divergence="hutchinson", train=True).sum().backward()
    torch.testing.assert_close(flow.log_prob(x), first, atol=0, rtol=0)
    assert not hasattr(flow, "dynamics")  # no dynamics object outlives a solve


def test_objectives_need_a_vector_field_refused_before_training(tmp_path):
    from flowsci.config import validate_config
    from flowsci.stages.train import train

    cfg = validate_config({
        "results_dir": str(tmp_path), "device": "cpu",
        "systems": {"p": {"target": {"name": "phi4", "params": {"shape": [4, 4]}},
                          "data": {"source": "generate", "generator": {"name": "hmc"}}}},
        "runs": {"r": {"system": "p", "model": {"name": "realnvp"},
                       "training": {"objective": {"name": "flow_matching"}}}}})
    with pytest.raises(ConfigError, match="runs.r.training.objective: 'flow_matching' trains a "
                                          "vector field"):
        train(cfg, "r", progress=False)


# ---------------------------------------------------------------- vector fields and traces

def _perturbed(field):
    with torch.no_grad():
        for p in field.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return field


FIELD_CASES = {  # a small configuration of every registered field
    "egnn": ({"hidden": 8, "n_layers": 2}, {"name": "dw4"}),
    "e3nn": ({"irreps_hidden": "4x0e + 2x1o", "n_layers": 1}, {"name": "lj", "params": {"n_particles": 4}}),
    "lattice_conv": ({"hidden": 4, "n_layers": 2}, {"name": "phi4", "params": {"shape": [4, 4]}}),
    "lattice_conv_gerdes": ({"arch": "gerdes"}, {"name": "phi4", "params": {"shape": [4, 4]}}),
}


def _field(case: str):
    params, target_spec = FIELD_CASES.get(case, ({}, {"name": "lj13"}))
    target = build_target(target_spec)
    name = "lattice_conv" if case.startswith("lattice_conv") else case
    torch.manual_seed(0)
    return _perturbed(VECTOR_FIELDS.build(name, params, target=target).double()), target


@pytest.mark.parametrize("case", sorted(set(FIELD_CASES) | set(VECTOR_FIELDS.names())))
def test_exact_trace_strategies_equal_the_autograd_trace(case):
    """Every autograd strategy (and a declared closed form) equals the plain loop to 1e-8."""
    field, target = _field(case)
    x = prior_for(target).double().sample(3) * 1.3
    t = torch.tensor(0.4, dtype=D64)
    ref = autograd_trace(field, t, x)
    assert ref.abs().max() > 1e-3
    methods = [m for m in TRACE_METHODS if m != "analytic" or field.analytic_divergence]
    for method in methods:
        for chunk in (None, 5):
            xr = x.clone().requires_grad_(True)
            f, div = ExactTrace(method, chunk)(field, t, xr, create_graph=False)
            torch.testing.assert_close(div, ref, rtol=1e-8, atol=1e-10, msg=f"{method} {chunk}")
            torch.testing.assert_close(f, field(t, x), rtol=1e-10, atol=1e-12)
    if field.analytic_divergence:
        assert_divergence_exact(field, target, x)


def test_trace_strategy_is_chosen_once_and_oom_gets_advice(monkeypatch):
    field, target = _field("egnn")
    x = prior_for(target).double().sample(2).requires_grad_(True)
    t = torch.tensor(0.3, dtype=D64)
    trace = ExactTrace()
    calls = []

    def failing(*a, **k):
        calls.append(1)
        raise RuntimeError("vmap: no batching rule for this op")

    monkeypatch.setattr("flowsci.flows.divergence.vjp_batched_divergence", failing)
    f, div = trace(field, t, x, False)
    torch.testing.assert_close(div, autograd_trace(field, t, x), rtol=1e-10, atol=1e-12)
    trace(field, t, x, False)
    assert trace.method in ("vjp_loop", "jvp_vmap") and len(calls) == 1  # chosen once

    def oom(*a, **k):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr("flowsci.flows.divergence.vjp_loop_divergence", oom)
    monkeypatch.setattr("flowsci.flows.divergence.jvp_vmap_divergence", oom)
    with pytest.raises(ResourceError, match="lower sampling.batch_size"):
        trace(field, t, x, False)
    with pytest.raises(ResourceError, match="lower sampling.batch_size"):
        ExactTrace()(field, t, x, False)  # also when every strategy runs out while choosing


def test_out_of_memory_halves_the_trace_chunk_and_keeps_it(monkeypatch):
    """A chunked strategy that runs out of memory retries with half the basis vectors per pass
    (same exact result) and keeps the smaller chunk for later calls."""
    from flowsci.flows import divergence

    field, target = _field("egnn")
    x = prior_for(target).double().sample(2).requires_grad_(True)
    t = torch.tensor(0.3, dtype=D64)
    real, chunks = divergence.vjp_batched_divergence, []

    def limited(f, x, create_graph=False, chunk=None):
        chunks.append(chunk)
        if chunk is None or chunk > 2:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(f, x, create_graph, chunk)

    monkeypatch.setattr(divergence, "vjp_batched_divergence", limited)
    trace = ExactTrace("vjp_batched")
    f, div = trace(field, t, x, False)
    torch.testing.assert_close(div, autograd_trace(field, t, x), rtol=1e-10, atol=1e-12)
    D, halved = x[0].numel(), []
    while not halved or halved[-1] > 2:
        halved.append((halved[-1] if halved else D) // 2)
    assert chunks == [None] + halved and trace.chunk == halved[-1] <= 2
    trace(field, t, x, False)
    assert chunks[-1] == trace.chunk and len(chunks) == len(halved) + 2  # no new OOM round


def test_jvp_trace_supports_training_through_the_divergence():
    field, target = _field("egnn")
    x = prior_for(target).double().sample(3)
    t = torch.tensor(0.6, dtype=D64)
    _, div = jvp_vmap_divergence(field, t, x)
    g1 = torch.autograd.grad(div.sum(), list(field.parameters()), allow_unused=True)
    xr = x.clone().requires_grad_(True)
    div2 = vjp_loop_divergence(field(t, xr), xr, create_graph=True)
    g2 = torch.autograd.grad(div2.sum(), list(field.parameters()), allow_unused=True)
    for a, b in zip(g1, g2):
        if a is None or b is None:
            assert a is None or not a.abs().any()
            continue
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-10)


# ---------------------------------------------------------------- model file

def _cfg(tmp_path, **over):
    from flowsci.config import validate_config

    run = {"system": "dw4", "model": {"name": "egnn", "params": {"hidden": 8, "n_layers": 1}}}
    run.update(over)
    return validate_config({"results_dir": str(tmp_path), "device": "cpu",
                            "systems": {"dw4": {"target": {"name": "dw4"},
                                                "data": {"source": "generate",
                                                         "generator": {"name": "mcmc"}}}},
                            "runs": {"r": run}})


def test_model_file_round_trip_and_refusals(tmp_path):
    cfg = _cfg(tmp_path)
    flow = build_flow(cfg["runs"]["r"], build_target({"name": "dw4"}))
    path = tmp_path / "model.pt"
    save_model_file(path, ModelFile.for_run(cfg, "r", flow.state_dict(), step=7, test_nll=1.5))
    m = load_model_file(path)
    assert m.step == 7 and m.test_nll == 1.5 and json.loads(m.run_config)["system"] == "dw4"
    assert set(m.state_dict) == set(flow.state_dict())
    check_matches(m, path, cfg, "r")  # same config: accepted
    other = _cfg(tmp_path, prior={"scale": 2.0})
    with pytest.raises(DataError, match=r"model.pt: trained with runs.r.prior = \{\"scale\": 1.0\}"
                                        r", the config now has \{\"scale\": 2.0\}"):
        check_matches(m, path, other, "r")
    # an old or foreign format is refused with the version, never unpickled
    torch.save({"state_dict": {}, "version": 1}, path)
    with pytest.raises(DataError, match="format version 1"):
        load_model_file(path)
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"version": 2, "x": Evil()}, path)
    with pytest.raises(DataError, match="cannot read model file"):
        load_model_file(path)
    assert not marker.exists()
