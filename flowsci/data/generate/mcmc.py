"""Random-walk Metropolis on particle targets, many chains in parallel (vectorised in torch).

Each chain starts from a random centred configuration, runs `burn_in` steps, then keeps every
`thin`-th state until n_samples states are kept over all chains. Proposals move all particles
by N(0, step_size^2) and are re-centred (the target is translation invariant).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from tqdm.auto import tqdm

from ...analysis.autocorr import integrated_autocorr_time
from ...flows.priors import remove_mean
from .base import GENERATORS, GeneratedData


@GENERATORS.register("mcmc")
def metropolis(target, n_samples: int = 10000, n_chains: int = 100, burn_in: int = 2000,
               thin: int = 20, step_size: float = 0.5, init_scale: float = 1.0, seed: int = 0):
    """Build a Metropolis sampler for `target`; call it to run."""
    if target.kind != "particles":
        raise ValueError("mcmc generator needs a particle target (use 'hmc' for lattices)")

    def run(progress: bool = True) -> GeneratedData:
        gen = torch.Generator().manual_seed(seed)
        shape = (n_chains, *target.event_shape)
        x = remove_mean(init_scale * torch.randn(shape, generator=gen, dtype=torch.float64))
        u = target.energy(x)
        per_chain = math.ceil(n_samples / n_chains)
        total = burn_in + per_chain * thin
        kept, kept_u, accepted = [], [], 0.0
        for step in tqdm(range(total), desc=f"mcmc {target.name}", disable=not progress,
                         mininterval=1.0):
            prop = remove_mean(x + step_size * torch.randn(shape, generator=gen,
                                                           dtype=torch.float64))
            u_prop = target.energy(prop)
            acc = torch.rand(n_chains, generator=gen, dtype=torch.float64).log() < (u - u_prop)
            x = torch.where(acc[:, None, None], prop, x)
            u = torch.where(acc, u_prop, u)
            if step >= burn_in:
                accepted += acc.double().mean().item()
                if (step - burn_in + 1) % thin == 0:
                    kept.append(x.clone())
                    kept_u.append(u.clone())
        pos = torch.stack(kept, 1).reshape(-1, *target.event_shape)[:n_samples]  # chain-major
        energies = torch.stack(kept_u, 1).reshape(-1)[:n_samples]
        tau = integrated_autocorr_time(torch.stack(kept_u, 0).numpy())  # in thinned steps
        info = {"sampler": "random-walk Metropolis", "n_chains": n_chains, "burn_in": burn_in,
                "thin": thin, "step_size": step_size, "seed": seed,
                "acceptance_rate": accepted / max(total - burn_in, 1),
                "energy_autocorr_time_thinned": tau}
        return GeneratedData(
            arrays={"positions": pos.numpy(), "energies": energies.numpy(),
                    "atomic_numbers": np.asarray(target.atomic_numbers, dtype=np.int64)},
            info=info)

    return run
