"""OpenMM force-field targets: alanine dipeptide ('ala2') and any PDB ('openmm').

openmm is imported lazily, inside the constructor, so this module imports without it.
Positions are in nm (OpenMM's unit); energy(x) = U(x) / (kB T) with U the OpenMM potential
energy in kJ/mol and kB = R = 8.314462618e-3 kJ/mol/K. Gradients come from OpenMM's forces.

ala2: ACE-ALA-NME (22 atoms), Amber ff99SB-ILDN (`amber99sbildn.xml`), no cutoff, no
constraints, vacuum or OBC2 implicit solvent (`implicit/obc2.xml`), 300 K, as in the
Boltzmann-generator literature (Noe et al. 2019, Koehler et al. 2021). The structure
(data/alanine-dipeptide.pdb) is the standard capped-dipeptide geometry (openmmtools'
alanine-dipeptide-nowater coordinates) and is embedded below.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from .base import TARGETS, ParticleTarget, Symmetry

R_KJ = 8.314462618e-3  # kJ/mol/K

ALA2_PDB = """\
HETATM    1  H1  ACE A   1      19.745   3.573  20.603  1.00  0.00           H
HETATM    2  CH3 ACE A   1      18.882   3.072  21.040  1.00  0.00           C
HETATM    3  H2  ACE A   1      19.299   2.583  21.920  1.00  0.00           H
HETATM    4  H3  ACE A   1      18.428   2.368  20.342  1.00  0.00           H
HETATM    5  C   ACE A   1      17.901   4.069  21.635  1.00  0.00           C
HETATM    6  O   ACE A   1      16.732   3.819  21.870  1.00  0.00           O
ATOM      7  N   ALA A   2      18.376   5.305  21.721  1.00  0.00           N
ATOM      8  H   ALA A   2      19.385   5.264  21.729  1.00  0.00           H
ATOM      9  CA  ALA A   2      17.741   6.537  22.185  1.00  0.00           C
ATOM     10  HA  ALA A   2      16.674   6.456  21.975  1.00  0.00           H
ATOM     11  CB  ALA A   2      18.128   6.686  23.697  1.00  0.00           C
ATOM     12  HB1 ALA A   2      17.646   7.564  24.127  1.00  0.00           H
ATOM     13  HB2 ALA A   2      19.202   6.812  23.836  1.00  0.00           H
ATOM     14  HB3 ALA A   2      17.804   5.840  24.302  1.00  0.00           H
ATOM     15  C   ALA A   2      18.239   7.806  21.423  1.00  0.00           C
ATOM     16  O   ALA A   2      19.120   7.699  20.619  1.00  0.00           O
HETATM   17  N   NME A   3      17.667   8.950  21.653  1.00  0.00           N
HETATM   18  H   NME A   3      16.917   8.869  22.326  1.00  0.00           H
HETATM   19  C   NME A   3      17.764  10.096  20.832  1.00  0.00           C
HETATM   20  H1  NME A   3      16.789  10.514  20.583  1.00  0.00           H
HETATM   21  H2  NME A   3      18.366  10.885  21.283  1.00  0.00           H
HETATM   22  H3  NME A   3      18.270   9.740  19.934  1.00  0.00           H
TER      23      NME A   3
END
"""


class ExternalEnergy(torch.autograd.Function):
    """u(x) from a numpy callback that also returns du/dx; differentiable once (first order).

    fn: float64 array [B, n, 3] -> (u [B], du/dx [B, n, 3]). Runs on CPU; the result is moved
    back to x's device and dtype.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, fn: Callable) -> torch.Tensor:  # type: ignore[override]
        u, grad = fn(x.detach().cpu().double().numpy())
        ctx.save_for_backward(torch.as_tensor(grad, dtype=x.dtype, device=x.device))
        return torch.as_tensor(u, dtype=x.dtype, device=x.device)

    @staticmethod
    def backward(ctx, g: torch.Tensor):  # type: ignore[override]
        (grad,) = ctx.saved_tensors
        return g[:, None, None] * grad, None


def _import_openmm() -> Any:
    try:
        import openmm
        import openmm.app
    except ImportError:
        raise ImportError("this target needs OpenMM: pip install openmm "
                          "(or conda install -c conda-forge openmm)") from None
    return openmm


@dataclass
class OpenMMTarget(ParticleTarget):
    """A molecule with an OpenMM force field. Positions in nm; energies reduced at `temperature` K.

    pdb: path to a PDB (None: the embedded alanine dipeptide); forcefield: OpenMM XML file;
    solvent: 'vacuum' or 'implicit' (OBC2 GB); platform: 'Reference' (deterministic) or 'CPU'.
    """

    pdb: str | None = None
    forcefield: str = "amber99sbildn.xml"
    solvent: str = "vacuum"
    temperature: float = 300.0
    platform: str = "Reference"
    length_unit: str = field(init=False, default="nm")

    def __post_init__(self) -> None:
        openmm = _import_openmm()
        app = openmm.app
        if self.solvent not in ("vacuum", "implicit"):
            raise ValueError(f"{self.name}: solvent must be 'vacuum' or 'implicit', "
                             f"got {self.solvent!r}")
        if self.temperature <= 0:
            raise ValueError(f"openmm target: temperature must be positive (K), "
                             f"got {self.temperature}")
        pdb = app.PDBFile(io.StringIO(ALA2_PDB) if self.pdb is None else str(self.pdb))
        files = [self.forcefield] + (["implicit/obc2.xml"] if self.solvent == "implicit" else [])
        self.topology = pdb.topology
        self.system = app.ForceField(*files).createSystem(
            pdb.topology, nonbondedMethod=app.NoCutoff, constraints=None)
        self.positions0 = np.array(pdb.getPositions(asNumpy=True).value_in_unit(
            openmm.unit.nanometer), dtype=np.float64)
        self.n_particles = self.topology.getNumAtoms()
        self.dim = 3
        super().__post_init__()
        if self.name == "target":
            self.name = "openmm"
        self._context = openmm.Context(self.system, openmm.VerletIntegrator(0.001),
                                       openmm.Platform.getPlatformByName(self.platform))
        self.kT = R_KJ * self.temperature  # kJ/mol

    @property
    def symmetry(self) -> Symmetry:
        # chiral molecule: proper rotations only; atoms are distinguishable (no permutations)
        return Symmetry(rotations="SO", translations=True, permutations=())

    @property
    def atomic_numbers(self) -> list[int]:
        return [a.element.atomic_number for a in self.topology.atoms()]

    def potential(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """OpenMM energies [B] (kJ/mol) and forces [B, n, 3] (kJ/mol/nm). x: [B, n, 3] in nm."""
        unit = __import__("openmm").unit
        e = np.empty(len(x))
        f = np.empty_like(x)
        for b, xb in enumerate(x):
            self._context.setPositions(xb)
            s = self._context.getState(getEnergy=True, getForces=True)
            e[b] = s.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
            f[b] = s.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer)
        return e, f

    def _reduced(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        e, f = self.potential(x)
        bad = ~np.isfinite(e)
        e[bad] = np.inf
        f[bad] = 0.0
        return e / self.kT, -f / self.kT

    def energy(self, x: torch.Tensor) -> torch.Tensor:
        return ExternalEnergy.apply(x, self._reduced)

    def init_positions(self, n: int, generator: torch.Generator | None = None,
                       dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """The PDB structure, centred, repeated n times. -> [n, n_atoms, 3] (nm)."""
        x = torch.as_tensor(self.positions0, dtype=dtype)
        return (x - x.mean(0)).expand(n, -1, -1).clone()

    def attrs(self) -> dict:
        return {"pdb": self.pdb or "embedded alanine dipeptide", "forcefield": self.forcefield,
                "solvent": self.solvent, "temperature_K": self.temperature,
                "length_unit": "nm", "n_particles": self.n_particles}


@TARGETS.register("ala2")
def ala2(solvent: str = "vacuum", temperature: float = 300.0, forcefield: str = "amber99sbildn.xml",
         platform: str = "Reference") -> OpenMMTarget:
    """Alanine dipeptide (22 atoms) in vacuum or implicit solvent, reduced at `temperature` K."""
    t = OpenMMTarget(pdb=None, forcefield=forcefield, solvent=solvent, temperature=temperature,
                     platform=platform)
    t.name = "ala2"
    return t


@TARGETS.register("openmm")
def openmm_pdb(pdb: str, forcefield: str = "amber99sbildn.xml", solvent: str = "vacuum",
               temperature: float = 300.0, platform: str = "Reference") -> OpenMMTarget:
    """Any PDB whose residues the force field knows (protonated, no water)."""
    return OpenMMTarget(pdb=pdb, forcefield=forcefield, solvent=solvent,
                        temperature=temperature, platform=platform)
