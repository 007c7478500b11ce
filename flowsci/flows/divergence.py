"""Divergence of a vector field: exact (full Jacobian trace) or Hutchinson (one VJP per call).

The exact trace has several strategies, all equal to round-off (`TRACE_METHODS`):
  'analytic'     the field's closed-form `forward_and_divergence` (models/base.py)
  'vjp_batched'  D vector-Jacobian products in one batched backward pass (is_grads_batched),
                 over chunks of the basis so memory stays bounded
  'vjp_loop'     a loop of D backward passes (FFJORD's way; works for every field)
  'jvp_vmap'     forward mode: torch.func.vmap of jvp over the basis, chunked
`ExactTrace` picks one once per field ('auto': analytic when the field declares it, else the
fastest autograd strategy on the first real input, best of two timed calls each) and keeps
it. On an out-of-memory error a chunked strategy halves its basis chunk and retries (kept for
later calls); when nothing is left to halve, the error is re-raised with advice, never
swallowed. Hutchinson estimates are for training only.
All functions take x: [B, *event] and return div: [B].
"""

from __future__ import annotations

import logging
import time
from typing import Callable

import torch

from ..errors import ResourceError

Field = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
log = logging.getLogger(__name__)


def hutchinson_divergence(f: torch.Tensor, x: torch.Tensor, probe: torch.Tensor,
                          create_graph: bool = False) -> torch.Tensor:
    """Unbiased estimate eps^T (df/dx) eps of the trace; f = field(x) [B, *event] built with
    x.requires_grad; probe [B, *event] fixed for the whole solve (see `draw_probe`)."""
    (vjp,) = torch.autograd.grad(f, x, probe, create_graph=create_graph)
    return (vjp * probe).flatten(1).sum(-1)


def draw_probe(like: torch.Tensor, kind: str = "rademacher",
               generator: torch.Generator | None = None) -> torch.Tensor:
    """A probe vector with E[eps eps^T] = I, shaped like `like`."""
    if kind == "rademacher":
        return torch.randint(0, 2, like.shape, generator=generator, device=like.device).to(
            like.dtype) * 2 - 1
    if kind == "gaussian":
        return torch.randn(like.shape, generator=generator, device=like.device, dtype=like.dtype)
    raise ValueError(f"unknown probe {kind!r}; use 'rademacher' or 'gaussian'")


def _basis(D: int, start: int, stop: int, B: int, shape, like: torch.Tensor) -> torch.Tensor:
    """Unit vectors e_start..e_stop-1 repeated over the batch: [stop - start, B, *shape]."""
    eye = torch.zeros(stop - start, D, dtype=like.dtype, device=like.device)
    eye[torch.arange(stop - start), torch.arange(start, stop)] = 1.0
    return eye.unsqueeze(1).expand(stop - start, B, D).reshape(stop - start, B, *shape)


def vjp_batched_divergence(f: torch.Tensor, x: torch.Tensor, create_graph: bool = False,
                           chunk: int | None = None) -> torch.Tensor:
    """Tr(df/dx) from D VJPs batched over the basis, `chunk` basis vectors per backward pass
    (None: all D at once). Raises RuntimeError where the field does not support batched grads."""
    B, D = f.shape[0], f[0].numel()
    chunk = D if chunk is None else max(1, min(int(chunk), D))
    div = torch.zeros(B, dtype=f.dtype, device=f.device)
    for start in range(0, D, chunk):
        stop = min(start + chunk, D)
        basis = _basis(D, start, stop, B, f.shape[1:], f)
        (rows,) = torch.autograd.grad(f, x, basis, create_graph=create_graph, retain_graph=True,
                                      is_grads_batched=True)
        # rows[k, b] = e_{start+k}^T J_b; the trace takes its (start+k)-th component
        rows = rows.reshape(stop - start, B, D)
        div = div + rows[torch.arange(stop - start), :, torch.arange(start, stop)].sum(0)
    return div


def vjp_loop_divergence(f: torch.Tensor, x: torch.Tensor, create_graph: bool = False) -> torch.Tensor:
    """Tr(df/dx) by a loop of D backward passes (each batched over samples)."""
    B, D = f.shape[0], f[0].numel()
    f_flat = f.reshape(B, D)
    div = torch.zeros(B, dtype=f.dtype, device=f.device)
    for k in range(D):
        (g,) = torch.autograd.grad(f_flat[:, k].sum(), x, create_graph=create_graph,
                                   retain_graph=True)
        div = div + g.reshape(B, D)[:, k]
    return div


def exact_divergence(f: torch.Tensor, x: torch.Tensor, create_graph: bool = False,
                     chunk: int | None = None) -> torch.Tensor:
    """Tr(df/dx) for f = field(x) built with x.requires_grad: batched VJPs, or the loop where
    the field does not support batched grads. Cost: D backward passes."""
    try:
        return vjp_batched_divergence(f, x, create_graph, chunk)
    except RuntimeError as e:
        if is_out_of_memory(e):
            raise
    return vjp_loop_divergence(f, x, create_graph)


def jvp_vmap_divergence(field: Field, t: torch.Tensor, x: torch.Tensor,
                        chunk: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(f, Tr(df/dx)) by forward mode: vmap over basis chunks of torch.func.jvp. Gradients
    w.r.t. the field's parameters flow through (training through the exact trace works)."""
    from torch.func import jvp, vmap

    B, shape = x.shape[0], x.shape[1:]
    D = x[0].numel()
    chunk = D if chunk is None else max(1, min(int(chunk), D))
    fn = lambda y: field(t, y)  # noqa: E731
    f = fn(x)
    div = torch.zeros(B, dtype=x.dtype, device=x.device)
    for start in range(0, D, chunk):
        stop = min(start + chunk, D)
        basis = _basis(D, start, stop, B, shape, x)
        tangents = vmap(lambda v: jvp(fn, (x,), (v,))[1])(basis)  # [k, B, *shape]
        tangents = tangents.reshape(stop - start, B, D)
        div = div + tangents[torch.arange(stop - start), :, torch.arange(start, stop)].sum(0)
    return f, div


def is_out_of_memory(e: BaseException) -> bool:
    msg = str(e)
    return (isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in msg
            or "can't allocate memory" in msg)


TRACE_METHODS = ("analytic", "vjp_batched", "vjp_loop", "jvp_vmap")
AUTOGRAD_METHODS = ("vjp_loop", "vjp_batched", "jvp_vmap")
CHUNKED_METHODS = ("vjp_batched", "jvp_vmap")  # memory grows with the chunk of basis vectors


def _sync(x: torch.Tensor) -> None:
    if x.is_cuda:
        torch.cuda.synchronize(x.device)


class ExactTrace:
    """The exact-divergence strategy of one vector field, chosen once and kept.

    method: 'auto' or one of TRACE_METHODS; chunk: basis vectors per pass (None: all).
    __call__(field, t, x, create_graph) -> (f [B, *event], div [B]); x must require grad for
    the autograd strategies (the CNF dynamics ensure it).
    """

    def __init__(self, method: str = "auto", chunk: int | None = None):
        if method != "auto" and method not in TRACE_METHODS:
            raise ValueError(f"unknown exact-trace method {method!r}; use 'auto' or one of "
                             f"{', '.join(TRACE_METHODS)}")
        self.requested = method
        self.method: str | None = None if method == "auto" else method
        self.chunk = chunk

    def __call__(self, field, t: torch.Tensor, x: torch.Tensor,
                 create_graph: bool) -> tuple[torch.Tensor, torch.Tensor]:
        if self.method is None:
            return self._choose(field, t, x, create_graph)
        while True:
            try:
                return self._run(self.method, field, t, x, create_graph)
            except RuntimeError as e:
                if not is_out_of_memory(e):
                    raise
                if not self._halve_chunk(x):
                    raise ResourceError(
                        f"out of memory in the exact divergence ({self.method}, batch "
                        f"{x.shape[0]}, {x[0].numel()} dimensions, {self.chunk or 'all'} basis "
                        "vectors per pass): lower sampling.batch_size (or "
                        "training.val_samples)") from e

    def _halve_chunk(self, x: torch.Tensor) -> bool:
        """After an out-of-memory error: halve the basis vectors per pass of a chunked strategy
        (kept for later calls) and say so; False when there is nothing left to halve."""
        D = x[0].numel()
        if self.method not in CHUNKED_METHODS or (self.chunk or D) <= 1:
            return False
        self.chunk = max(1, (self.chunk or D) // 2)
        if x.is_cuda:
            torch.cuda.empty_cache()
        log.warning("exact divergence (%s) ran out of memory at batch %d; retrying with %d basis "
                    "vectors per pass (flow.trace_chunk)", self.method, x.shape[0], self.chunk)
        return True

    def _choose(self, field, t, x, create_graph):
        """'auto': the closed form if declared, else time each autograd strategy once on this
        input (best of two calls each) and keep the fastest (which one wins depends on the field,
        batch and device)."""
        if getattr(field, "analytic_divergence", False):
            self.method = "analytic"
            return self(field, t, x, create_graph)
        best, out, last = float("inf"), None, None
        for method in AUTOGRAD_METHODS:
            try:
                seconds = float("inf")
                for _ in range(2):  # the first call pays one-off costs (allocations, kernels)
                    _sync(x)
                    t0 = time.perf_counter()
                    result = self._run(method, field, t, x, create_graph)
                    _sync(x)
                    seconds = min(seconds, time.perf_counter() - t0)
            except RuntimeError as e:  # no batching rule, or too much memory for this one
                last = e
                continue
            if seconds < best:
                best, out, self.method = seconds, result, method
        if out is None:
            if last is not None and is_out_of_memory(last):
                self.method = AUTOGRAD_METHODS[0]
                return self(field, t, x, create_graph)  # raises ResourceError with advice
            raise RuntimeError(f"no exact-trace strategy works for {type(field).__name__}") from last
        return out

    def _run(self, method: str, field, t, x, create_graph):
        if method == "analytic":
            return field.forward_and_divergence(t, x)
        if method == "jvp_vmap":
            return jvp_vmap_divergence(field, t, x, self.chunk)
        f = field(t, x)
        if method == "vjp_batched":
            return f, vjp_batched_divergence(f, x, create_graph, self.chunk)
        return f, vjp_loop_divergence(f, x, create_graph)
