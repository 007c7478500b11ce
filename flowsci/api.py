"""The public Python API: a trained run as an object.

    import flowsci
    run = flowsci.load_run("config/config.yaml", run="egnn_mle")   # or a results directory
    x, log_q = run.sample(1000, seed=1)        # exact log q, as `flowsci sample` draws them
    w = run.reweight(x, log_q)                 # {'weights', 'ess', 'k_hat', ...}
    run.log_prob(x); run.energy(x); run.samples(); run.reweighted(); run.observables
    run.export("dcd", "traj.dcd", resample=1000)   # `flowsci export`

Everything goes through the stage functions (flowsci.stages.sample / reweight): the same model
check, solver, batching and chirality handling, so the API and the pipeline cannot disagree.
Arrays are numpy float64 in the target's units (nm for OpenMM targets, Angstrom for ASE ones,
reduced units otherwise); energies are reduced (u = U / kT).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import paths
from .analysis.observables import ObservableSet
from .analysis.report import read_metrics, read_reweight
from .config import load_config
from .device import resolve_device, resolve_dtype
from .errors import ConfigError, DataError
from .flows.base import Flow
from .model_file import ModelFile
from .reweighting import log_weights, normalized_weights
from .stages.checks import check_samples_file
from .stages.reweight import read_reference, read_samples, run_observables, weight_diagnostics
from .stages.sample import (chirality_reference, draw_samples, load_trained_flow, shard_seed,
                            shard_sizes)
from .chirality import mirrored_log_prob

# Where the Snakemake workflow keeps the exact config it ran with (workflow/rules/common.smk).
RESULTS_CONFIG = Path(".flowsci") / "config.yaml"


def find_config(config_or_results_path: str | os.PathLike | dict) -> dict:
    """A validated config from a YAML file, a dict, or a results directory that the workflow
    ran in (it holds .flowsci/config.yaml)."""
    if isinstance(config_or_results_path, dict):
        from .config import validate_config
        return validate_config(config_or_results_path)
    path = Path(config_or_results_path)
    if path.is_dir():
        if not (path / RESULTS_CONFIG).is_file():
            raise ConfigError(f"{path}: a directory without {RESULTS_CONFIG} (give the config "
                              "file, or the results directory a workflow ran in)")
        path = path / RESULTS_CONFIG
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    return load_config(path)


def load_run(config_or_results_path: str | os.PathLike | dict, run: str | None = None,
             device: str | None = None, use_ema: bool | None = None) -> "Run":
    """The trained run `run` (default: the config's only run) of a config file, config dict
    or results directory. Refuses a model.pt trained for another model, prior or target
    (as the sample stage does). device / use_ema default to the config's settings."""
    config = find_config(config_or_results_path)
    runs = list(config["runs"])
    if run is None:
        if len(runs) != 1:
            raise ConfigError(f"load_run: the config has runs {', '.join(runs) or 'none'}; "
                              "name one with run=...")
        run = runs[0]
    if run not in config["runs"]:
        raise ConfigError(f"load_run: run {run!r} is not in the config (it has: "
                          f"{', '.join(runs) or 'none'})")
    model_path = paths.model_file(config, run)
    if not model_path.is_file():
        raise DataError(f"{model_path}: model file not found (run `flowsci train --run {run}`)")
    sp = config["runs"][run]["sampling"]
    dev = resolve_device(device or config["device"])
    flow, target, model = load_trained_flow(config, run, dev, resolve_dtype(sp["dtype"]),
                                            sp["use_ema"] if use_ema is None else use_ema)
    return Run(config, run, flow, target, model)


@dataclass
class Run:
    """A trained run: `flow` (torch module, eval mode), `target` (energy, topology where it
    has one), `model` (the model file's metadata), `config` and `files` (its stage paths)."""

    config: dict
    name: str
    flow: Flow
    target: Any
    model: ModelFile
    _chirality: Any = field(default=None, init=False, repr=False)
    _chirality_read: bool = field(default=False, init=False, repr=False)

    @property
    def system(self) -> str:
        return self.config["runs"][self.name]["system"]

    @property
    def files(self) -> dict[str, Path]:
        """The run's stage files (they may not exist yet)."""
        c, r = self.config, self.name
        return {"data": paths.data_file(c, self.system), "model": paths.model_file(c, r),
                "samples": paths.samples_file(c, r), "reweight": paths.reweight_file(c, r),
                "metrics": paths.metrics_file(c, r), "figures": paths.figures_dir(c, r)}

    @property
    def observables(self) -> ObservableSet:
        """The system's observable set (as the reweight stage uses it); `.scalars(x, u)`
        gives its per-configuration observables, e.g. distances or dihedral angles."""
        return run_observables(self.config, self.name, self.target)

    def sample(self, n: int | None = None, seed: int | None = None, shard: int = 0,
               progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """n exact samples x [n, *event_shape] and their log q [n] (float64). With the
        config's sampling.seed and n = a shard's size they are exactly that shard of
        `flowsci sample` (shard seeds are derived from (seed, shard) the same way).
        Failed solves are dropped, so fewer than n rows may come back."""
        sp = self.config["runs"][self.name]["sampling"]
        seed = int(sp["seed"] if seed is None else seed)
        if n is None:
            n = shard_sizes(sp["n_samples"], sp["n_shards"])[shard]
        if n < 1:
            raise ValueError(f"Run.sample: n must be >= 1, got {n}")
        res = draw_samples(self.config, self.name, self.flow, self.target, int(n),
                           shard_seed(seed, shard), progress=progress,
                           desc=f"sample {self.name}")
        return res["x"].double().numpy(), res["log_q"].double().numpy()

    def log_prob(self, x: np.ndarray | torch.Tensor, batch_size: int | None = None) -> np.ndarray:
        """Exact log q(x) [B] of configurations x [B, *event_shape] under the density the
        sample stage draws from (with chirality fixing: log q + log 2 on the kept
        handedness, -inf on the other)."""
        x = self._tensor(x)
        bs = int(batch_size or self.config["runs"][self.name]["sampling"]["batch_size"])
        p = next(iter(self.flow.parameters()), torch.empty(0))
        out = []
        with torch.no_grad():
            for i in range(0, len(x), bs):
                out.append(self.flow.log_prob(x[i:i + bs].to(p.device, p.dtype)).cpu().double())
        lq = torch.cat(out) if out else torch.empty(0, dtype=torch.float64)
        chirality = self._chirality_ref(x.shape[1] if x.ndim > 1 else 0)
        if chirality is not None and len(x):
            lq = mirrored_log_prob(x.double(), lq, *chirality)
        return lq.numpy()

    def energy(self, x: np.ndarray | torch.Tensor) -> np.ndarray:
        """Reduced energies u(x) [B] of the target (+inf where the engine refuses x)."""
        with torch.no_grad():
            return self.target.energy(self._tensor(x)).double().numpy()

    def reweight(self, x: np.ndarray, log_q: np.ndarray,
                 energies: np.ndarray | None = None) -> dict[str, Any]:
        """Importance weights of samples x with their log q (as the reweight stage computes
        them): {'log_weights' [N] (unnormalised, -inf for dropped samples), 'weights' [N]
        (normalised), 'energies' [N], 'ess', 'ess_fraction', 'k_hat' (Pareto), 'max_weight',
        'log_z'}."""
        u = self.energy(x) if energies is None else np.asarray(energies, dtype=float)
        log_q = np.asarray(log_q, dtype=float)
        if len(u) != len(log_q):
            raise ValueError(f"Run.reweight: {len(u)} configurations but {len(log_q)} log q")
        lw = log_weights(u, log_q)
        if not np.isfinite(lw).any():
            raise DataError("Run.reweight: no sample has a finite energy and log q")
        d = weight_diagnostics(lw)
        return {"log_weights": lw, "weights": normalized_weights(lw), "energies": u,
                "ess": d["ess"], "ess_fraction": d["ess"] / len(lw), "k_hat": d["pareto_k"],
                "max_weight": d["max_weight"], "log_z": d["log_z"]}

    def samples(self) -> dict[str, Any]:
        """The gathered samples.h5 of `flowsci sample`: x, log_q, energies, attrs (checked to
        belong to this run and its current model.pt)."""
        path = self.files["samples"]
        out = read_samples(path)
        check_samples_file(self.config, self.name, path, out["attrs"])
        return out

    def reference(self) -> dict[str, Any]:
        """The reference data (test split of data.h5): x, u (reduced energies), kind."""
        return read_reference(self.files["data"], self.target)

    def reweighted(self) -> dict[str, Any]:
        """The reweight stage's outputs: reweight.h5 (log_weights, energies, estimates, attrs)
        and metrics.json under 'metrics'."""
        path = self.files["reweight"]
        if not path.is_file():
            raise DataError(f"{path}: reweight file missing (run `flowsci reweight --run "
                            f"{self.name}`)")
        out = read_reweight(path)
        out["metrics"] = read_metrics(self.files["metrics"])
        return out

    def export(self, fmt: str, output: str | os.PathLike, resample: int | None = None,
               source: str = "samples", seed: int = 0) -> dict[str, Any]:
        """`flowsci export`: the stored samples (all, or `resample` frames drawn by their
        importance weights) or the reference data as fmt = dcd | xtc | pdb (molecules, with
        the topology), extxyz (particles) or npy, weights and log q in <output>.weights.csv.
        Returns {'output', 'weights', 'n_frames', 'n_distinct'}."""
        from .stages.export import export
        return export(self.config, self.name, fmt, output, resample=resample, source=source,
                      seed=seed)

    @property
    def has_topology(self) -> bool:
        """Whether the system is a molecule with a topology (DCD/XTC/PDB export)."""
        from .stages.export import has_topology
        return has_topology(self.config, self.system, self.target)

    def _chirality_ref(self, n_atoms: int):
        if not self._chirality_read:
            self._chirality = chirality_reference(self.config, self.name, n_atoms)
            self._chirality_read = True
        return self._chirality

    def _tensor(self, x) -> torch.Tensor:
        x = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
        shape = tuple(self.target.event_shape)
        if tuple(x.shape[1:]) != shape:
            raise ValueError(f"configurations of shape {tuple(x.shape[1:])}, but the target "
                             f"{self.target.name} has event shape {shape} (x: [B, *{shape}])")
        return x.double()

    def __repr__(self) -> str:
        return (f"Run({self.name!r}, system={self.system!r}, target={self.target.name!r}, "
                f"model={self.config['runs'][self.name]['model']['name']!r}, "
                f"step={self.model.step})")


