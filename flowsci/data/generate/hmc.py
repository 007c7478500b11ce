"""Hybrid (Hamiltonian) Monte Carlo, e.g. for 2D phi^4 (Duane et al. 1987).

Each trajectory draws momenta p ~ N(0, I), integrates H = u(phi) + p^2 / 2 with `n_leapfrog`
leapfrog steps of size step_size * (1 + step_jitter * U(-1, 1)) (drawn per trajectory and
chain: a fixed trajectory length resonates with modes of period 2 * length / k, which then
never decorrelate -- e.g. the free field) and accepts with min(1, exp(-dH)). Chains start
from N(0, init_scale^2) fields (particle targets: their init_positions, centred).
step_size is each chain's initial step: during the first 80 % of the `burn_in` trajectories
it is adapted per chain by dual averaging towards `target_acceptance` (default 0.8), then
frozen (adapt.py; adapt_step_size=False keeps it fixed). Without this, an N(0, 1) start of
phi^4 at lam = 8 has a huge action, every trajectory of step 0.1 diverges, and such chains
never move (measured: 1-2 of 64 chains stuck for the whole run, <phi^2> 10-40 % too high).
After `burn_in` trajectories every `thin`-th state is kept.
Diagnostics (diagnostics.py): acceptance per chain, adapted step sizes, rank-normalised
split-R-hat and ESS of the action/energy and of phi^2 = mean_x phi_x^2 (lattices) or the mean
pair distance (particles), <|dH|>, <exp(-dH)> (should be 1 within errors), and the
integrated autocorrelation times (Sokal windowing, in kept samples) of the magnetisation
M = sum_x phi_x and of |M| (lattices; in the broken phase M decorrelates only by tunnelling
between the two Z2 sectors, so its tau is much larger) or of the energy (particles).
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
from .mcmc import energy_and_grad, initial_positions, mean_pair_distance


@GENERATORS.register("hmc")
def hmc(target, n_samples: int = 10000, n_chains: int = 64, burn_in: int = 500, thin: int = 10,
        n_leapfrog: int = 10, step_size: float = 0.1, step_jitter: float = 0.2,
        init_scale: float = 1.0, seed: int = 0, adapt_step_size: bool = True,
        target_acceptance: float = 0.8, drop_stuck_chains: bool = False,
        checkpoint: str | None = None, checkpoint_every: int = 500):
    """Build an HMC sampler for `target`; call it to run. Units: step_size in field units
    (initial value, adapted during burn-in unless adapt_step_size=False); drop_stuck_chains:
    drop chains that did not mix instead of refusing."""
    settings = {"n_samples": n_samples, "n_chains": n_chains, "burn_in": burn_in, "thin": thin,
                "n_leapfrog": n_leapfrog, "step_size": step_size, "step_jitter": step_jitter,
                "init_scale": init_scale, "seed": seed, "adapt_step_size": adapt_step_size,
                "target_acceptance": target_acceptance, "drop_stuck_chains": drop_stuck_chains}
    ckpt = Checkpoint(checkpoint, {"generator": "hmc", **settings, "target": target.name,
                                   **target.attrs()}, checkpoint_every)
    particles = target.kind == "particles"
    if not 0 <= step_jitter < 1:
        raise ValueError(f"hmc: step_jitter must be in [0, 1), got {step_jitter}")
    if not 0 < target_acceptance < 1:
        raise ValueError(f"hmc: target_acceptance must be in (0, 1), got {target_acceptance}")

    def project(v: torch.Tensor) -> torch.Tensor:
        return remove_mean(v) if particles else v

    def run(progress: bool = True) -> GeneratedData:
        gen = torch.Generator().manual_seed(seed)
        if particles:
            x = initial_positions(target, n_chains, gen, init_scale)
        else:
            x = init_scale * torch.randn((n_chains, *target.event_shape), generator=gen,
                                         dtype=torch.float64)
        u, g = energy_and_grad(target, x)
        dims = tuple(range(1, x.ndim))

        def step(s: dict, h: torch.Tensor) -> tuple[dict, torch.Tensor, torch.Tensor]:
            x0, u0, g0 = s["x"], s["u"], s["g"]
            p = project(torch.randn(x0.shape, generator=gen, dtype=torch.float64))
            h0 = u0 + 0.5 * (p * p).sum(dims)
            jit = 2 * torch.rand(len(x0), generator=gen, dtype=torch.float64) - 1
            eps = (h * (1 + step_jitter * jit)).view(-1, *[1] * (x0.ndim - 1))
            x, g = x0, g0
            p = p - 0.5 * eps * project(g)
            for k in range(n_leapfrog):
                x = x + eps * p
                u, g = energy_and_grad(target, x)
                p = p - (eps if k < n_leapfrog - 1 else 0.5 * eps) * project(g)
            dh = u + 0.5 * (p * p).sum(dims) - h0
            dh = torch.where(torch.isfinite(dh), dh, torch.full_like(dh, math.inf))
            acc = torch.rand(len(x), generator=gen, dtype=torch.float64).log() < -dh
            m = acc.view(-1, *[1] * (x.ndim - 1))
            return ({"x": torch.where(m, x, x0), "u": torch.where(acc, u, u0),
                     "g": torch.where(m, g, g0), "dh": dh}, acc, accept_probability(-dh))

        def record(s: dict) -> dict:
            return {"x": s["x"], "u": s["u"], "dh": s["dh"]}

        res = run_chains(
            step, {"x": x, "u": u, "g": g, "dh": torch.zeros(n_chains, dtype=torch.float64)},
            record, n_keep=math.ceil(n_samples / n_chains), burn_in=burn_in, thin=thin,
            gen=gen, ckpt=ckpt, desc=f"hmc {target.name}", progress=progress,
            step_size=step_size, target_accept=target_acceptance, adapt=adapt_step_size)
        kept = res.kept
        obs = ({"mean_pair_distance": mean_pair_distance(kept["x"])} if particles
               else {"phi2": (kept["x"] ** 2).mean(tuple(range(2, kept["x"].ndim)))})
        chains, diag = chain_data(res, "hmc", kept["u"], obs, drop_stuck_chains)
        n = min(n_samples, diag["n_samples_stored"])
        dh = kept["dh"][:, chains]
        info = {**settings, "sampler": "HMC (leapfrog)", **diag,
                "mean_abs_dH": float(dh.abs().mean()),
                "mean_exp_minus_dH": float(torch.exp(-dh.clamp(min=-50)).mean())}
        if particles:
            info["energy_autocorr_time_thinned"] = integrated_autocorr_time(
                kept["u"][:, chains].numpy())
        else:
            mag = kept["x"][:, chains].sum(tuple(range(2, kept["x"].ndim)))  # [T, C]
            info["magnetization_autocorr_time_thinned"] = integrated_autocorr_time(mag.numpy())
            info["abs_magnetization_autocorr_time_thinned"] = integrated_autocorr_time(
                mag.abs().numpy())
        arrays = {"energies": chain_major(kept["u"], n, chains)}
        if particles:
            arrays["positions"] = chain_major(kept["x"], n, chains)
            arrays["atomic_numbers"] = np.asarray(target.atomic_numbers, dtype=np.int64)
        else:
            arrays["fields"] = chain_major(kept["x"], n, chains)
            arrays["actions"] = arrays["energies"]
        return GeneratedData(arrays=arrays, info=info)

    return run
