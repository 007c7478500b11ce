"""Test helper: write an Amber prmtop from an OpenMM System built with an Amber force field.

Tests need a real prmtop without AmberTools or ParmEd. This writes the sections OpenMM's
AmberPrmtopFile reads (units: kcal/mol, Å, charges x 18.2223) from a System with
HarmonicBond/HarmonicAngle/PeriodicTorsion/Nonbonded forces (no cutoff, no constraints),
Lorentz-Berthelot LJ types and Amber 1-4 scaling (SCEE 1.2, SCNB 2.0), plus GB radii/screen
(mbondi2, OBC2 defaults). Each 1-4 pair is carried by exactly one dihedral entry; the others
for the same pair get a negative third index, impropers a negative fourth, as in LEaP.
"""

from __future__ import annotations

import math

KCAL = 4.184
CHARGE = 18.2223


def _block(flag: str, fmt: str, values: list, per_line: int, width: int, conv) -> list[str]:
    lines = [f"%FLAG {flag:<74}", f"%FORMAT({fmt})"]
    items = [conv(v) for v in values]
    for i in range(0, len(items), per_line):
        lines.append("".join(items[i:i + per_line]))
    if not items:
        lines.append("")
    return lines


def _ints(flag, values):
    return _block(flag, "10I8", values, 10, 8, lambda v: f"{int(v):8d}")


def _floats(flag, values):
    return _block(flag, "5E16.8", values, 5, 16, lambda v: f"{float(v):16.8E}")


def _strs(flag, values):
    return _block(flag, "20a4", values, 20, 4, lambda v: f"{str(v)[:4]:<4}")


def write_prmtop(path, topology, system) -> None:
    from openmm.app.internal import customgbforces as customgb

    forces = {type(f).__name__: f for f in system.getForces()}
    nb = forces["NonbondedForce"]
    atoms = list(topology.atoms())
    n = len(atoms)
    hydrogen = [a.element.symbol == "H" for a in atoms]
    params = [nb.getParticleParameters(i) for i in range(n)]
    q = [p[0]._value for p in params]
    sig_eps = [(round(p[1]._value, 10), round(p[2]._value, 10)) for p in params]
    types = sorted(set(sig_eps))
    type_of = [types.index(se) + 1 for se in sig_eps]
    nt = len(types)
    acoef, bcoef = [], []
    for j in range(nt):  # LJ arrays ordered (1,1), (1,2), (2,2), (1,3), ...
        for i in range(j + 1):
            s = 10 * (types[i][0] + types[j][0]) / 2  # Å
            e = math.sqrt(types[i][1] * types[j][1]) / KCAL
            rmin6 = (2 ** (1 / 6) * s) ** 6
            acoef.append(e * rmin6 ** 2)
            bcoef.append(2 * e * rmin6)
    nbindex = [0] * (nt * nt)
    for i in range(1, nt + 1):
        for j in range(1, nt + 1):
            lo, hi = min(i, j), max(i, j)
            nbindex[nt * (i - 1) + (j - 1)] = hi * (hi - 1) // 2 + lo

    bonds_h, bonds, bond_types = [], [], []
    hb = forces["HarmonicBondForce"]
    bonded = set()
    for b in range(hb.getNumBonds()):
        i, j, r0, k = hb.getBondParameters(b)
        bonded.add((min(i, j), max(i, j)))
        bond_types.append((k._value / 2 / KCAL / 100, r0._value * 10))
        (bonds_h if hydrogen[i] or hydrogen[j] else bonds).append((3 * i, 3 * j, b + 1))
    angles_h, angles, angle_types = [], [], []
    ha = forces["HarmonicAngleForce"]
    for a in range(ha.getNumAngles()):
        i, j, k, th0, kk = ha.getAngleParameters(a)
        angle_types.append((kk._value / 2 / KCAL, th0._value))
        (angles_h if hydrogen[i] or hydrogen[k] else angles).append((3 * i, 3 * j, 3 * k, a + 1))

    pairs14 = set()
    excluded = [set() for _ in range(n)]
    for e in range(nb.getNumExceptions()):
        i, j, qq, s, eps = nb.getExceptionParameters(e)
        excluded[min(i, j)].add(max(i, j))
        if qq._value != 0 or eps._value != 0:
            pairs14.add((min(i, j), max(i, j)))
    pt = forces["PeriodicTorsionForce"]
    dih_types, dih_h, dih = [], [], []
    carried = set()

    def add(i, j, k, l, per, phase, kk, proper):
        if k == 0 or l == 0:
            i, j, k, l = l, k, j, i
        pair = (min(i, l), max(i, l))
        ignore14 = not proper or pair not in pairs14 or pair in carried
        if proper and not ignore14:
            carried.add(pair)
        dih_types.append((kk / KCAL, per, phase))
        entry = (3 * i, 3 * j, -3 * k if ignore14 else 3 * k, -3 * l if not proper else 3 * l,
                 len(dih_types))
        (dih_h if hydrogen[i] or hydrogen[l] or hydrogen[j] or hydrogen[k] else dih).append(entry)

    for t in range(pt.getNumTorsions()):
        i, j, k, l, per, phase, kk = pt.getTorsionParameters(t)
        proper = all((min(a, b), max(a, b)) in bonded for a, b in ((i, j), (j, k), (k, l)))
        add(i, j, k, l, per, phase._value, kk._value, proper)
    neighbours = {i: set() for i in range(n)}
    for i, j in bonded:
        neighbours[i].add(j)
        neighbours[j].add(i)
    for i, l in sorted(pairs14 - carried):  # 1-4 pairs without a torsion term: k = 0 carrier
        j, k = next((j, k) for j in neighbours[i] for k in neighbours[j] & neighbours[l]
                    if k != i and j != l)
        add(i, j, k, l, 1, 0.0, 0.0, True)
    assert pairs14 == carried

    excl_list, n_excl = [], []
    for i in range(n):
        js = sorted(excluded[i])
        n_excl.append(max(1, len(js)))
        excl_list.extend([j + 1 for j in js] or [0])
    residues = list(topology.residues())
    res_ptr = [next(iter(r.atoms())).index + 1 for r in residues]
    nmxrs = max(len(list(r.atoms())) for r in residues)
    gb = customgb.GBSAOBC2Force.getStandardParameters(topology)
    pointers = [n, nt, len(bonds_h), len(bonds), len(angles_h), len(angles), len(dih_h),
                len(dih), 0, 0, len(excl_list), len(residues), len(bonds), len(angles),
                len(dih), len(bond_types), len(angle_types), len(dih_types), 1, 0, 0, 0, 0, 0,
                0, 0, 0, 0, nmxrs, 0, 0]
    lines = ["%VERSION  VERSION_STAMP = V0001.000  DATE = 01/01/26  00:00:00",
             "%FLAG TITLE", "%FORMAT(20a4)", "flowsci test"]
    lines += _ints("POINTERS", pointers)
    lines += _strs("ATOM_NAME", [a.name for a in atoms])
    lines += _floats("CHARGE", [c * CHARGE for c in q])
    lines += _ints("ATOMIC_NUMBER", [a.element.atomic_number for a in atoms])
    lines += _floats("MASS", [system.getParticleMass(i)._value for i in range(n)])
    lines += _ints("ATOM_TYPE_INDEX", type_of)
    lines += _ints("NUMBER_EXCLUDED_ATOMS", n_excl)
    lines += _ints("NONBONDED_PARM_INDEX", nbindex)
    lines += _strs("RESIDUE_LABEL", [r.name for r in residues])
    lines += _ints("RESIDUE_POINTER", res_ptr)
    lines += _floats("BOND_FORCE_CONSTANT", [k for k, _ in bond_types])
    lines += _floats("BOND_EQUIL_VALUE", [r for _, r in bond_types])
    lines += _floats("ANGLE_FORCE_CONSTANT", [k for k, _ in angle_types])
    lines += _floats("ANGLE_EQUIL_VALUE", [t for _, t in angle_types])
    lines += _floats("DIHEDRAL_FORCE_CONSTANT", [k for k, _, _ in dih_types])
    lines += _floats("DIHEDRAL_PERIODICITY", [p for _, p, _ in dih_types])
    lines += _floats("DIHEDRAL_PHASE", [ph for _, _, ph in dih_types])
    lines += _floats("SCEE_SCALE_FACTOR", [1.2] * len(dih_types))
    lines += _floats("SCNB_SCALE_FACTOR", [2.0] * len(dih_types))
    lines += _floats("SOLTY", [0.0])
    lines += _floats("LENNARD_JONES_ACOEF", acoef)
    lines += _floats("LENNARD_JONES_BCOEF", bcoef)
    lines += _ints("BONDS_INC_HYDROGEN", [v for b in bonds_h for v in b])
    lines += _ints("BONDS_WITHOUT_HYDROGEN", [v for b in bonds for v in b])
    lines += _ints("ANGLES_INC_HYDROGEN", [v for a in angles_h for v in a])
    lines += _ints("ANGLES_WITHOUT_HYDROGEN", [v for a in angles for v in a])
    lines += _ints("DIHEDRALS_INC_HYDROGEN", [v for d in dih_h for v in d])
    lines += _ints("DIHEDRALS_WITHOUT_HYDROGEN", [v for d in dih for v in d])
    lines += _ints("EXCLUDED_ATOMS_LIST", excl_list)
    lines += _floats("HBOND_ACOEF", [])
    lines += _floats("HBOND_BCOEF", [])
    lines += _floats("HBCUT", [])
    lines += _strs("AMBER_ATOM_TYPE", [f"T{t}" for t in type_of])
    lines += _floats("RADII", [r * 10 for r, _ in gb])
    lines += _floats("SCREEN", [s for _, s in gb])
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def write_inpcrd(path, positions_nm) -> None:
    """Amber ASCII coordinates (inpcrd/rst7, no velocities): title, atom count, 6F12.7 in Å."""
    xyz = [10 * float(v) for row in positions_nm for v in row]
    lines = ["flowsci test", f"{len(positions_nm):6d}"]
    for i in range(0, len(xyz), 6):
        lines.append("".join(f"{v:12.7f}" for v in xyz[i:i + 6]))
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
