# ---
# jupytext:
#   text_representation:
#     extension: .py
#     format_name: percent
# ---

# %% [markdown]
# # flowsci from Python: a trained Boltzmann generator in a notebook
#
# After `snakemake` (or the `flowsci` stage commands) has trained a run, `flowsci.load_run`
# gives the trained flow, its target and its files. This notebook loads the run, draws new
# samples with exact log-likelihoods, reweights them to the Boltzmann distribution, plots a
# distance histogram and exports a trajectory for VMD / PyMOL / OVITO / ASE.
#
# It is plain Python in the jupytext "percent" format: open it as a notebook with
# `jupytext --to notebook docs/tutorial.py`, or run it as a script. The paths come from
# environment variables so the test suite can run it on a tiny trained run:
# `FLOWSCI_CONFIG` (default `config/config.yaml`), `FLOWSCI_RUN` (default `egnn_mle`),
# `FLOWSCI_N_SAMPLES`, `FLOWSCI_PAIR` (two atom indices, default `0,1`), `FLOWSCI_OUT`.

# %%
import os
from pathlib import Path

import matplotlib

matplotlib.use(os.environ.get("MPLBACKEND", "Agg"))
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import flowsci  # noqa: E402

CONFIG = os.environ.get("FLOWSCI_CONFIG", "config/config.yaml")
RUN = os.environ.get("FLOWSCI_RUN", "egnn_mle")
N_SAMPLES = int(os.environ.get("FLOWSCI_N_SAMPLES", "500"))
PAIR = tuple(int(i) for i in os.environ.get("FLOWSCI_PAIR", "0,1").split(","))
OUT = Path(os.environ.get("FLOWSCI_OUT", "tutorial_output"))
OUT.mkdir(parents=True, exist_ok=True)

# %% [markdown]
# ## 1. Load the run
# A config file or the results directory the workflow ran in. The model file is checked
# against the config exactly as the sample stage checks it (a model trained for another
# model, prior or target is refused).

# %%
run = flowsci.load_run(CONFIG, run=RUN)
print(run)
print({k: str(v) for k, v in run.files.items()})

# %% [markdown]
# ## 2. Draw samples with exact log q
# `run.sample` goes through the sample stage's own function: same solver, batching and
# chirality handling. With the config's seed and a shard's size it reproduces that shard of
# `flowsci sample` exactly.

# %%
x, log_q = run.sample(N_SAMPLES, seed=123)
print("samples", x.shape, "log q", log_q[:3])
print("exact log q again by the reverse solve:", run.log_prob(x[:3]))

# %% [markdown]
# ## 3. Reweight to the Boltzmann distribution
# Importance weights w = exp(-u(x)) / q(x), normalised; ESS and Pareto k-hat tell whether
# they can be trusted (k-hat above 0.7: no).

# %%
w = run.reweight(x, log_q)
print(f"ESS = {w['ess']:.1f} of {len(x)} ({100 * w['ess_fraction']:.1f} %), "
      f"k-hat = {w['k_hat']:.2f}")

# %% [markdown]
# ## 4. A distance histogram, raw and reweighted
# Any observable is a function of the configurations: here the distance between two atoms.
# The run's observable set (`run.observables.scalars(x, u)`) has the report's observables.

# %%
i, j = PAIR
d = np.linalg.norm(x[:, i] - x[:, j], axis=-1)
bins = np.linspace(d.min(), d.max(), 30) if len(d) > 1 and d.max() > d.min() else 10
fig, ax = plt.subplots(figsize=(5, 3.5))
ax.hist(d, bins=bins, density=True, histtype="step", label="flow samples")
ax.hist(d, bins=bins, weights=w["weights"], density=True, histtype="step", label="reweighted")
ax.set_xlabel(f"distance between atoms {i} and {j}")
ax.set_ylabel("density")
ax.legend()
fig.tight_layout()
fig.savefig(OUT / "distance_histogram.png", dpi=100)
print("reweighted mean distance:", float(np.sum(w["weights"] * d)))
print("scalars of the observable set:", list(run.observables.scalars(x, w["energies"])))

# %% [markdown]
# ## 5. Export a trajectory
# `run.export` is `flowsci export`: the stored samples of the sample stage, here resampled by
# their importance weights into an unweighted set (systematic resampling), as DCD with a PDB
# topology for molecules or extxyz for other particle systems. The weights and log q of every
# frame go beside it in <output>.weights.csv.

# %%
if run.target.kind == "lattice":
    out = run.export("npy", OUT / "samples.npy")
elif run.has_topology:
    run.export("pdb", OUT / "samples.pdb")  # the topology (and all frames) for the viewer
    out = run.export("dcd", OUT / "samples.dcd", resample=len(run.samples()["x"]))
else:
    out = run.export("extxyz", OUT / "samples.extxyz", resample=len(run.samples()["x"]))
print(f"{out['output']}: {out['n_frames']} frames, {out['n_distinct']} distinct; "
      f"weights in {out['weights']}")
