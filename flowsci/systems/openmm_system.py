"""OpenMM force-field targets: alanine dipeptide ('ala2') and any OpenMM/Amber system ('openmm').

openmm is imported lazily, inside the constructor, so this module imports without it.
Positions are in nm (OpenMM's unit); energy(x) = U(x) / (kB T) with U the OpenMM potential
energy in kJ/mol and kB = R = 8.314462618e-3 kJ/mol/K. Gradients come from OpenMM's forces.

Where the System comes from (one of):
  pdb + forcefield   OpenMM ForceField XML files applied to the PDB (optionally restricted to
                     an atom selection, e.g. the solute of a solvated PDB);
  system_xml + pdb   a serialized `System` (openmm.XmlSerializer) with its PDB/PDBx topology;
  prmtop (+ inpcrd)  an Amber prmtop, with the implicit-solvent choice (HCT, OBC1, OBC2, GBn,
                     GBn2) and the nonbonded method; coordinates from inpcrd/rst7 or a PDB.

ala2: ACE-ALA-NME (22 atoms), Amber ff99SB-ILDN (`amber99sbildn.xml`), no cutoff, no
constraints, vacuum or OBC2 implicit solvent (`implicit/obc2.xml`), 300 K, as in the
Boltzmann-generator literature (Noe et al. 2019, Koehler et al. 2021). The structure
(data/alanine-dipeptide.pdb) is the standard capped-dipeptide geometry (openmmtools'
alanine-dipeptide-nowater coordinates) and is embedded below.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
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


# solvent param -> OpenMM implicit-solvent model (None: vacuum); 'implicit' is OBC2
SOLVENTS = {"vacuum": None, "implicit": "OBC2", "hct": "HCT", "obc1": "OBC1", "obc2": "OBC2",
            "gbn": "GBn", "gbn2": "GBn2"}
NONBONDED = ("NoCutoff", "CutoffNonPeriodic", "CutoffPeriodic", "PME")


def _file(path: str | None, what: str) -> str | None:
    if path is not None and not Path(path).is_file():
        raise ValueError(f"{what} file {path} does not exist")
    return None if path is None else str(path)


def _structure(app: Any, path: str) -> Any:
    """PDBFile / PDBxFile by extension: .topology and positions."""
    pdbx = Path(path).suffix.lower() in (".cif", ".pdbx", ".mmcif")
    return app.PDBxFile(path) if pdbx else app.PDBFile(path)


@dataclass
class OpenMMTarget(ParticleTarget):
    """A molecule with an OpenMM force field. Positions in nm; energies reduced at `temperature` K.

    pdb: PDB/PDBx file (None: the embedded alanine dipeptide); forcefield: OpenMM XML file(s)
    (default amber99sbildn.xml); system_xml: serialized System (needs pdb for its topology);
    prmtop, inpcrd: Amber topology/parameters and coordinates (inpcrd or pdb optional);
    solvent: 'vacuum', 'implicit' (= OBC2), 'HCT', 'OBC1', 'OBC2', 'GBn', 'GBn2' (pdb/prmtop;
    a System XML carries its own); atoms: MDTraj selection or indices restricting a pdb +
    forcefield system to those atoms (e.g. 'protein' of a solvated PDB); nonbonded_method:
    NoCutoff, CutoffNonPeriodic, CutoffPeriodic, PME (cutoff_nm); platform: 'Reference'
    (deterministic) or 'CPU'.
    """

    pdb: str | None = None
    forcefield: str | list[str] | None = None
    solvent: str = "vacuum"
    temperature: float = 300.0
    platform: str = "Reference"
    system_xml: str | None = None
    prmtop: str | None = None
    inpcrd: str | None = None
    atoms: str | list[int] | None = None
    nonbonded_method: str = "NoCutoff"
    cutoff_nm: float = 1.0
    length_unit: str = field(init=False, default="nm")

    def __post_init__(self) -> None:
        openmm = _import_openmm()
        if self.temperature <= 0:
            raise ValueError(f"openmm target: temperature must be positive (K), "
                             f"got {self.temperature}")
        if str(self.solvent).lower() not in SOLVENTS:
            raise ValueError(f"solvent must be one of vacuum, implicit, HCT, OBC1, OBC2, GBn, "
                             f"GBn2, got {self.solvent!r}")
        if self.nonbonded_method not in NONBONDED:
            raise ValueError(f"nonbonded_method must be one of {', '.join(NONBONDED)}, "
                             f"got {self.nonbonded_method!r}")
        self.source = ("system_xml" if self.system_xml else "prmtop" if self.prmtop
                       else "forcefield")
        self._check_combination()
        self.positions0: np.ndarray | None = None
        build = {"forcefield": self._from_forcefield, "system_xml": self._from_xml,
                 "prmtop": self._from_prmtop}[self.source]
        self.topology, self.system, pos = build(openmm)
        if pos is not None:
            self.positions0 = np.array(pos.value_in_unit(openmm.unit.nanometer), dtype=np.float64)
        if self.system.getNumParticles() != self.topology.getNumAtoms():
            raise ValueError(f"the System has {self.system.getNumParticles()} particles, its "
                             f"topology {self.topology.getNumAtoms()} atoms")
        if self.positions0 is not None and len(self.positions0) != self.topology.getNumAtoms():
            raise ValueError(f"coordinates have {len(self.positions0)} atoms, the topology "
                             f"{self.topology.getNumAtoms()}")
        self.n_particles = self.topology.getNumAtoms()
        self.dim = 3
        super().__post_init__()
        if self.name == "target":
            self.name = "openmm"
        self._context = openmm.Context(self.system, openmm.VerletIntegrator(0.001),
                                       openmm.Platform.getPlatformByName(self.platform))
        self.kT = R_KJ * self.temperature  # kJ/mol

    def _check_combination(self) -> None:
        if self.system_xml and self.prmtop:
            raise ValueError("give system_xml or prmtop, not both")
        if self.source != "forcefield":
            for key in ("forcefield", "atoms"):
                if getattr(self, key) is not None:
                    raise ValueError(f"{key} applies to pdb + forcefield targets only; a "
                                     f"{self.source} target is used as it is (for a subset of "
                                     "atoms, give a System/prmtop of those atoms)")
        if self.source == "system_xml":
            if self.pdb is None:
                raise ValueError("system_xml needs pdb: the PDB/PDBx topology of the System")
            if self.solvent != "vacuum" or self.nonbonded_method != "NoCutoff":
                raise ValueError("a System XML carries its own solvent model and nonbonded "
                                 "method; leave solvent and nonbonded_method unset")
        if self.inpcrd is not None and self.source != "prmtop":
            raise ValueError("inpcrd applies to prmtop targets only")

    def _create_kwargs(self, app: Any) -> dict:
        return {"nonbondedMethod": getattr(app, self.nonbonded_method),
                "nonbondedCutoff": self.cutoff_nm, "constraints": None}

    def _from_forcefield(self, openmm: Any) -> tuple[Any, Any, Any]:
        app = openmm.app
        pdb = (app.PDBFile(io.StringIO(ALA2_PDB)) if self.pdb is None
               else _structure(app, _file(self.pdb, "pdb")))
        top, pos = pdb.topology, pdb.getPositions(asNumpy=True)
        if self.atoms is not None:
            top, pos = self._select(app, top, pos)
        files = [self.forcefield or "amber99sbildn.xml"] if isinstance(
            self.forcefield, (str, type(None))) else list(self.forcefield)
        gb = SOLVENTS[str(self.solvent).lower()]
        if gb is not None:
            files.append(f"implicit/{gb.lower()}.xml")
        try:
            ff = app.ForceField(*files)
            system = ff.createSystem(top, **self._create_kwargs(app))
        except (ValueError, OSError) as e:
            what = f" restricted to atoms {self.atoms!r}" if self.atoms is not None else ""
            raise ValueError(f"force field {files} cannot build a System for "
                             f"{self.pdb or 'alanine dipeptide'}{what}: "
                             f"{str(e).splitlines()[0]}") from None
        return top, system, pos

    def _select(self, app: Any, top: Any, pos: Any) -> tuple[Any, Any]:
        """Keep the selected atoms (MDTraj selection or indices) of a PDB topology."""
        from ..atom_selection import import_mdtraj, select_atoms
        from ..errors import DataError

        md = import_mdtraj()
        try:
            keep = set(select_atoms(md.Topology.from_openmm(top), self.atoms,
                                    f"pdb {self.pdb or 'alanine dipeptide'}").tolist())
        except DataError as e:
            raise ValueError(str(e)) from None
        modeller = app.Modeller(top, pos)
        modeller.delete([a for a in top.atoms() if a.index not in keep])
        return modeller.topology, modeller.getPositions()

    def _from_xml(self, openmm: Any) -> tuple[Any, Any, Any]:
        path = _file(self.system_xml, "system_xml")
        try:
            with open(path) as f:
                system = openmm.XmlSerializer.deserialize(f.read())
        except Exception as e:
            raise ValueError(f"{path}: not a serialized OpenMM System ({e})") from None
        if not isinstance(system, openmm.System):
            raise ValueError(f"{path}: holds a serialized {type(system).__name__}, not a System")
        pdb = _structure(openmm.app, _file(self.pdb, "pdb"))
        return pdb.topology, system, pdb.getPositions(asNumpy=True)

    def _from_prmtop(self, openmm: Any) -> tuple[Any, Any, Any]:
        app = openmm.app
        path = _file(self.prmtop, "prmtop")
        try:
            prmtop = app.AmberPrmtopFile(path)
        except Exception as e:
            raise ValueError(f"{path}: cannot read the Amber prmtop ({e})") from None
        gb = SOLVENTS[str(self.solvent).lower()]
        system = prmtop.createSystem(implicitSolvent=None if gb is None else getattr(app, gb),
                                     **self._create_kwargs(app))
        pos = None
        if self.inpcrd is not None:
            pos = app.AmberInpcrdFile(_file(self.inpcrd, "inpcrd")).getPositions(asNumpy=True)
        elif self.pdb is not None:
            pos = _structure(app, _file(self.pdb, "pdb")).getPositions(asNumpy=True)
        return prmtop.topology, system, pos

    @property
    def atom_selection(self) -> str | list[int] | None:
        """The atom selection this target was restricted to (preprocess reads the same atoms)."""
        return self.atoms

    @property
    def symmetry(self) -> Symmetry:
        # chiral molecule: proper rotations only; atoms are distinguishable (no permutations);
        # a periodic box breaks rotations
        periodic = self.system.usesPeriodicBoundaryConditions()
        return Symmetry(rotations=None if periodic else "SO", translations=True, permutations=())

    @property
    def atomic_numbers(self) -> list[int]:
        return [a.element.atomic_number if a.element is not None else 0
                for a in self.topology.atoms()]

    def potential(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """OpenMM energies [B] (kJ/mol) and forces [B, n, 3] (kJ/mol/nm). x: [B, n, 3] in nm.

        One context evaluates the batch frame by frame; a frame OpenMM refuses (NaN
        coordinates) gets energy NaN (reduced to +inf by `energy`)."""
        openmm = __import__("openmm")
        unit = openmm.unit
        e = np.empty(len(x))
        f = np.zeros_like(x)
        for b, xb in enumerate(x):
            try:
                self._context.setPositions(xb)
                s = self._context.getState(getEnergy=True, getForces=True)
            except openmm.OpenMMException:
                e[b] = np.nan
                continue
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
        """The structure's coordinates, centred, repeated n times. -> [n, n_atoms, 3] (nm)."""
        if self.positions0 is None:
            raise ValueError(f"{self.name}: no coordinates (give inpcrd or pdb with the prmtop)")
        x = torch.as_tensor(self.positions0, dtype=dtype)
        return (x - x.mean(0)).expand(n, -1, -1).clone()

    def attrs(self) -> dict:
        a = {"pdb": self.pdb or "embedded alanine dipeptide",
             "forcefield": self.forcefield or "amber99sbildn.xml",
             "solvent": self.solvent, "temperature_K": self.temperature,
             "length_unit": "nm", "n_particles": self.n_particles}
        if self.source != "forcefield":
            a.update(source=self.source, pdb=self.pdb, forcefield=None)
            a.update({k: getattr(self, k) for k in ("system_xml", "prmtop", "inpcrd")
                      if getattr(self, k) is not None})
        if self.atoms is not None:
            a["atoms"] = self.atoms
        if self.nonbonded_method != "NoCutoff":
            a.update(nonbonded_method=self.nonbonded_method, cutoff_nm=self.cutoff_nm)
        return {k: v for k, v in a.items() if v is not None}


@TARGETS.register("ala2")
def ala2(solvent: str = "vacuum", temperature: float = 300.0, forcefield: str = "amber99sbildn.xml",
         platform: str = "Reference") -> OpenMMTarget:
    """Alanine dipeptide (22 atoms) in vacuum or implicit solvent, reduced at `temperature` K."""
    t = OpenMMTarget(pdb=None, forcefield=forcefield, solvent=solvent, temperature=temperature,
                     platform=platform)
    t.name = "ala2"
    return t


@TARGETS.register("openmm")
def openmm_pdb(pdb: str | None = None, forcefield: str | list[str] | None = None,
               solvent: str = "vacuum", temperature: float = 300.0, platform: str = "Reference",
               system_xml: str | None = None, prmtop: str | None = None,
               inpcrd: str | None = None, atoms: str | list[int] | None = None,
               nonbonded_method: str = "NoCutoff", cutoff_nm: float = 1.0) -> OpenMMTarget:
    """Any OpenMM system: a PDB with force-field XML files (protonated; optionally restricted to
    `atoms`), a serialized System XML with its PDB, or an Amber prmtop (+ inpcrd)."""
    if pdb is None and system_xml is None and prmtop is None:
        raise ValueError("give pdb (+ forcefield), system_xml + pdb, or prmtop")
    return OpenMMTarget(pdb=pdb, forcefield=forcefield, solvent=solvent,
                        temperature=temperature, platform=platform, system_xml=system_xml,
                        prmtop=prmtop, inpcrd=inpcrd, atoms=atoms,
                        nonbonded_method=nonbonded_method, cutoff_nm=cutoff_nm)
