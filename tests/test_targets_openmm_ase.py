"""ala2 (OpenMM) and ase (ASE calculator) targets: energies agree with the engines' own values."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from flowsci.systems import build_target

ROOT = Path(__file__).resolve().parents[1]


def test_openmm_module_imports_without_openmm():
    code = ("import sys; sys.modules['openmm'] = None\n"
            "import flowsci.systems as s\n"
            "assert 'ala2' in s.TARGETS.names()\n"
            "try:\n    s.build_target({'name': 'ala2'})\nexcept ImportError as e:\n"
            "    assert 'openmm' in str(e).lower(); print('ok')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ok"


def _reference_context(solvent: str):
    """An OpenMM context built here, independently of flowsci, from the shipped PDB."""
    openmm = pytest.importorskip("openmm")
    from openmm import app, unit
    pdb = app.PDBFile(str(ROOT / "data" / "alanine-dipeptide.pdb"))
    files = ["amber99sbildn.xml"] + (["implicit/obc2.xml"] if solvent == "implicit" else [])
    system = app.ForceField(*files).createSystem(pdb.topology, nonbondedMethod=app.NoCutoff,
                                                 constraints=None)
    ctx = openmm.Context(system, openmm.VerletIntegrator(0.001 * unit.picosecond),
                         openmm.Platform.getPlatformByName("Reference"))
    ctx.setPositions(pdb.positions)
    return ctx, unit


@pytest.mark.parametrize("solvent", ["vacuum", "implicit"])
def test_ala2_minimised_energy_matches_openmm(solvent):
    pytest.importorskip("openmm")
    import openmm
    ctx, unit = _reference_context(solvent)
    openmm.LocalEnergyMinimizer.minimize(ctx, 1.0, 0)
    state = ctx.getState(getEnergy=True, getPositions=True)
    e_ref = state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
    x = torch.as_tensor(state.getPositions(asNumpy=True).value_in_unit(unit.nanometer))[None]
    t = build_target({"name": "ala2", "params": {"solvent": solvent, "temperature": 300.0}})
    kT = 8.314462618e-3 * 300.0  # kJ/mol
    u = t.energy(x)
    assert u.shape == (1,)
    assert u.item() * kT == pytest.approx(e_ref, rel=1e-9, abs=1e-6)
    # a translated and rotated copy has the same energy (no cutoff, vacuum or GB)
    q, _ = torch.linalg.qr(torch.randn(3, 3, dtype=torch.float64))
    q = q * torch.sign(torch.det(q))
    assert t.energy(x @ q.T + 1.0).item() == pytest.approx(u.item(), abs=1e-6)
    assert len(t.atomic_numbers) == 22
    assert sorted(set(t.atomic_numbers)) == [1, 6, 7, 8]
    assert t.atomic_numbers.count(1) == 12


def test_ala2_gradient_is_minus_force_over_kT():
    pytest.importorskip("openmm")
    t = build_target({"name": "ala2", "params": {"temperature": 350.0}})
    x = t.init_positions(2).requires_grad_(True)
    u = t.energy(x)
    u.sum().backward()
    e, f = t.potential(x.detach().numpy())
    kT = 8.314462618e-3 * 350.0
    assert np.allclose(u.detach().numpy(), e / kT)
    assert np.allclose(x.grad.numpy(), -f / kT)
    # float32 input gives float32 output close to the float64 value
    assert t.energy(x.detach().float()).dtype == torch.float32


def test_ase_target_energy_equals_calculator(tmp_path):
    import ase.io
    from ase.calculators.emt import EMT
    from ase.cluster import Icosahedron
    atoms = Icosahedron("Cu", 2)
    path = tmp_path / "cu13.xyz"
    ase.io.write(path, atoms)
    t = build_target({"name": "ase", "params": {"structure": str(path), "calculator": "emt",
                                                "temperature": 500.0}})
    x = t.init_positions(1).requires_grad_(True)
    u = t.energy(x)
    ref = atoms.copy()
    ref.calc = EMT()
    ref.positions = x.detach().numpy()[0]
    kT = 8.617333262e-5 * 500.0
    assert u.item() == pytest.approx(ref.get_potential_energy() / kT, rel=1e-12)
    u.sum().backward()
    assert np.allclose(x.grad.numpy()[0], -ref.get_forces() / kT)
    assert t.atomic_numbers == [29] * 13
    assert t.symmetry.permutations == (tuple(range(13)),)
