"""ASE Langevin MD for the 'ase' target (any ASE-readable structure + an ASE calculator).

ase.md.langevin.Langevin (Vanden-Eijnden & Ciccotti 2006 integrator) at the target's
temperature (K), time step `timestep_fs` (fs), friction `friction_per_fs` (1/fs), with the
centre of mass fixed (ase.constraints.FixCom). Velocities start from Maxwell-Boltzmann at the
temperature (no net momentum or rotation), `burn_in` steps are discarded, then one frame is
kept every `thin` steps. Positions in Å; energies reduced, E / (kB T) with E in eV.
Seeded by a numpy Generator(seed); resumable: every `checkpoint_every` frames the positions,
momenta, RNG state (JSON) and frames so far are saved (HDF5, checkpoint.py) next to the output
and reused when rerun. Diagnostics: the energy's autocorrelation time, ESS and split R-hat.
"""

from __future__ import annotations

import numpy as np

from ...progress import Progress
from .base import GENERATORS, Checkpoint, GeneratedData, trajectory_data


@GENERATORS.register("ase_langevin")
def ase_langevin(target, n_samples: int = 1000, burn_in: int = 1000, thin: int = 20,
                 timestep_fs: float = 2.0, friction_per_fs: float = 0.01, seed: int = 0,
                 checkpoint: str | None = None, checkpoint_every: int = 200):
    """Build an ASE Langevin sampler for an 'ase' target; call it to run."""
    if not hasattr(target, "atoms"):
        raise ValueError(f"ase_langevin needs the 'ase' target (structure + calculator), "
                         f"got {target.name!r}")
    settings = {"n_samples": n_samples, "burn_in": burn_in, "thin": thin,
                "timestep_fs": timestep_fs, "friction_per_fs": friction_per_fs, "seed": seed}
    ckpt = Checkpoint(checkpoint, {"generator": "ase_langevin", **settings,
                                   "target": target.name, **target.attrs()}, checkpoint_every)

    def run(progress: bool = True) -> GeneratedData:
        from ase import units
        from ase.constraints import FixCom
        from ase.md.langevin import Langevin
        from ase.md import velocitydistribution as vd

        atoms = target.atoms.copy()
        atoms.calc = target.atoms.calc
        atoms.set_constraint(FixCom())
        rng = np.random.default_rng(seed)
        saved = ckpt.load()
        frames: list[np.ndarray] = []
        energies: list[float] = []
        if saved is not None:
            atoms.positions = saved["positions"]
            atoms.set_momenta(saved["momenta"])
            rng.bit_generator.state = saved["rng"]
            frames, energies = list(saved["frames"]), list(saved["energies"])
        else:
            thermalize = getattr(vd, "thermalize_momenta", vd.MaxwellBoltzmannDistribution)
            thermalize(atoms, temperature_K=target.temperature, rng=rng)  # ASE >= 3.29 / older
            vd.Stationary(atoms)
            if not atoms.pbc.any():
                vd.ZeroRotation(atoms)
        dyn = Langevin(atoms, timestep_fs * units.fs, temperature_K=target.temperature,
                       friction=friction_per_fs / units.fs, fixcm=False, rng=rng)
        if saved is None and burn_in > 0:
            dyn.run(burn_in)
        with Progress(n_samples, f"ase_langevin {target.name}", initial=len(frames),
                      unit="frame", bar=progress) as bar:
            while len(frames) < n_samples:
                dyn.run(thin)
                frames.append(atoms.get_positions().copy())
                energies.append(float(atoms.get_potential_energy()))
                bar.update(1)
                if ckpt.due(len(frames)) and len(frames) < n_samples:
                    ckpt.save({"positions": atoms.get_positions(), "momenta": atoms.get_momenta(),
                               "rng": rng.bit_generator.state, "frames": np.stack(frames),
                               "energies": np.asarray(energies)})
        return trajectory_data(target, frames, energies, {
            **settings, "sampler": "ase.md.langevin.Langevin", "calculator": target.calculator},
            units="angstrom")

    return run
