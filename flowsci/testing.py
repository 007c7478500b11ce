"""Symmetry checks for user-written vector fields and flows.

>>> err = assert_equivariant(field, target)                # transforms from target.symmetry
>>> assert_invariant(lambda x: cnf.log_prob(x), target, x)  # scalar functions, e.g. log q

Particles [B, n, d]: 'rotation' (random proper rotation), 'reflection' (random improper
orthogonal map), 'translation' (output unchanged: velocities are translation invariant),
'permutation' (random permutation within each group of identical particles).
Lattices [B, *shape]: 'shift' (random periodic shift, multiples of `shift_step`),
'reflection' (site-centred reflection i -> -i mod L of random axes), 'axis_permutation'
(random permutation of equal-length axes), 'z2' (phi -> -phi, odd output).
"""

from __future__ import annotations

import random
from typing import Callable, Iterable

import torch

Transform = tuple[str, Callable[[torch.Tensor], torch.Tensor], Callable[[torch.Tensor], torch.Tensor]]


def random_orthogonal(dim: int, proper: bool = True, generator: torch.Generator | None = None,
                      dtype: torch.dtype = torch.float64, device=None) -> torch.Tensor:
    """Haar-random orthogonal [dim, dim] matrix with det +1 (proper) or -1."""
    a = torch.randn(dim, dim, generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(a)
    q = q * torch.sign(torch.diagonal(r)).unsqueeze(0)
    if (torch.det(q) > 0) != proper:
        q[:, 0] = -q[:, 0]
    return q.to(dtype=dtype, device=device)


def default_transforms(target) -> list[str]:
    """The transforms implied by target.kind and target.symmetry."""
    sym = target.symmetry
    if target.kind == "particles":
        names = {"O": ["rotation", "reflection"], "SO": ["rotation"], None: []}[sym.rotations]
        if sym.translations:
            names.append("translation")
        if any(len(g) > 1 for g in sym.permutations):
            names.append("permutation")
        return names
    names = ["shift"] if sym.translations else []
    return names + (["z2"] if sym.z2 else [])


def _sample_transform(name: str, target, x: torch.Tensor, rng: random.Random,
                      gen: torch.Generator, shift_step: int) -> Transform:
    ident = lambda y: y  # noqa: E731
    if target.kind == "particles":
        d = x.shape[-1]
        if name in ("rotation", "reflection"):
            R = random_orthogonal(d, name == "rotation", gen, x.dtype, x.device)
            return name, (lambda y: y @ R.T), (lambda y: y @ R.T)
        if name == "translation":
            a = torch.randn(1, 1, d, generator=gen, dtype=torch.float64).to(x)
            return name, (lambda y: y + a), ident
        if name == "permutation":
            perm = list(range(x.shape[1]))
            for group in target.symmetry.permutations or _type_groups(target):
                group = list(group)
                shuffled = group[:]
                rng.shuffle(shuffled)
                for src, dst in zip(group, shuffled):
                    perm[src] = dst
            p = torch.tensor(perm, device=x.device)
            return name, (lambda y: y[:, p]), (lambda y: y[:, p])
    else:
        shape = x.shape[1:]
        dims = list(range(1, x.dim()))
        if name == "shift":
            s = [shift_step * rng.randrange(max(n // shift_step, 1)) for n in shape]
            return name, (lambda y: y.roll(s, dims)), (lambda y: y.roll(s, dims))
        if name == "reflection":
            axes = [a for a in dims if rng.random() < 0.5] or [rng.choice(dims)]

            def reflect(y: torch.Tensor) -> torch.Tensor:
                return y.flip(axes).roll([1] * len(axes), axes)
            return name, reflect, reflect
        if name == "axis_permutation":
            groups: dict[int, list[int]] = {}
            for a in dims:
                groups.setdefault(x.shape[a], []).append(a)
            perm = [0] + dims
            for axes in groups.values():
                shuffled = axes[:]
                rng.shuffle(shuffled)
                for src, dst in zip(axes, shuffled):
                    perm[src] = dst
            return name, (lambda y: y.permute(perm)), (lambda y: y.permute(perm))
        if name == "z2":
            return name, (lambda y: -y), (lambda y: -y)
    raise ValueError(f"unknown transform {name!r} for a {target.kind} target")


def _type_groups(target) -> list[tuple[int, ...]]:
    """Indices of particles of equal `particle_types` (when no groups are declared): the
    relabellings a field is built to commute with (singletons for a molecule's atoms)."""
    groups: dict[int, list[int]] = {}
    types = getattr(target, "particle_types", None) or [0] * target.n_particles
    for i, z in enumerate(types):
        groups.setdefault(int(z), []).append(i)
    return [tuple(g) for g in groups.values()]


def _default_input(target, dtype: torch.dtype, gen: torch.Generator, batch: int = 4):
    x = torch.randn((batch, *target.event_shape), generator=gen, dtype=torch.float64)
    if target.kind == "particles":
        x = x - x.mean(dim=-2, keepdim=True)
    return x.to(dtype)


def assert_equivariant(field: Callable, target, x: torch.Tensor | None = None, *,
                       t: float = 0.5, transforms: str | Iterable[str] = "auto",
                       n_trials: int = 3, tol: float | None = None, invariant: bool = False,
                       shift_step: int = 1, seed: int = 0) -> float:
    """Check field(t, g x) == g field(t, x) (or == field(t, x) if `invariant`) for random g.

    field: callable (t, x) -> [B, *event] (or [B] when invariant); target: gives event shape,
    kind and symmetry; x: [B, *event] inputs (default: random, centred for particles, in the
    dtype of the field's parameters); transforms: names (see module doc) or 'auto' (from
    target.symmetry); tol: default 1e-8 (float64) / 1e-5 (float32).
    The error is max |field(g x) - g field(x)| / max(1, max |field(x)|) over trials and
    transforms; returned, and an AssertionError naming the transform is raised above tol.
    """
    gen = torch.Generator().manual_seed(seed)
    rng = random.Random(seed)
    if x is None:
        params = list(field.parameters()) if isinstance(field, torch.nn.Module) else []
        x = _default_input(target, params[0].dtype if params else torch.float64, gen)
    names = default_transforms(target) if transforms == "auto" else list(transforms)
    if not names:
        raise ValueError("no transforms to check (target declares no symmetry)")
    tol = tol if tol is not None else (1e-8 if x.dtype == torch.float64 else 1e-5)
    tt = torch.tensor(t, dtype=x.dtype, device=x.device)
    ref = field(tt, x)
    scale = max(1.0, ref.detach().abs().max().item())
    worst, worst_name = 0.0, ""
    for _ in range(n_trials):
        for name in names:
            _, g_in, g_out = _sample_transform(name, target, x, rng, gen, shift_step)
            expect = ref if invariant else g_out(ref)
            err = (field(tt, g_in(x)) - expect).detach().abs().max().item() / scale
            if not err <= worst:  # also catches NaN
                worst, worst_name = err, name
    if not worst <= tol:
        kind = "invariant" if invariant else "equivariant"
        raise AssertionError(f"not {kind} under {worst_name!r}: max error {worst:.3g} > "
                             f"tol {tol:.3g} ({x.dtype}, transforms {names})")
    return worst


def assert_invariant(fn: Callable[[torch.Tensor], torch.Tensor], target, x: torch.Tensor,
                     **kw) -> float:
    """Check fn(g x) == fn(x) for a scalar function such as a log-density x -> [B]."""
    return assert_equivariant(lambda t, y: fn(y), target, x, invariant=True, **kw)


def autograd_trace(field: Callable, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Reference divergence: a plain loop of D autograd calls (FFJORD's way). x: [B, *event] -> [B].

    Slow and simple on purpose: the yardstick for every fast or closed-form divergence.
    """
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        f = field(t, x).reshape(x.shape[0], -1)
        div = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        for k in range(f.shape[1]):
            (g,) = torch.autograd.grad(f[:, k].sum(), x, retain_graph=True)
            div = div + g.reshape(x.shape[0], -1)[:, k]
    return div.detach()


def assert_divergence_exact(field, target, x: torch.Tensor | None = None, *, t: float = 0.37,
                            rtol: float = 1e-8, seed: int = 0) -> float:
    """Check a closed-form `field.divergence` (and `forward_and_divergence`) against
    `autograd_trace` in the field's dtype (use float64). Returns the max relative error."""
    if not getattr(field, "analytic_divergence", False):
        raise ValueError(f"{type(field).__name__} declares no closed-form divergence")
    gen = torch.Generator().manual_seed(seed)
    dtype = next(iter(field.parameters())).dtype
    x = _default_input(target, dtype, gen) if x is None else x
    tt = torch.tensor(t, dtype=x.dtype, device=x.device)
    ref = autograd_trace(field, tt, x)
    with torch.no_grad():
        div = field.divergence(tt, x)
        f2, div2 = field.forward_and_divergence(tt, x)
        f = field(tt, x)
    scale = max(1.0, ref.abs().max().item())
    err = max((div - ref).abs().max().item(), (div2 - ref).abs().max().item()) / scale
    ferr = (f2 - f).abs().max().item() / max(1.0, f.abs().max().item())
    if not (err <= rtol and ferr <= rtol):
        raise AssertionError(f"{type(field).__name__}: closed-form divergence off the autograd "
                             f"trace by {err:.3g} (forward_and_divergence f off by {ferr:.3g}), "
                             f"rtol {rtol:.3g}")
    return err
