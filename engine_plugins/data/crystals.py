"""Periodic crystals for response matching: textbook prototype structures built with ASE.

What this is, honestly: **prototype structures** (ideal Wyckoff positions of the named structure
type) with experimental room-temperature lattice constants from standard tables, built with
ASE — not entries of the Materials Project or any other database, and not relaxed with any
electronic-structure method. Every cell is the conventional (orthorhombic, here cubic) cell, so
the supercells are orthorhombic boxes that both engines and the project's LAMMPS data writer take.

Li–S: antifluorite Li2S and bcc Li are built; α-S8 (Fddd, 128 atoms per cell) and the
predicted Li2S2/LiS phases are left out because their coordinates could not be reproduced and
checked here from first principles.

Supercells (:func:`build_crystal`): each cell vector is repeated ``ceil(2 × cutoff / width)``
times, where the width is the distance between opposite faces, so every box is at least twice
the cutoff thick in every direction (the minimum-image condition for a model of that cutoff).

Command line::

    python -m engine_plugins.data.crystals OUT_DIR --cutoff 5.0

writes one extended XYZ file with every crystal and ``manifest.json``.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from engine_plugins.data.molecules import Structure, write_structures

DATASET_NAME = "crystal prototypes (ASE-built ideal structure types, experimental lattice constants; not Materials Project)"


@dataclass(frozen=True)
class CrystalSpec:
    """One prototype: name, formula, structure type, space group (number), lattice constant (Å)."""

    name: str
    formula: str
    prototype: str
    spacegroup: int
    a: float
    build: Callable[[float], object]  # a -> conventional-cell ase.Atoms


def _bulk(symbols: str, structure: str) -> Callable[[float], object]:
    def build(a: float):
        from ase.build import bulk

        return bulk(symbols, structure, a=a, cubic=True)

    return build


def _perovskite(a_site: str, b_site: str) -> Callable[[float], object]:
    def build(a: float):
        from ase import Atoms

        frac = [(0, 0, 0), (0.5, 0.5, 0.5), (0.5, 0.5, 0), (0.5, 0, 0.5), (0, 0.5, 0.5)]
        return Atoms([a_site, b_site, "O", "O", "O"], scaled_positions=frac, cell=np.eye(3) * a, pbc=True)

    return build


#: The built-in set. Lattice constants: experimental, room temperature (BaTiO3: its cubic
#: high-temperature phase), rounded as in standard tables.
CRYSTAL_PROTOTYPES: dict[str, CrystalSpec] = {s.name: s for s in [
    CrystalSpec("C-diamond", "C", "diamond", 227, 3.567, _bulk("C", "diamond")),
    CrystalSpec("Si-diamond", "Si", "diamond", 227, 5.431, _bulk("Si", "diamond")),
    CrystalSpec("NaCl-rocksalt", "NaCl", "rocksalt", 225, 5.640, _bulk("NaCl", "rocksalt")),
    CrystalSpec("LiF-rocksalt", "LiF", "rocksalt", 225, 4.027, _bulk("LiF", "rocksalt")),
    CrystalSpec("MgO-rocksalt", "MgO", "rocksalt", 225, 4.212, _bulk("MgO", "rocksalt")),
    CrystalSpec("SrTiO3-perovskite", "SrTiO3", "cubic perovskite", 221, 3.905, _perovskite("Sr", "Ti")),
    CrystalSpec("BaTiO3-perovskite", "BaTiO3", "cubic perovskite", 221, 4.000, _perovskite("Ba", "Ti")),
    CrystalSpec("CaF2-fluorite", "CaF2", "fluorite", 225, 5.463, _bulk("CaF2", "fluorite")),
    CrystalSpec("Li2S-antifluorite", "Li2S", "antifluorite", 225, 5.708, _bulk("SLi2", "fluorite")),
    CrystalSpec("Li-bcc", "Li", "bcc", 229, 3.510, _bulk("Li", "bcc")),
    CrystalSpec("Cu-fcc", "Cu", "fcc", 225, 3.615, _bulk("Cu", "fcc")),
    CrystalSpec("Al-fcc", "Al", "fcc", 225, 4.050, _bulk("Al", "fcc")),
    CrystalSpec("Fe-bcc", "Fe", "bcc", 229, 2.866, _bulk("Fe", "bcc")),
    CrystalSpec("W-bcc", "W", "bcc", 229, 3.165, _bulk("W", "bcc")),
]}


def crystal_names() -> list[str]:
    return list(CRYSTAL_PROTOTYPES)


def cell_widths(cell: np.ndarray) -> np.ndarray:
    """Distances between opposite faces of a cell (rows = cell vectors), Å."""
    cell = np.asarray(cell, float)
    vol = abs(np.linalg.det(cell))
    return np.array([vol / np.linalg.norm(np.cross(cell[(i + 1) % 3], cell[(i + 2) % 3])) for i in range(3)])


def supercell_repeats(cell: np.ndarray, cutoff: float, factor: float = 2.0) -> tuple[int, int, int]:
    """Repeats per cell vector so that every width of the supercell is ≥ ``factor × cutoff``."""
    if cutoff <= 0:
        return (1, 1, 1)
    w = cell_widths(cell)
    return tuple(int(max(1, math.ceil(factor * cutoff / wi - 1e-9))) for wi in w)


def _spec(name: str) -> CrystalSpec:
    try:
        return CRYSTAL_PROTOTYPES[name]
    except KeyError:
        raise KeyError(f"unknown crystal '{name}'; known: {', '.join(CRYSTAL_PROTOTYPES)}") from None


def build_crystal(name: str, cutoff: float | None = 5.0, factor: float = 2.0, a: float | None = None) -> Structure:
    """A prototype crystal as a periodic :class:`Structure`: the conventional cell (``cutoff``
    None) or a supercell at least ``factor × cutoff`` thick in every direction; ``a`` overrides
    the lattice constant."""
    spec = _spec(name)
    lattice = spec.a if a is None else float(a)
    atoms = spec.build(lattice)
    reps = (1, 1, 1) if cutoff is None else supercell_repeats(atoms.cell.array, cutoff, factor)
    atoms = atoms.repeat(reps)
    atoms.wrap()
    s = Structure.from_ase(atoms, name=name)
    s.name = name
    s.info.update(prototype=spec.prototype, formula_unit=spec.formula, spacegroup=spec.spacegroup,
                  lattice_constant=lattice, supercell=list(reps), cutoff=cutoff,
                  source="ASE prototype, experimental lattice constant (not Materials Project)")
    return s


def build_crystal_set(cutoff: float = 5.0, names: Sequence[str] | None = None, factor: float = 2.0) -> list[Structure]:
    """Every prototype (or those named), as supercells for ``cutoff`` (see :func:`build_crystal`)."""
    return [build_crystal(n, cutoff, factor) for n in (names or CRYSTAL_PROTOTYPES)]


def perturb_crystal(structure: Structure, displacement: float = 0.05, strain: float = 0.0,
                    seed: int = 0) -> Structure:
    """A noisy copy: Gaussian atomic displacements (σ = ``displacement`` Å per component) and a
    random symmetric strain ε (entries σ = ``strain``), applied as cell ← cell (1 + ε) with
    fractional coordinates kept. Seeded (numpy ``default_rng(seed)``)."""
    if not structure.periodic:
        raise ValueError(f"perturb_crystal: structure '{structure.name}' is not periodic")
    rng = np.random.default_rng(seed)
    eps = rng.normal(0.0, strain, (3, 3)) if strain > 0 else np.zeros((3, 3))
    eps = 0.5 * (eps + eps.T)
    frac = np.linalg.solve(structure.cell.T, structure.positions.T).T
    cell = structure.cell @ (np.eye(3) + eps)
    pos = frac @ cell + (rng.normal(0.0, displacement, structure.positions.shape) if displacement > 0 else 0.0)
    out = structure.copy(positions=pos, cell=cell)
    out.info.update(perturbation={"displacement": displacement, "strain": strain, "seed": seed})
    return out


def write_crystal_dataset(out_dir: str | Path, cutoff: float = 5.0, names: Sequence[str] | None = None) -> dict:
    """Write every prototype supercell to ``crystals.extxyz`` plus ``manifest.json``; returns the manifest."""
    out_dir = Path(out_dir)
    structures = build_crystal_set(cutoff, names)
    path = write_structures(out_dir / "crystals.extxyz", structures)
    manifest = {
        "dataset": DATASET_NAME, "cutoff": cutoff, "min_width": 2 * cutoff, "file": path.name,
        "crystals": [{"name": s.name, "formula": s.formula, "n_atoms": s.n_atoms,
                      **{k: s.info[k] for k in ("prototype", "spacegroup", "lattice_constant", "supercell")},
                      "min_width": float(cell_widths(s.cell).min())} for s in structures],
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m engine_plugins.data.crystals",
                                description="Write the built-in crystal prototypes (ASE; not Materials Project).")
    p.add_argument("out_dir", type=Path)
    p.add_argument("--cutoff", type=float, default=5.0, help="model cutoff, Å; boxes are ≥ 2 × cutoff wide")
    args = p.parse_args(argv)
    m = write_crystal_dataset(args.out_dir, args.cutoff)
    for c in m["crystals"]:
        print(f"{c['name']:<20} {c['formula']:<10} {c['n_atoms']:>5} atoms  supercell {c['supercell']}  "
              f"min width {c['min_width']:.2f} Å")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
