"""Unit systems of artifacts and engines, and the factors between them.

Artifacts declare their own units (DESIGN.md); engines convert on their side. The factors here are
the single source of truth for Python; the LAMMPS plugin carries the same table in C++ and a test
checks that both agree.
"""

from __future__ import annotations

# Factor that converts 1 <unit> into the base unit (nm, kJ/mol, ps).
LENGTH_TO_NM: dict[str, float] = {
    "nm": 1.0,
    "angstrom": 0.1,
    "bohr": 0.052917721090380,
}
ENERGY_TO_KJ_PER_MOL: dict[str, float] = {
    "kJ/mol": 1.0,
    "kcal/mol": 4.184,
    # 1 eV * N_A in kJ/mol (CODATA 2018, as OpenMM and LAMMPS metal use)
    "eV": 96.48533212331002,
    "hartree": 2625.4996394798254,
}
TIME_TO_PS: dict[str, float] = {"fs": 1.0e-3, "ps": 1.0, "ns": 1.0e3}

#: Units of LAMMPS ``units`` styles the pair style accepts (lj only for models in reduced units).
LAMMPS_UNITS: dict[str, dict[str, str]] = {
    "metal": {"length": "angstrom", "energy": "eV", "time": "ps"},
    "real": {"length": "angstrom", "energy": "kcal/mol", "time": "fs"},
    "lj": {"length": "lj", "energy": "lj", "time": "lj"},
}

#: OpenMM's units.
OPENMM_UNITS: dict[str, str] = {"length": "nm", "energy": "kJ/mol", "time": "ps"}

REDUCED = "lj"


class UnitError(ValueError):
    """A unit is unknown, or two unit systems cannot be converted into each other."""


def _factor(table: dict[str, float], kind: str, src: str, dst: str) -> float:
    if src == REDUCED or dst == REDUCED:
        if src == dst:
            return 1.0
        raise UnitError(
            f"cannot convert {kind} between reduced (lj) units and '{src if dst == REDUCED else dst}': "
            "a model in reduced units runs only under LAMMPS 'units lj', and an lj system needs a model "
            "declared in reduced units"
        )
    for u in (src, dst):
        if u not in table:
            raise UnitError(f"unknown {kind} unit '{u}'; known: {', '.join(sorted(table))} or 'lj'")
    return table[src] / table[dst]


def length_factor(src: str, dst: str) -> float:
    """Multiply a length in ``src`` by this to get it in ``dst``."""
    return _factor(LENGTH_TO_NM, "length", src, dst)


def energy_factor(src: str, dst: str) -> float:
    """Multiply an energy in ``src`` by this to get it in ``dst``."""
    return _factor(ENERGY_TO_KJ_PER_MOL, "energy", src, dst)


def time_factor(src: str, dst: str) -> float:
    """Multiply a time in ``src`` by this to get it in ``dst``."""
    return _factor(TIME_TO_PS, "time", src, dst)
