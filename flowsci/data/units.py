"""Unit conversion for molecular inputs: lengths to the target's unit, energies to kT.

Lengths: angstrom (Å), nm, bohr, pm, or 'reduced' (dimensionless, e.g. LJ sigma units).
Energies: eV, kJ/mol, kcal/mol, hartree, or 'kT'/'reduced' (already divided by kB T).
Reduced energy u = E / (kB T) with kB from CODATA 2018 (exact SI definitions).
"""

from __future__ import annotations

from ..errors import DataError

# metres per unit
LENGTH = {"angstrom": 1e-10, "nm": 1e-9, "bohr": 0.529177210903e-10, "pm": 1e-12}
LENGTH_ALIASES = {"a": "angstrom", "å": "angstrom", "ang": "angstrom", "angstroms": "angstrom",
                  "nanometer": "nm", "nanometers": "nm", "au": "bohr", "sigma": "reduced"}
# kB in each energy unit per kelvin
KB = {"ev": 8.617333262e-5, "kj/mol": 8.31446261815324e-3, "kcal/mol": 8.31446261815324e-3 / 4.184,
      "hartree": 8.617333262e-5 / 27.211386245988}
ENERGY_ALIASES = {"kjmol": "kj/mol", "kj_mol": "kj/mol", "kcalmol": "kcal/mol",
                  "kcal_mol": "kcal/mol", "ha": "hartree", "kt": "reduced"}


def norm_length(unit: str) -> str:
    u = str(unit).strip().lower()
    u = LENGTH_ALIASES.get(u, u)
    if u != "reduced" and u not in LENGTH:
        raise DataError(f"unknown length unit {unit!r}; known: {sorted(LENGTH) + ['reduced']}")
    return u


def norm_energy(unit: str) -> str:
    u = str(unit).strip().lower()
    u = ENERGY_ALIASES.get(u, u)
    if u != "reduced" and u not in KB:
        raise DataError(f"unknown energy unit {unit!r}; known: eV, kJ/mol, kcal/mol, hartree, kT")
    return u


def length_factor(src: str, dst: str) -> float:
    """Multiply lengths in `src` by this to get `dst`. 'reduced' converts only to itself."""
    s, d = norm_length(src), norm_length(dst)
    if s == d:
        return 1.0
    if "reduced" in (s, d):
        raise DataError(f"cannot convert lengths from {src!r} to {dst!r} (reduced units have no "
                        "scale); give the input in the target's units")
    return LENGTH[s] / LENGTH[d]


def kT(energy_unit: str, temperature: float) -> float:
    """kB T in `energy_unit` at `temperature` kelvin (1 for reduced units)."""
    u = norm_energy(energy_unit)
    if u == "reduced":
        return 1.0
    if not temperature or temperature <= 0:
        raise DataError(f"energies in {energy_unit!r} need a positive temperature in K, "
                        f"got {temperature}")
    return KB[u] * float(temperature)
