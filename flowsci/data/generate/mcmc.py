"""Metropolis / MALA on particle targets (DW4, LJ13, LJ55, ...), many chains in parallel.

Chains start from `target.init_positions` where the target has it (LJ: a jittered grid, so
no overlapping particles) and otherwise from N(0, init_scale^2) centred configurations. After
`burn_in` steps every `thin`-th state is kept until n_samples states are kept over all chains
(stored chain by chain). All moves are centred (targets are translation invariant).

- metropolis: x' = x + h xi, xi ~ N(0, I) projected to zero centroid.
- mala: x' = x + D(x) + h xi, D(x) = -(h^2 / 2) grad u(x) truncated to norm at most
  h sqrt((n - 1) d) (the noise's typical norm), with the Metropolis-Hastings correction for
  the asymmetric proposal. This is MALTA (Roberts & Tweedie 1996): plain MALA is not
  geometrically ergodic for potentials growing faster than quadratically (DW4's quartic, LJ's
  r^-12), and chains started in the steep region get stuck; the truncation only acts there.
h = step_size, in the target's length unit: the initial step of every chain, adapted per
chain during burn-in towards `target_acceptance` (default 0.3 for Metropolis, 0.574 for MALA,
Roberts & Rosenthal 1998/2001) by dual averaging, then frozen (adapt.py; off with
adapt_step_size=False). Diagnostics (diagnostics.py): acceptance per chain, the adapted step
sizes, rank-normalised split-R-hat and ESS of the energy and of the mean pair distance, the
integrated autocorrelation time of the energy (Sokal windowing), in kept (thinned) samples.
Chains that did not mix are refused (DataError) or, with drop_stuck_chains, dropped.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ...autocorr import integrated_autocorr_time
from ...geometry import remove_mean
from .adapt import accept_probability
from .base import GENERATORS, Checkpoint, GeneratedData, chain_data, chain_major, run_chains

TARGET_ACCEPTANCE = {"metropolis": 0.3, "mala": 0.574}


def energy_and_grad(target, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """u(x) [B] and du/dx [B, *event], detached."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        u = target.energy(x)
        (g,) = torch.autograd.grad(u.sum(), x)
    return u.detach(), g.detach()


def initial_positions(target, n: int, gen: torch.Generator, init_scale: float) -> torch.Tensor:
    """[n, *event] float64 starting configurations (the target's own, or centred Gaussian)."""
    if hasattr(target, "init_positions"):
        return target.init_positions(n, gen).to(torch.float64)
    return remove_mean(init_scale * torch.randn((n, *target.event_shape), generator=gen,
                                                dtype=torch.float64))


def mean_pair_distance(x: torch.Tensor) -> torch.Tensor:
    """Mean distance over all particle pairs. x: [..., n, d] -> [...] (length unit)."""
    i, j = torch.triu_indices(x.shape[-2], x.shape[-2], 1)
    return (x[..., i, :] - x[..., j, :]).norm(dim=-1).mean(-1)


@GENERATORS.register("mcmc")
def metropolis(target, n_samples: int = 10000, n_chains: int = 100, burn_in: int = 2000,
               thin: int = 20, step_size: float = 0.5, init_scale: float = 1.0, seed: int = 0,
               method: str = "metropolis", adapt_step_size: bool = True,
               target_acceptance: float | None = None, drop_stuck_chains: bool = False,
               checkpoint: str | None = None, checkpoint_every: int = 1000):
    """Build a Metropolis (method='metropolis') or MALA ('mala') sampler; call it to run.

    n_samples: states kept in all; n_chains parallel chains; burn_in and thin in steps;
    step_size: initial proposal scale h (adapted during burn-in unless adapt_step_size=False);
    drop_stuck_chains: drop chains that did not mix instead of refusing; checkpoint: path for
    resumable runs (set by preprocess).
    """
    if target.kind != "particles":
        raise ValueError("mcmc generator needs a particle target (use 'hmc' for lattices)")
    if method not in ("metropolis", "mala"):
        raise ValueError(f"mcmc: method must be 'metropolis' or 'mala', got {method!r}")
    target_acceptance = target_acceptance or TARGET_ACCEPTANCE[method]
    if not 0 < target_acceptance < 1:
        raise ValueError(f"mcmc: target_acceptance must be in (0, 1), got {target_acceptance}")
    settings = {"generator": "mcmc", "n_samples": n_samples, "n_chains": n_chains,
                "burn_in": burn_in, "thin": thin, "step_size": step_size,
                "init_scale": init_scale, "seed": seed, "method": method,
                "adapt_step_size": adapt_step_size, "target_acceptance": target_acceptance,
                "drop_stuck_chains": drop_stuck_chains}
    ckpt = Checkpoint(checkpoint, {**settings, "target": target.name, **target.attrs()},
                      checkpoint_every)
    drift_norm = math.sqrt((target.n_particles - 1) * target.dim)  # noise's typical norm / h

    def run(progress: bool = True) -> GeneratedData:
        gen = torch.Generator().manual_seed(seed)
        x = initial_positions(target, n_chains, gen, init_scale)
        if method == "mala":
            u, g = energy_and_grad(target, x)
        else:
            with torch.no_grad():
                u, g = target.energy(x).detach(), torch.zeros(())

        def drift(g: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
            d = -0.5 * h * h * g
            norm = d.flatten(1).norm(dim=-1).clamp(min=1e-300)
            return d * (h.flatten() * drift_norm / norm).clamp(max=1.0).view(h.shape)

        def noise() -> torch.Tensor:
            return remove_mean(torch.randn(x.shape, generator=gen, dtype=torch.float64))

        def step(s: dict, h: torch.Tensor) -> tuple[dict, torch.Tensor, torch.Tensor]:
            x, u, g = s["x"], s["u"], s["g"]
            h = h.view(-1, *[1] * (x.ndim - 1))
            h2 = h.flatten() ** 2
            if method == "mala":
                prop = x + drift(g, h) + h * noise()
                u_p, g_p = energy_and_grad(target, prop)
                fwd = ((prop - x - drift(g, h)) ** 2).flatten(1).sum(-1)
                bwd = ((x - prop - drift(g_p, h)) ** 2).flatten(1).sum(-1)
                log_a = u - u_p + (fwd - bwd) / (2 * h2)
            else:
                prop = x + h * noise()
                with torch.no_grad():
                    u_p, g_p = target.energy(prop).detach(), g
                log_a = u - u_p
            log_a = torch.nan_to_num(log_a, nan=-math.inf)
            acc = torch.rand(len(x), generator=gen, dtype=torch.float64).log() < log_a
            m = acc.view(-1, *[1] * (x.ndim - 1))
            new = {"x": torch.where(m, prop, x), "u": torch.where(acc, u_p, u)}
            new["g"] = torch.where(m, g_p, g) if method == "mala" else g
            return new, acc, accept_probability(log_a)

        res = run_chains(
            step, {"x": x, "u": u, "g": g}, lambda s: {"x": s["x"], "u": s["u"]},
            n_keep=math.ceil(n_samples / n_chains), burn_in=burn_in, thin=thin, gen=gen,
            ckpt=ckpt, desc=f"{method} {target.name}", progress=progress, step_size=step_size,
            target_accept=target_acceptance, adapt=adapt_step_size)
        kept = res.kept
        chains, diag = chain_data(res, "mcmc", kept["u"],
                                  {"mean_pair_distance": mean_pair_distance(kept["x"])},
                                  drop_stuck_chains)
        tau = integrated_autocorr_time(kept["u"][:, chains].numpy())  # in thinned steps
        n = min(n_samples, diag["n_samples_stored"])
        info = {**settings, "sampler": "random-walk Metropolis" if method == "metropolis"
                else "MALA", **diag, "energy_autocorr_time_thinned": tau,
                "n_effective_approx": n / max(tau, 1.0)}
        info.pop("generator")
        return GeneratedData(
            arrays={"positions": chain_major(kept["x"], n, chains),
                    "energies": chain_major(kept["u"], n, chains),
                    "atomic_numbers": np.asarray(target.atomic_numbers, dtype=np.int64)},
            info=info)

    return run
