"""Hybrid (Hamiltonian) Monte Carlo, e.g. for 2D phi^4 (Duane et al. 1987).

Each trajectory draws momenta p ~ N(0, I), integrates H = u(phi) + p^2 / 2 with `n_leapfrog`
leapfrog steps of size step_size * (1 + step_jitter * U(-1, 1)) (drawn per trajectory and
chain: a fixed trajectory length resonates with modes of period 2 * length / k, which then
never decorrelate -- e.g. the free field) and accepts with min(1, exp(-dH)). Chains start from N(0, init_scale^2) fields (particle targets: their
init_positions, centred). After `burn_in` trajectories every `thin`-th state is kept.
Diagnostics: acceptance rate, <|dH|>, <exp(-dH)> (should be 1 within errors), and the
integrated autocorrelation times (Sokal windowing, in kept samples) of the magnetisation
M = sum_x phi_x and of |M| (lattices; in the broken phase M decorrelates only by tunnelling
between the two Z2 sectors, so its tau is much larger) or of the energy (particles).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ...autocorr import integrated_autocorr_time
from ...geometry import remove_mean
from .base import GENERATORS, Checkpoint, GeneratedData, chain_major, run_chains
from .mcmc import energy_and_grad, initial_positions


@GENERATORS.register("hmc")
def hmc(target, n_samples: int = 10000, n_chains: int = 64, burn_in: int = 500, thin: int = 10,
        n_leapfrog: int = 10, step_size: float = 0.1, step_jitter: float = 0.2,
        init_scale: float = 1.0, seed: int = 0, checkpoint: str | None = None, checkpoint_every: int = 500):
    """Build an HMC sampler for `target`; call it to run. Units: step_size in field units."""
    settings = {"n_samples": n_samples, "n_chains": n_chains, "burn_in": burn_in, "thin": thin,
                "n_leapfrog": n_leapfrog, "step_size": step_size, "step_jitter": step_jitter,
                "init_scale": init_scale,
                "seed": seed}
    ckpt = Checkpoint(checkpoint, {"generator": "hmc", **settings, "target": target.name,
                                   **target.attrs()}, checkpoint_every)
    particles = target.kind == "particles"
    if not 0 <= step_jitter < 1:
        raise ValueError(f"hmc: step_jitter must be in [0, 1), got {step_jitter}")

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

        def step(s: dict) -> tuple[dict, torch.Tensor]:
            x0, u0, g0 = s["x"], s["u"], s["g"]
            p = project(torch.randn(x0.shape, generator=gen, dtype=torch.float64))
            h0 = u0 + 0.5 * (p * p).sum(dims)
            jit = 2 * torch.rand(len(x0), generator=gen, dtype=torch.float64) - 1
            eps = (step_size * (1 + step_jitter * jit)).view(-1, *[1] * (x0.ndim - 1))
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
            return {"x": torch.where(m, x, x0), "u": torch.where(acc, u, u0),
                    "g": torch.where(m, g, g0), "dh": dh}, acc

        def record(s: dict) -> dict:
            return {"x": s["x"], "u": s["u"], "dh": s["dh"]}

        kept, acc_rate = run_chains(
            step, {"x": x, "u": u, "g": g, "dh": torch.zeros(n_chains, dtype=torch.float64)},
            record, n_keep=math.ceil(n_samples / n_chains), burn_in=burn_in, thin=thin,
            gen=gen, ckpt=ckpt, desc=f"hmc {target.name}", progress=progress)
        dh = kept["dh"]
        info = {**settings, "sampler": "HMC (leapfrog)", "acceptance_rate": acc_rate,
                "mean_abs_dH": float(dh.abs().mean()),
                "mean_exp_minus_dH": float(torch.exp(-dh.clamp(min=-50)).mean())}
        if particles:
            info["energy_autocorr_time_thinned"] = integrated_autocorr_time(kept["u"].numpy())
        else:
            mag = kept["x"].sum(tuple(range(2, kept["x"].ndim)))  # [T, C]
            info["magnetization_autocorr_time_thinned"] = integrated_autocorr_time(mag.numpy())
            info["abs_magnetization_autocorr_time_thinned"] = integrated_autocorr_time(
                mag.abs().numpy())
        arrays = {"energies": chain_major(kept["u"], n_samples)}
        if particles:
            arrays["positions"] = chain_major(kept["x"], n_samples)
            arrays["atomic_numbers"] = np.asarray(target.atomic_numbers, dtype=np.int64)
        else:
            arrays["fields"] = chain_major(kept["x"], n_samples)
            arrays["actions"] = arrays["energies"]
        return GeneratedData(arrays=arrays, info=info)

    return run
