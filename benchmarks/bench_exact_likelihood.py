"""Exact-log q sampling and training throughput of flowsci against peers, in one run.

Per system and field (same weights, float32, batch B, rk4 with --n-steps steps for the fixed-
step rows so that every row does the same number of function evaluations):
  nodiv        flowsci sampling without log q (the floor)
  flowsci      flowsci exact-log q sampling, strategy 'auto' (what `flowsci sample` uses)
  <strategy>   each exact-trace strategy of flowsci.flows.divergence
  ffjord       peer: plain torchdiffeq odeint on the augmented state [x, log p] with the exact
               trace by a loop of autograd calls over the dimensions (FFJORD / E-NF style),
               written here independently of flowsci
  zuko         peer: zuko's FreeFormJacobianTransform(exact=True) (its own adaptive solver:
               compared with flowsci's dopri5 at the same atol/rtol, --tol), if zuko is installed
and training steps/s: maximum likelihood (odeint_adjoint + Hutchinson, midpoint 8 steps) and
flow matching (flowsci vs TorchCFM's ConditionalFlowMatcher, if installed).
Peers are installed only in the benchmark environment: `pip install "torch==2.13.0" -e ".[bench]"`.

    python benchmarks/bench_exact_likelihood.py --out benchmarks/results/exact_likelihood
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import time
from datetime import date
from pathlib import Path

import torch
from torchdiffeq import odeint

import flowsci.models  # noqa: F401
from flowsci.flows import CNF, SolverConfig, prior_for
from flowsci.flows.divergence import TRACE_METHODS
from flowsci.models import VECTOR_FIELDS
from flowsci.systems import ParticleTarget, build_target
from flowsci.training.likelihood import MaximumLikelihood
from flowsci.training.matching import FlowMatching

SYSTEMS = {  # name -> (target spec or target, batch)
    "dw4": ({"name": "dw4"}, 256),
    "lj13": ({"name": "lj13"}, 64),
    "lj55": ({"name": "lj55"}, 16),
    "ala2": (ParticleTarget(n_particles=22, dim=3), 32),  # 22 atoms; the field sees positions
    "phi4_L16": ({"name": "phi4", "params": {"shape": [16, 16]}}, 64),
    "phi4_L32": ({"name": "phi4", "params": {"shape": [32, 32]}}, 16),
    "phi4_L64": ({"name": "phi4", "params": {"shape": [64, 64]}}, 4),
}
FIELDS = {"particles": [("egnn", {})], "lattice": [("lattice_conv", {}),
                                                   ("gerdes", {"arch": "gerdes"})]}


def _fields(kind: str) -> list[tuple[str, str, dict]]:
    """(label, registry name, params): the built-ins plus any particle field with a closed form."""
    base = FIELDS[kind]
    out = [(lab, "lattice_conv" if lab == "gerdes" else lab, p) for lab, p in base]
    if kind == "particles":
        for name in VECTOR_FIELDS.names():
            factory = VECTOR_FIELDS.get(name)
            if name not in ("egnn", "e3nn") and getattr(factory, "analytic_divergence", False) is True:
                out.append((name, name, {}))
    return out


CLOCK = {"wall": time.perf_counter, "cpu": time.process_time}
clock = time.perf_counter  # set in main (--clock)


def best_time(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        _sync()
        t0 = clock()
        fn()
        _sync()
        best = min(best, clock() - t0)
    return best


def _sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def ffjord_peer(field, prior, z: torch.Tensor, solver: SolverConfig) -> torch.Tensor:
    """Independent FFJORD-style exact log q of samples from z (loop trace)."""
    shape = z.shape

    def dyn(t, state):
        x = state[0]
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            f = field(t, x).reshape(shape[0], -1)
            div = torch.zeros(shape[0], device=z.device, dtype=z.dtype)
            for k in range(f.shape[1]):
                div = div + torch.autograd.grad(f[:, k].sum(), x, retain_graph=True)[0].reshape(
                    shape[0], -1)[:, k]
        return f.reshape(shape).detach(), -div.detach()

    t = torch.tensor([0.0, 1.0])
    x, lp = odeint(dyn, (z, prior.log_prob(z)), t, **solver.odeint_kwargs())
    return lp[-1]


def zuko_peer(field, prior, z: torch.Tensor, tol: float) -> torch.Tensor:
    from zuko.transforms import FreeFormJacobianTransform

    shape = z.shape
    flat = lambda t, x: field(t, x.reshape(-1, *shape[1:])).reshape(x.shape)  # noqa: E731
    tr = FreeFormJacobianTransform(flat, 0.0, 1.0, phi=tuple(field.parameters()), atol=tol,
                                   rtol=tol, exact=True)
    with torch.no_grad():
        _, ladj = tr.call_and_ladj(z.reshape(shape[0], -1))
    return prior.log_prob(z) - ladj


def bench_case(system: str, label: str, name: str, params: dict, args) -> list[dict]:
    spec, batch = SYSTEMS[system]
    batch = args.batch or batch
    target = spec if isinstance(spec, ParticleTarget) else build_target(spec)
    torch.manual_seed(0)
    dev = torch.device(args.device)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    field = VECTOR_FIELDS.build(name, params, target=target).to(dev)
    with torch.no_grad():  # trained-like, non-trivial dynamics
        for p in field.parameters():
            p.add_(0.05 * torch.randn_like(p))
    prior = prior_for(target).to(dev)
    fixed = SolverConfig(method="rk4", n_steps=args.n_steps)
    z = prior.sample(batch, generator=torch.Generator().manual_seed(1))
    rows = []

    def row(variant: str, seconds: float, nfe: int | None = None, **kw):
        rows.append({"system": system, "field": label, "variant": variant, "batch": batch,
                     "samples_per_s": batch / seconds, "nfe": nfe, **kw})
        print(json.dumps(rows[-1]), flush=True)

    cnf = CNF(field, prior, fixed)
    cnf.sample(batch, with_log_prob=False, z=z)
    row("nodiv", best_time(lambda: cnf.sample(batch, with_log_prob=False, z=z), args.repeats),
        4 * args.n_steps)
    auto = CNF(field, prior, fixed)
    auto.sample(batch, z=z)  # choose the strategy
    row("flowsci", best_time(lambda: auto.sample(batch, z=z), args.repeats), 4 * args.n_steps,
        strategy=auto.exact_method)
    for method in TRACE_METHODS:
        if (method == "analytic" and not field.analytic_divergence) or (
                args.strategies and method not in args.strategies):
            continue
        cnf = CNF(field, prior, fixed, exact_trace=method)
        row(method, best_time(lambda: cnf.sample(batch, z=z), args.repeats), 4 * args.n_steps)
    row("ffjord", best_time(lambda: ffjord_peer(field, prior, z, fixed), args.repeats),
        4 * args.n_steps)
    if not args.no_zuko and z[0].numel() <= args.zuko_max_dim:
        try:
            adaptive = CNF(field, prior, SolverConfig(rtol=args.tol, atol=args.tol))
            n0 = adaptive.nfe
            secs = best_time(lambda: adaptive.sample(batch, z=z), 1)
            row("flowsci_dopri5", secs, adaptive.nfe - n0, tol=args.tol)
            row("zuko", best_time(lambda: zuko_peer(field, prior, z, args.tol), 1), None,
                tol=args.tol)
        except ImportError:
            pass
    rows.append(train_rates(system, label, field, prior, target, batch, args))
    print(json.dumps(rows[-1]), flush=True)
    return rows


def train_rates(system, label, field, prior, target, batch, args) -> dict:
    cnf = CNF(field, prior, train_solver=SolverConfig(method="midpoint", n_steps=8))
    x = prior.sample(batch) * 1.2
    mle, fm = MaximumLikelihood(target), FlowMatching(target)

    def step(obj):
        loss, _ = obj(cnf, x)
        loss.backward()

    out = {"system": system, "field": label, "variant": "training", "batch": batch,
           "mle_steps_per_s": 1 / best_time(lambda: step(mle), args.repeats),
           "fm_steps_per_s": 1 / best_time(lambda: step(fm), args.repeats)}
    try:
        from torchcfm.conditional_flow_matching import ConditionalFlowMatcher

        cfm = ConditionalFlowMatcher(sigma=0.0)

        def peer():
            t, xt, ut = cfm.sample_location_and_conditional_flow(prior.sample(batch), x)
            ((field(t, xt) - ut) ** 2).mean().backward()

        out["torchcfm_steps_per_s"] = 1 / best_time(peer, args.repeats)
    except ImportError:
        pass
    out["max_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # process-wide
    if x.is_cuda:  # this case's peak (reset in bench_case)
        out["cuda_peak_mb"] = torch.cuda.max_memory_allocated(x.device) / 2**20
    return out


def markdown(rows: list[dict], meta: dict) -> str:
    lines = [f"{meta['date']}, {meta['machine']}, {meta['device']}, torch {meta['torch']}, "
             f"{meta['threads']} thread(s), {meta['clock']} clock, float32; fixed-step rows: rk4 x {meta['n_steps']} "
             f"steps ({4 * meta['n_steps']} NFE); adaptive rows: dopri5 / zuko at atol = rtol = "
             f"{meta['tol']} (samples/s; NFE of flowsci's solve in brackets)", "",
             "| system | field | batch | no-div | flowsci exact (strategy) | each strategy | "
             "ffjord peer | **flowsci / ffjord** | exact / no-div | flowsci dopri5 (NFE) | zuko | "
             "flowsci / zuko | MLE steps/s | FM steps/s | TorchCFM steps/s |",
             "|" + " --- |" * 15]
    cases = {}
    for r in rows:
        cases.setdefault((r["system"], r["field"]), {})[r["variant"]] = r
    f = lambda v: "—" if v is None else f"{v:.3g}"  # noqa: E731
    ratio = lambda a, b: "—" if a is None or b is None else f"{a / b:.1f}x"  # noqa: E731
    for (system, field), c in cases.items():
        rate = {k: v.get("samples_per_s") for k, v in c.items()}
        tr = c.get("training", {})
        each = ", ".join(f"{m} {f(rate[m])}" for m in TRACE_METHODS if m in rate)
        adaptive = c.get("flowsci_dopri5", {})
        lines.append(
            f"| {system} | {field} | {c['nodiv']['batch']} | {f(rate['nodiv'])} | "
            f"{f(rate['flowsci'])} ({c['flowsci'].get('strategy')}) | {each} | "
            f"{f(rate['ffjord'])} | **{ratio(rate['flowsci'], rate['ffjord'])}** | "
            f"{ratio(rate['nodiv'], rate['flowsci'])} | "
            f"{f(rate.get('flowsci_dopri5'))} ({adaptive.get('nfe', '—')}) | {f(rate.get('zuko'))} | "
            f"{ratio(rate.get('flowsci_dopri5'), rate.get('zuko'))} | "
            f"{f(tr.get('mle_steps_per_s'))} | {f(tr.get('fm_steps_per_s'))} | "
            f"{f(tr.get('torchcfm_steps_per_s'))} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--systems", nargs="*", default=list(SYSTEMS))
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--n-steps", type=int, default=2)
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--tol", type=float, default=1e-5)
    p.add_argument("--no-zuko", action="store_true")
    p.add_argument("--zuko-max-dim", type=int, default=300,
                   help="skip the adaptive rows (flowsci dopri5, zuko) above this dimension")
    p.add_argument("--fields", nargs="*", default=None, help="only these field labels")
    p.add_argument("--strategies", nargs="*", default=None,
                   help="only these exact-trace strategies as extra rows (default: all)")
    p.add_argument("--out", default="benchmarks/results/exact_likelihood")
    p.add_argument("--clock", choices=list(CLOCK), default=None,
                   help="cpu: CPU time of this process (robust to other jobs on a shared host; "
                        "= wall time on an idle one with 1 thread); default: cpu for --device "
                        "cpu with 1 thread, else wall")
    args = p.parse_args()
    global clock
    args.clock = args.clock or ("cpu" if args.device == "cpu" and args.threads == 1 else "wall")
    clock = CLOCK[args.clock]
    torch.set_num_threads(args.threads)
    rows = []
    for system in args.systems:
        kind = "lattice" if system.startswith("phi4") else "particles"
        for label, name, params in _fields(kind):
            if args.fields is None or label in args.fields:
                rows += bench_case(system, label, name, params, args)
    meta = {"date": str(date.today()), "machine": platform.processor() or platform.machine(),
            "device": args.device, "torch": torch.__version__, "threads": args.threads,
            "n_steps": args.n_steps, "tol": args.tol, "clock": args.clock,
            "command": " ".join(sys.argv)}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    table = markdown(rows, meta)
    out.with_suffix(".md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
