"""OpenMM Langevin MD for OpenMM targets ('ala2', 'openmm'), e.g. alanine dipeptide at 300 K.

LangevinMiddleIntegrator (Zhang et al. 2019) at the target's temperature, friction
`friction_per_ps` (1/ps), time step `timestep_fs` (fs; no constraints, so keep it <= 1-2 fs),
on the target's platform ('Reference' is deterministic). The structure is energy-minimised
(if `minimize`), velocities drawn at the temperature, `burn_in` steps discarded, then one
frame kept every `thin` steps. Positions in nm, energies reduced (U / kB T).
OpenMM reads seed 0 as "choose at random", so seed s is passed to OpenMM as s + 1.
Resumable: every `checkpoint_every` frames the OpenMM checkpoint (Context.createCheckpoint():
positions, velocities, RNG state, as raw bytes) and the frames so far are saved (HDF5,
checkpoint.py) next to the output and reused when rerun. Diagnostics: the energy's
autocorrelation time, ESS and split R-hat (of the trajectory's two halves).
"""

from __future__ import annotations

import numpy as np

from ...progress import Progress
from .base import GENERATORS, Checkpoint, GeneratedData, trajectory_data


@GENERATORS.register("openmm_md")
def openmm_md(target, n_samples: int = 1000, burn_in: int = 5000, thin: int = 250,
              timestep_fs: float = 1.0, friction_per_ps: float = 1.0, minimize: bool = True,
              seed: int = 0, checkpoint: str | None = None, checkpoint_every: int = 200):
    """Build an OpenMM Langevin sampler for an OpenMM target; call it to run."""
    if not hasattr(target, "system") or not hasattr(target, "topology"):
        raise ValueError(f"openmm_md needs an OpenMM target ('ala2', 'openmm'), got {target.name!r}")
    settings = {"n_samples": n_samples, "burn_in": burn_in, "thin": thin,
                "timestep_fs": timestep_fs, "friction_per_ps": friction_per_ps,
                "minimize": minimize, "seed": seed}
    ckpt = Checkpoint(checkpoint, {"generator": "openmm_md", **settings, "target": target.name,
                                   **target.attrs()}, checkpoint_every)

    def run(progress: bool = True) -> GeneratedData:
        import openmm
        from openmm import unit

        integ = openmm.LangevinMiddleIntegrator(
            target.temperature * unit.kelvin, friction_per_ps / unit.picosecond,
            timestep_fs * unit.femtoseconds)
        integ.setRandomNumberSeed(seed + 1)
        ctx = openmm.Context(target.system, integ,
                             openmm.Platform.getPlatformByName(target.platform))
        saved = ckpt.load()
        frames: list[np.ndarray] = []
        energies: list[float] = []
        e_min = None
        if saved is not None:
            ctx.loadCheckpoint(saved["omm"])
            frames, energies = list(saved["frames"]), list(saved["energies"])
            e_min = saved["e_min"]
        else:
            ctx.setPositions(target.positions0)
            if minimize:
                openmm.LocalEnergyMinimizer.minimize(ctx, 1.0, 0)
            e_min = ctx.getState(getEnergy=True).getPotentialEnergy().value_in_unit(
                unit.kilojoule_per_mole)
            ctx.setVelocitiesToTemperature(target.temperature * unit.kelvin, seed + 1)
            integ.step(burn_in)
        with Progress(n_samples, f"openmm_md {target.name}", initial=len(frames),
                      unit="frame", bar=progress) as bar:
            while len(frames) < n_samples:
                integ.step(thin)
                s = ctx.getState(getPositions=True, getEnergy=True)
                pos = s.getPositions(asNumpy=True).value_in_unit(unit.nanometer)
                frames.append(np.asarray(pos))
                energies.append(s.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole))
                bar.update(1)
                if ckpt.due(len(frames)) and len(frames) < n_samples:
                    ckpt.save({"omm": ctx.createCheckpoint(), "frames": np.stack(frames),
                               "energies": np.asarray(energies), "e_min": e_min})
        return trajectory_data(target, frames, energies, {
            **settings, "sampler": "OpenMM LangevinMiddleIntegrator",
            "platform": target.platform, "minimized_energy_kj_mol": e_min}, units="nm")

    return run
