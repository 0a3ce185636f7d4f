"""Small organic molecules: a reproducible *QM9-like* set, and a reader for users' structure files.

What the built-in set is, honestly: **not QM9** (QM9 cannot be downloaded here and its DFT
geometries are not reproduced). It is a QM9-*like* set of small, neutral, closed-shell organic
molecules with elements C, H, N, O, F and 1–9 heavy atoms, grown by a deterministic,
valence-rule enumeration in RDKit (the way GDB, QM9's parent, is grown, but sampled, not
exhaustive), with 3D structures from RDKit ETKDGv3 (seeded) + MMFF94 minimisation and explicit
hydrogens. Optionally ASE's shipped G2 collection (its own geometries) adds the closed-shell
CHNOF species that pass the same filters.

Enumeration (``enumerate_molecules``): level 1 is {C, N, O, F} (CH4, NH3, H2O, HF). Level k+1
attaches one heavy atom (C, N, O, F; bond order 1–3 within both atoms' free valence) to one
atom of each molecule of a seeded sample (the *beam*) of level k, then applies up to two rounds of
"closures" to a seeded sample of those: a ring-closing single bond (rings of 3–7 atoms) or
raising a bond's order; a few aromatic rings (benzene, pyridine, azines, furan, pyrrole, azoles)
join the candidates of their size as scaffolds. Every candidate is sanitised by RDKit and kept only if it is neutral
(no formal charges), has no radicals, is one fragment, has at most ``max_rings`` rings, no
O–O/N–F/O–F/F–F bond, at most one N–N/N–O bond, at most 3 F, no sp atom (triple bond or
cumulated double bonds) in a ring, no sp2 atom at a 3-/4-ring fusion or a bridgehead (Bredt), aromatic atoms only in 5-/6-rings, and
no gem-diol/hemiacetal/hemiaminal-type carbon (an OH or NH2 plus another O/N/F on one sp3 C). Canonical SMILES (RDKit, no stereo) deduplicate. Samples are
weighted towards carbon-rich molecules (``ELEMENT_WEIGHTS``) so the composition resembles QM9's
rather than the combinatorial count's. Sets are sorted before every seeded sample, so the same
``seed`` and parameters give the same SMILES list (for a given RDKit version, which the manifest
records along with the SMILES themselves).

Split (``split_of``): by molecule, from a hash of (seed, canonical SMILES): a molecule's split
never depends on which other molecules are in the set, so a held-out (test) molecule stays held
out in a larger build with the same seed and is never seen in training.

Command line::

    python -m engine_plugins.data.molecules OUT_DIR --n-molecules 2000 --seed 0

writes ``train.extxyz``, ``val.extxyz``, ``test.extxyz`` (ASE extended XYZ, SMILES and provenance
in each frame's info) and ``manifest.json``.

RDKit is imported lazily (only the enumeration, the 3D build and SDF/MOL reading need it).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

#: Name under which the built-in set is reported everywhere (never "QM9").
DATASET_NAME = "QM9-like (enumerated CHNOF, 1-9 heavy atoms; ETKDGv3 + MMFF94 geometries; not QM9)"
#: Bump when the enumeration or build rules change (the SMILES list would change).
GENERATOR_VERSION = 1

ELEMENTS = ("C", "N", "O", "F")
ALLOWED_ELEMENTS = frozenset({"H", "C", "N", "O", "F"})
_VALENCE = {"C": 4, "N": 3, "O": 2, "F": 1}
_FORBIDDEN_PAIRS = frozenset({("O", "O"), ("F", "N"), ("F", "O"), ("F", "F")})
_HETERO = frozenset({"N", "O", "F"})
#: Relative sampling weight per heavy atom. Attaching C, N, O or F is equally likely in the
#: enumeration, but QM9's molecules are carbon-rich (about 70 % C, 11 % N, 16 % O, < 1 % F of the
#: heavy atoms), so samples are weighted by the product of these over a molecule's heavy atoms.
ELEMENT_WEIGHTS = {"C": 1.0, "N": 0.6, "O": 0.8, "F": 0.2}
#: ... and by these per ring and per π bond, against the combinatorial excess of ring closures and
#: unsaturation that uniform sampling of the enumeration would give.
RING_WEIGHT = 0.7
PI_WEIGHT = 0.6
AROMATIC_WEIGHT = 4.0
#: Aromatic rings the closure moves rarely reach (they need three raised bond orders in a row);
#: they join the candidates of their size and grow substituents like any other molecule.
AROMATIC_SCAFFOLDS = ("c1ccccc1", "c1ccncc1", "c1cncnc1", "c1cnccn1", "c1ccnnc1", "c1ccoc1", "c1cc[nH]c1",
                      "c1c[nH]cn1", "c1cocn1", "c1cn[nH]c1", "c1cnoc1", "c1nnc[nH]1", "c1ncon1")
MAX_HETERO_BONDS = 1  # N-N / N-O bonds per molecule (QM9 has them mostly in azoles, oxazoles)
MAX_FLUORINE = 3
SPLIT_FRACTIONS = (0.8, 0.1, 0.1)
SPLITS = ("train", "val", "test")


class StructureError(ValueError):
    """A structure (or structure file) that cannot be used, with the reason in the message."""


# --------------------------------------------------------------------------------------------
# The common structure record
# --------------------------------------------------------------------------------------------

@dataclass
class Structure:
    """One structure: element symbols, positions (Å), optional periodic cell, bonds and SMILES.

    ``cell`` rows are the cell vectors (Å); ``bonds`` are ``(i, j, order)`` with order 1, 1.5
    (aromatic), 2 or 3; ``smiles`` is the molecule it represents where known (canonical, RDKit).
    """

    symbols: list[str]
    positions: np.ndarray
    cell: np.ndarray | None = None
    pbc: tuple[bool, bool, bool] = (False, False, False)
    bonds: list[tuple[int, int, float]] | None = None
    smiles: str | None = None
    name: str = ""
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.symbols = [str(s) for s in self.symbols]
        self.positions = np.asarray(self.positions, dtype=np.float64).reshape(-1, 3)
        if len(self.positions) != len(self.symbols):
            raise StructureError(f"structure '{self.name}': {len(self.symbols)} symbols but "
                                 f"{len(self.positions)} positions")
        if self.cell is not None:
            self.cell = np.asarray(self.cell, dtype=np.float64).reshape(3, 3)
        self.pbc = tuple(bool(p) for p in np.broadcast_to(np.asarray(self.pbc, bool), (3,)))

    @property
    def n_atoms(self) -> int:
        return len(self.symbols)

    @property
    def numbers(self) -> np.ndarray:
        from ase.data import atomic_numbers

        return np.array([atomic_numbers[s] for s in self.symbols], dtype=np.int64)

    @property
    def n_heavy(self) -> int:
        return sum(s != "H" for s in self.symbols)

    @property
    def periodic(self) -> bool:
        return any(self.pbc)

    @property
    def formula(self) -> str:
        """Formula in Hill order (C, H, then alphabetical), as ASE's ``get_chemical_formula('hill')``."""
        return hill_formula(self.symbols)

    def copy(self, **changes: Any) -> "Structure":
        """A deep copy, with any field replaced (e.g. ``positions=...``)."""
        fields = dict(symbols=list(self.symbols), positions=self.positions.copy(),
                      cell=None if self.cell is None else self.cell.copy(), pbc=self.pbc,
                      bonds=None if self.bonds is None else list(self.bonds), smiles=self.smiles,
                      name=self.name, info=json.loads(json.dumps(self.info, default=str)))
        fields.update(changes)
        return Structure(**fields)

    def validate(self, min_distance: float = 0.5) -> "Structure":
        """Raise :class:`StructureError` for no atoms, unknown elements, NaN/inf coordinates, a
        degenerate cell or two atoms closer than ``min_distance`` Å (minimum image when periodic)."""
        check_structure(self, min_distance=min_distance)
        return self

    def to_ase(self):
        """An :class:`ase.Atoms` (SMILES, name and info copied into ``atoms.info``)."""
        from ase import Atoms

        atoms = Atoms(symbols=self.symbols, positions=self.positions,
                      cell=self.cell if self.cell is not None else np.zeros((3, 3)), pbc=self.pbc)
        atoms.info.update(self.info)
        if self.smiles is not None:
            atoms.info["smiles"] = self.smiles
        if self.name:
            atoms.info["name"] = self.name
        return atoms

    @classmethod
    def from_ase(cls, atoms, name: str = "") -> "Structure":
        info = dict(atoms.info)
        smiles = info.pop("smiles", None)
        if isinstance(smiles, (bool, np.bool_)):  # ASE's extxyz parser reads the SMILES "F" (HF) as False
            smiles = "T" if smiles else "F"
        name = str(info.pop("name", name) or name)
        cell = np.asarray(atoms.cell.array, float)
        has_cell = bool(np.abs(cell).sum() > 0)
        return cls(symbols=atoms.get_chemical_symbols(), positions=atoms.get_positions(),
                   cell=cell if has_cell else None, pbc=tuple(atoms.pbc) if has_cell else (False,) * 3,
                   smiles=None if smiles is None else str(smiles), name=name, info=info)

    def to_pymatgen(self):
        """A pymatgen ``Structure`` (periodic) or ``Molecule`` (non-periodic)."""
        if self.periodic:
            from pymatgen.core import Lattice
            from pymatgen.core import Structure as PmgStructure

            return PmgStructure(Lattice(self.cell), self.symbols, self.positions, coords_are_cartesian=True)
        from pymatgen.core import Molecule

        return Molecule(self.symbols, self.positions)


def hill_formula(symbols: Iterable[str]) -> str:
    """Formula in Hill order as ASE and RDKit write it: C, then H, then the rest alphabetically
    (``C2H6O``, ``H2O``, ``H3N``)."""
    counts: dict[str, int] = {}
    for s in symbols:
        counts[s] = counts.get(s, 0) + 1
    order = [k for k in ("C", "H") if k in counts] + sorted(k for k in counts if k not in ("C", "H"))
    return "".join(f"{k}{counts[k] if counts[k] > 1 else ''}" for k in order)


def check_structure(structure: Structure, min_distance: float = 0.5) -> None:
    """The checks of :meth:`Structure.validate`; the error names the structure and the atoms."""
    from ase.data import atomic_numbers

    label = f"structure '{structure.name}'" if structure.name else "structure"
    if structure.n_atoms == 0:
        raise StructureError(f"{label} has no atoms")
    unknown = sorted({s for s in structure.symbols if s not in atomic_numbers or s == "X"})
    if unknown:
        raise StructureError(f"{label}: unknown element symbol(s) {unknown}")
    bad = np.flatnonzero(~np.isfinite(structure.positions).all(axis=1))
    if len(bad):
        raise StructureError(f"{label}: non-finite (NaN/inf) coordinates for {len(bad)} atom(s), first "
                             f"atom {int(bad[0])} ({structure.symbols[bad[0]]}) at {structure.positions[bad[0]].tolist()}")
    if structure.periodic:
        if structure.cell is None:
            raise StructureError(f"{label} is periodic (pbc={structure.pbc}) but has no cell")
        if not np.isfinite(structure.cell).all():
            raise StructureError(f"{label}: non-finite cell {structure.cell.tolist()}")
        for d in np.flatnonzero(structure.pbc):
            if np.linalg.norm(structure.cell[d]) < 1e-8:
                raise StructureError(f"{label}: periodic along cell vector {d} but that vector is zero")
        if abs(np.linalg.det(structure.cell)) < 1e-8 and all(structure.pbc):
            raise StructureError(f"{label}: degenerate cell (zero volume) {structure.cell.tolist()}")
    if structure.n_atoms > 1 and min_distance > 0:
        i, j, d = _close_pairs(structure, min_distance)
        if len(i):
            k = int(np.argmin(d))
            raise StructureError(
                f"{label}: {len(i)} pair(s) of overlapping atoms closer than {min_distance} Å; closest: atoms "
                f"{int(i[k])} ({structure.symbols[i[k]]}) and {int(j[k])} ({structure.symbols[j[k]]}) at {d[k]:.3f} Å")


def _close_pairs(structure: Structure, cutoff: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs i < j (or an atom and its own periodic image, i == j) closer than ``cutoff`` Å."""
    if structure.periodic:
        from ase.neighborlist import neighbor_list

        i, j, d = neighbor_list("ijd", structure.to_ase(), cutoff, self_interaction=False)
        keep = i <= j
        return i[keep], j[keep], d[keep]
    from scipy.spatial import cKDTree

    tree = cKDTree(structure.positions)
    pairs = np.array(sorted(tree.query_pairs(cutoff)), dtype=np.int64).reshape(-1, 2)
    d = np.linalg.norm(structure.positions[pairs[:, 0]] - structure.positions[pairs[:, 1]], axis=1)
    return pairs[:, 0], pairs[:, 1], d


# --------------------------------------------------------------------------------------------
# Reading users' files
# --------------------------------------------------------------------------------------------

#: Extension (lower case) -> (reader, format passed to it).
READERS: dict[str, tuple[str, str]] = {
    ".xyz": ("ase", "extxyz"),  # ASE's extxyz reader reads plain XYZ too
    ".extxyz": ("ase", "extxyz"),
    ".pdb": ("ase", "proteindatabank"),
    ".cif": ("ase", "cif"),
    ".vasp": ("ase", "vasp"),
    ".poscar": ("ase", "vasp"),
    ".sdf": ("rdkit", "sdf"),
    ".mol": ("rdkit", "mol"),
    ".data": ("mdanalysis", "DATA"),
    ".lmp": ("mdanalysis", "DATA"),
    ".lammps": ("mdanalysis", "DATA"),
    ".lammps-data": ("mdanalysis", "DATA"),
}
_FORMAT_ALIASES = {"xyz": ".xyz", "extxyz": ".extxyz", "pdb": ".pdb", "cif": ".cif", "vasp": ".vasp",
                   "poscar": ".vasp", "sdf": ".sdf", "mol": ".mol", "lammps-data": ".data", "lammps": ".data",
                   "data": ".data", "lmp": ".data"}


def read_structures(path: str | Path, format: str | None = None, min_distance: float = 0.5,
                    type_elements: Sequence[str] | None = None) -> list[Structure]:
    """Read every structure in a file into :class:`Structure` records, each validated.

    Formats (from the extension, or ``format``): xyz/extxyz, pdb, cif and POSCAR through ASE
    (cell and pbc where the file has them; ``smiles`` from an extxyz info key); sdf/mol through
    RDKit (bonds with orders, SMILES where the molecule sanitises; hydrogens kept); LAMMPS data
    (``.data``, ``.lmp``) through MDAnalysis (any ``atom_style``; the ``Atoms # style`` comment is
    honoured; elements from ``type_elements`` — one symbol per atom type, as in
    ``pair_coeff * * T1 T2`` — or guessed from the Masses section; bonds from a Bonds section).

    Raises :class:`StructureError` (a ``ValueError``) naming the file for a missing or empty
    file, an unknown format, a file the reader cannot parse, no atoms, NaN coordinates, or atoms
    closer than ``min_distance`` Å.
    """
    path = Path(path)
    if not path.exists():
        raise StructureError(f"{path}: no such file")
    if path.is_dir():
        raise StructureError(f"{path}: is a directory, not a structure file")
    if path.stat().st_size == 0 or not path.read_bytes().strip():
        raise StructureError(f"{path}: the file is empty")
    ext = _FORMAT_ALIASES.get(format.lower(), None) if format else None
    if format and ext is None:
        raise StructureError(f"{path}: unknown format '{format}'; known formats: {sorted(_FORMAT_ALIASES)}")
    if ext is None:
        ext = path.suffix.lower()
        if path.name.upper() in ("POSCAR", "CONTCAR"):
            ext = ".vasp"
    if ext not in READERS:
        raise StructureError(f"{path}: unknown structure format '{path.suffix or path.name}'; known extensions: "
                             f"{sorted(READERS)} (or pass format= one of {sorted(_FORMAT_ALIASES)})")
    reader, fmt = READERS[ext]
    try:
        if reader == "ase":
            structures = _read_ase(path, fmt)
        elif reader == "rdkit":
            structures = _read_rdkit(path, fmt)
        else:
            structures = _read_lammps_data(path, type_elements)
    except StructureError:
        raise
    except Exception as exc:  # the readers' own errors are rarely helpful on their own
        raise StructureError(f"{path}: could not read it as {fmt} ({reader}): {type(exc).__name__}: {exc}") from exc
    if not structures:
        raise StructureError(f"{path}: no structures found in the file")
    for k, s in enumerate(structures):
        if not s.name:
            s.name = f"{path.stem}:{k}" if len(structures) > 1 else path.stem
        s.info.setdefault("source_file", str(path))
        try:
            s.validate(min_distance=min_distance)
        except StructureError as exc:
            raise StructureError(f"{path}: {exc}") from None
    return structures


def _read_ase(path: Path, fmt: str) -> list[Structure]:
    import ase.io

    frames = ase.io.read(str(path), index=":", format=fmt)
    return [Structure.from_ase(a) for a in frames]


def _read_rdkit(path: Path, fmt: str) -> list[Structure]:
    from rdkit import Chem, rdBase

    with rdBase.BlockLogs():  # quiet RDKit; the caller's log settings come back after
        if fmt == "mol":
            mols = [Chem.MolFromMolFile(str(path), sanitize=False, removeHs=False)]
        else:
            mols = list(Chem.SDMolSupplier(str(path), sanitize=False, removeHs=False))
    out = []
    for k, mol in enumerate(mols):
        if mol is None:
            raise StructureError(f"{path}: record {k} could not be parsed by RDKit")
        if mol.GetNumAtoms() == 0:
            raise StructureError(f"{path}: record {k} has no atoms")
        if mol.GetNumConformers() == 0:
            raise StructureError(f"{path}: record {k} has no coordinates")
        conf = mol.GetConformer()
        pos = conf.GetPositions()
        if not conf.Is3D() and np.allclose(pos[:, 2], 0.0) and mol.GetNumAtoms() > 3:
            raise StructureError(f"{path}: record {k} has 2D coordinates (all z = 0); a 3D structure is needed")
        order = {Chem.BondType.SINGLE: 1.0, Chem.BondType.DOUBLE: 2.0, Chem.BondType.TRIPLE: 3.0,
                 Chem.BondType.AROMATIC: 1.5}
        bonds = [(b.GetBeginAtomIdx(), b.GetEndAtomIdx(), order.get(b.GetBondType(), 1.0)) for b in mol.GetBonds()]
        smiles = None
        try:
            m = Chem.Mol(mol)
            Chem.SanitizeMol(m)
            smiles = Chem.MolToSmiles(Chem.RemoveHs(m))
        except Exception:
            pass
        name = mol.GetProp("_Name") if mol.HasProp("_Name") else ""
        info = {k2: mol.GetProp(k2) for k2 in mol.GetPropNames() if k2 != "_Name"}
        if any(a.GetFormalCharge() for a in mol.GetAtoms()):
            info["formal_charge"] = sum(a.GetFormalCharge() for a in mol.GetAtoms())
        out.append(Structure([a.GetSymbol() for a in mol.GetAtoms()], pos, bonds=bonds, smiles=smiles,
                             name=name.strip(), info=info))
    return out


def _lammps_atom_style(path: Path) -> str | None:
    """The atom style named in an ``Atoms # style`` header comment, as an MDAnalysis column spec."""
    columns = {"atomic": "id type x y z", "full": "id resid type charge x y z",
               "molecular": "id resid type x y z", "charge": "id type charge x y z",
               "bond": "id resid type x y z", "angle": "id resid type x y z"}
    for line in path.read_text(errors="replace").splitlines():
        s = line.strip()
        if s.startswith("Atoms"):
            style = s.partition("#")[2].strip().split()
            return columns.get(style[0]) if style else None
    return None


def _read_lammps_data(path: Path, type_elements: Sequence[str] | None) -> list[Structure]:
    import warnings

    import MDAnalysis as mda
    from ase.data import atomic_masses, chemical_symbols

    style = _lammps_atom_style(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        u = mda.Universe(str(path), format="DATA", **({"atom_style": style} if style else {}))
    types = [str(t) for t in u.atoms.types]
    if type_elements is not None:
        try:
            symbols = [type_elements[int(t) - 1] for t in types]
        except (IndexError, ValueError):
            raise StructureError(f"{path}: type_elements {list(type_elements)} does not cover atom types "
                                 f"{sorted(set(types))}") from None
    else:
        if not hasattr(u.atoms, "masses") or np.any(u.atoms.masses <= 0):
            raise StructureError(f"{path}: no Masses section to guess elements from; pass type_elements")
        symbols = []
        for m in u.atoms.masses:
            z = int(np.argmin(np.abs(atomic_masses[1:] - m))) + 1
            if abs(atomic_masses[z] - m) > 0.1:
                raise StructureError(f"{path}: mass {m} matches no element within 0.1 u; pass type_elements")
            symbols.append(chemical_symbols[z])
    cell = None
    if u.dimensions is not None:
        from MDAnalysis.lib.mdamath import triclinic_vectors

        cell = triclinic_vectors(u.dimensions).astype(np.float64)
    bonds = None
    if hasattr(u, "bonds") and len(u.bonds):
        bonds = [(int(a), int(b), 1.0) for a, b in u.bonds.indices]
    return [Structure(symbols, u.atoms.positions.astype(np.float64), cell=cell,
                      pbc=(True,) * 3 if cell is not None else (False,) * 3, bonds=bonds,
                      info={"lammps_types": [int(t) for t in types]})]


def write_structures(path: str | Path, structures: Sequence[Structure]) -> Path:
    """Write structures as ASE extended XYZ (SMILES, name and info in each frame's comment line)."""
    import ase.io

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ase.io.write(str(path), [s.to_ase() for s in structures], format="extxyz")
    return path


# --------------------------------------------------------------------------------------------
# Enumeration
# --------------------------------------------------------------------------------------------

def _mol_ok(mol, max_heavy: int, max_rings: int) -> bool:
    """Chemistry filter applied to every enumerated candidate (a sanitised, H-implicit RDKit mol)."""
    from rdkit import Chem

    if mol.GetNumAtoms() > max_heavy:
        return False
    ri = mol.GetRingInfo()
    if ri.NumRings() > max_rings:
        return False
    rings = [set(r) for r in ri.AtomRings()]
    for a in mol.GetAtoms():
        if a.GetFormalCharge() != 0 or a.GetNumRadicalElectrons() != 0 or a.GetSymbol() not in _VALENCE:
            return False
        if not a.IsInRing():
            continue
        if a.GetIsAromatic() and not (ri.IsAtomInRingOfSize(a.GetIdx(), 5) or ri.IsAtomInRingOfSize(a.GetIdx(), 6)):
            return False  # RDKit calls some 3-/4-rings aromatic (cyclopropenylidene-type): not QM9-like
        n_double = sum(b.GetBondType() == Chem.BondType.DOUBLE for b in a.GetBonds())
        n_triple = sum(b.GetBondType() == Chem.BondType.TRIPLE for b in a.GetBonds())
        if n_triple or n_double > 1:  # no sp atoms in small rings (triple bonds, allenes)
            return False
        if n_double or a.GetIsAromatic():
            mine = [r for r in rings if a.GetIdx() in r]
            if len(mine) > 1:
                # an sp2 atom shared by rings: not at a 3-/4-ring fusion, not at a bridgehead (anti-Bredt)
                if min(len(r) for r in mine) <= 4:
                    return False
                if any(len(r1 & r2) > 2 for k, r1 in enumerate(mine) for r2 in mine[k + 1:]):
                    return False
    for a in mol.GetAtoms():
        # no gem-diols, hemiacetals, hemiaminals, aminals with NH2, fluorohydrins (C-OH/NH2 + another O/N/F)
        if a.GetSymbol() == "C" and not a.GetIsAromatic():
            single = [n for n in a.GetNeighbors() if n.GetSymbol() in _HETERO
                      and mol.GetBondBetweenAtoms(a.GetIdx(), n.GetIdx()).GetBondType() == Chem.BondType.SINGLE]
            if len(single) > 1 and any(n.GetSymbol() in ("O", "N") and n.GetTotalNumHs() > 0 and n.GetDegree() == 1
                                       for n in single):
                return False
    n_hetero_bonds = 0
    for b in mol.GetBonds():
        pair = tuple(sorted((b.GetBeginAtom().GetSymbol(), b.GetEndAtom().GetSymbol())))
        if pair in _FORBIDDEN_PAIRS:
            return False
        n_hetero_bonds += pair[0] in _HETERO and pair[1] in _HETERO
    if n_hetero_bonds > MAX_HETERO_BONDS:
        return False
    if sum(a.GetSymbol() == "F" for a in mol.GetAtoms()) > MAX_FLUORINE:
        return False
    return len(Chem.GetMolFrags(mol)) == 1


def _weight(mol) -> float:
    """Sampling weight of a candidate: ``ELEMENT_WEIGHTS`` over its heavy atoms, times
    ``RING_WEIGHT`` per ring, ``PI_WEIGHT`` per non-aromatic π bond (a triple bond counts two)
    and ``AROMATIC_WEIGHT`` once if any ring is aromatic."""
    from rdkit import Chem

    w = 1.0
    for a in mol.GetAtoms():
        w *= ELEMENT_WEIGHTS[a.GetSymbol()]
    n_pi = sum({Chem.BondType.DOUBLE: 1, Chem.BondType.TRIPLE: 2}.get(b.GetBondType(), 0) for b in mol.GetBonds())
    aromatic = any(a.GetIsAromatic() for a in mol.GetAtoms())
    return w * RING_WEIGHT ** mol.GetRingInfo().NumRings() * PI_WEIGHT ** n_pi * (AROMATIC_WEIGHT if aromatic else 1.0)


def _canonical(rw, max_heavy: int, max_rings: int) -> tuple[str, float] | None:
    """Sanitise an edited molecule: (canonical SMILES, sampling weight) if it passes the filter."""
    from rdkit import Chem

    mol = rw.GetMol()
    try:
        Chem.SanitizeMol(mol)
    except Exception:
        return None
    if not _mol_ok(mol, max_heavy, max_rings):
        return None
    return Chem.MolToSmiles(mol), _weight(mol)


def _editable(smiles: str):
    """A kekulised molecule with every H implicit (recomputed from default valences after edits)."""
    from rdkit import Chem

    mol = Chem.MolFromSmiles(smiles)
    Chem.Kekulize(mol, clearAromaticFlags=True)
    for a in mol.GetAtoms():
        a.SetNumExplicitHs(0)
        a.SetNoImplicit(False)
    return mol


def _symmetry_representatives(mol) -> list[int]:
    from rdkit import Chem

    ranks = list(Chem.CanonicalRankAtoms(mol, breakTies=False))
    seen, reps = set(), []
    for i, r in enumerate(ranks):
        if r not in seen:
            seen.add(r)
            reps.append(i)
    return reps


def _attach_all(smiles: str, max_heavy: int, max_rings: int) -> dict[str, float]:
    """Every molecule made by attaching one heavy atom to ``smiles`` (one atom per symmetry class)."""
    from rdkit import Chem

    base = _editable(smiles)
    if base.GetNumAtoms() >= max_heavy:
        return {}
    Chem.SanitizeMol(base)
    Chem.Kekulize(base, clearAromaticFlags=True)
    out: dict[str, float] = {}
    order = {1: Chem.BondType.SINGLE, 2: Chem.BondType.DOUBLE, 3: Chem.BondType.TRIPLE}
    free = [a.GetTotalNumHs() for a in base.GetAtoms()]
    for i in _symmetry_representatives(base):
        for el in ELEMENTS:
            for b in range(1, min(free[i], _VALENCE[el], 3) + 1):
                rw = Chem.RWMol(base)
                j = rw.AddAtom(Chem.Atom(el))
                rw.AddBond(i, j, order[b])
                s = _canonical(rw, max_heavy, max_rings)
                if s is not None:
                    out[s[0]] = s[1]
    return out


def _close_all(smiles: str, max_heavy: int, max_rings: int, ring_sizes: tuple[int, int] = (3, 7)) -> dict[str, float]:
    """Every molecule made from ``smiles`` by one ring-closing single bond or one raised bond order."""
    from rdkit import Chem

    base = _editable(smiles)
    Chem.SanitizeMol(base)
    Chem.Kekulize(base, clearAromaticFlags=True)
    free = [a.GetTotalNumHs() for a in base.GetAtoms()]
    n = base.GetNumAtoms()
    out: dict[str, float] = {}
    if n >= ring_sizes[0]:
        dist = Chem.GetDistanceMatrix(base)
        for i in range(n):
            for j in range(i + 1, n):
                if free[i] and free[j] and ring_sizes[0] <= dist[i, j] + 1 <= ring_sizes[1]:
                    rw = Chem.RWMol(base)
                    rw.AddBond(i, j, Chem.BondType.SINGLE)
                    s = _canonical(rw, max_heavy, max_rings)
                    if s is not None:
                        out[s[0]] = s[1]
    up = {Chem.BondType.SINGLE: Chem.BondType.DOUBLE, Chem.BondType.DOUBLE: Chem.BondType.TRIPLE}
    for bond in base.GetBonds():
        i, j = bond.GetBeginAtomIdx(), bond.GetEndAtomIdx()
        if free[i] and free[j] and bond.GetBondType() in up:
            rw = Chem.RWMol(base)
            rw.GetBondWithIdx(bond.GetIdx()).SetBondType(up[bond.GetBondType()])
            s = _canonical(rw, max_heavy, max_rings)
            if s is not None:
                out[s[0]] = s[1]
    return out


def _sample(items: dict[str, float], k: int, rng: np.random.Generator) -> dict[str, float]:
    """A seeded, weighted sample of ``k`` of the candidates (SMILES -> weight), independent of
    the dict's order; weights favour QM9-like composition (see ``ELEMENT_WEIGHTS``)."""
    keys = sorted(items)
    if len(keys) <= k:
        return {s: items[s] for s in keys}
    w = np.array([items[s] for s in keys])
    idx = np.sort(rng.choice(len(keys), size=k, replace=False, p=w / w.sum()))
    return {keys[i]: items[keys[i]] for i in idx}


def enumerate_molecules(per_size: int = 600, seed: int = 0, max_heavy: int = 9, max_rings: int = 3,
                        closure_rounds: int = 2, beam: int | None = None) -> list[str]:
    """Canonical SMILES of a deterministic QM9-like enumeration (see the module docstring).

    ``per_size`` caps the molecules kept per heavy-atom count (sizes with fewer candidates are
    kept whole); ``beam`` (default ``per_size``) is how
    many molecules of each size are grown into the next. About ``per_size * (max_heavy - 3)``
    molecules come back. The list is sorted by (heavy atoms, SMILES).
    """
    from rdkit import Chem, rdBase

    beam = per_size if beam is None else beam
    with rdBase.BlockLogs():  # quiet RDKit; the caller's log settings come back after
        rng = np.random.default_rng([seed, GENERATOR_VERSION])
        levels: list[dict[str, float]] = [{e: ELEMENT_WEIGHTS[e] for e in ELEMENTS}]
        for _ in range(2, max_heavy + 1):
            found: dict[str, float] = {}
            for s in sorted(_sample(levels[-1], beam, rng)):
                found.update(_attach_all(s, max_heavy, max_rings))
            for smi in AROMATIC_SCAFFOLDS:
                mol = Chem.MolFromSmiles(smi)
                if mol.GetNumAtoms() == len(levels) + 1 and _mol_ok(mol, max_heavy, max_rings):
                    found[Chem.MolToSmiles(mol)] = _weight(mol)
            frontier = found
            for _ in range(closure_rounds):
                new: dict[str, float] = {}
                for s in sorted(_sample(frontier, beam, rng)):
                    new.update(_close_all(s, max_heavy, max_rings))
                new = {s: w for s, w in new.items() if s not in found}
                found.update(new)
                frontier = new
            levels.append(_sample(found, per_size, rng))
    out = [s for level in levels for s in level]
    assert len(out) == len(set(out))
    return sorted(out, key=lambda s: (Chem.MolFromSmiles(s).GetNumAtoms(), s))


# --------------------------------------------------------------------------------------------
# 3D structures, G2 and the split
# --------------------------------------------------------------------------------------------

def embed_molecule(smiles: str, seed: int = 0, max_iters: int = 2000, name: str = "") -> Structure:
    """ETKDGv3 (seeded) + MMFF94 minimisation of a molecule, with explicit hydrogens.

    Raises :class:`StructureError` if embedding fails or MMFF94 has no parameters for it.
    """
    from rdkit import Chem
    from rdkit.Chem import AllChem

    mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        raise StructureError(f"'{smiles}': RDKit cannot parse this SMILES")
    mol = Chem.AddHs(mol)
    params = AllChem.ETKDGv3()
    params.randomSeed = int(seed)
    if AllChem.EmbedMolecule(mol, params) != 0:
        params.useRandomCoords = True
        if AllChem.EmbedMolecule(mol, params) != 0:
            raise StructureError(f"'{smiles}': ETKDG embedding failed")
    if not AllChem.MMFFHasAllMoleculeParams(mol):
        raise StructureError(f"'{smiles}': MMFF94 has no parameters for this molecule")
    props = AllChem.MMFFGetMoleculeProperties(mol)
    ff = AllChem.MMFFGetMoleculeForceField(mol, props)
    converged = ff.Minimize(maxIts=max_iters) == 0
    if not converged:
        converged = ff.Minimize(maxIts=10 * max_iters) == 0
    energy = ff.CalcEnergy()
    Chem.AssignStereochemistryFrom3D(mol)
    smiles_3d = Chem.MolToSmiles(Chem.RemoveHs(mol))
    order = {Chem.BondType.SINGLE: 1.0, Chem.BondType.DOUBLE: 2.0, Chem.BondType.TRIPLE: 3.0,
             Chem.BondType.AROMATIC: 1.5}
    bonds = [(b.GetBeginAtomIdx(), b.GetEndAtomIdx(), order[b.GetBondType()]) for b in mol.GetBonds()]
    return Structure([a.GetSymbol() for a in mol.GetAtoms()], mol.GetConformer().GetPositions(), bonds=bonds,
                     smiles=Chem.MolToSmiles(Chem.MolFromSmiles(smiles)), name=name,
                     info={"smiles_3d": smiles_3d, "geometry": "ETKDGv3+MMFF94", "mmff94_energy_kcal_mol": energy,
                           "mmff94_converged": bool(converged), "embed_seed": int(seed)})


def g2_molecules(max_heavy: int = 9, max_rings: int = 3) -> list[Structure]:
    """Closed-shell CHNOF molecules of ASE's G2 collection that pass the enumeration's filters.

    SMILES are perceived from the shipped geometry (RDKit, charge 0); radicals, charged
    (zwitterionic) species, O–O/N–F/O–F/F–F bonds (so also triplet O2) and bare atoms are left out.
    """
    from ase.collections import g2
    from rdkit import Chem, rdBase

    from engine_plugins.analysis.validity import perceive_bonds

    out = []
    with rdBase.BlockLogs():  # quiet RDKit; the caller's log settings come back after
        for name in sorted(g2.names):
            atoms = g2[name]
            symbols = atoms.get_chemical_symbols()
            heavy = sum(s != "H" for s in symbols)
            if not set(symbols) <= ALLOWED_ELEMENTS or not 1 <= heavy <= max_heavy or len(symbols) < 2:
                continue
            perceived = perceive_bonds(symbols, atoms.get_positions())
            if not perceived.bond_orders or not perceived.sanitizes:
                continue
            heavy_mol = Chem.RemoveHs(perceived.mol)
            if not _mol_ok(heavy_mol, max_heavy, max_rings):
                continue
            smiles = Chem.MolToSmiles(heavy_mol)
            s = Structure(symbols, atoms.get_positions(), smiles=Chem.MolToSmiles(Chem.MolFromSmiles(smiles)),
                          name=f"g2-{name}", info={"geometry": "ASE G2 collection", "g2_name": name})
            out.append(s)
    return out


def split_of(smiles: str, seed: int = 0, fractions: Sequence[float] = SPLIT_FRACTIONS) -> str:
    """'train', 'val' or 'test' from a hash of (seed, canonical SMILES): by molecule, stable."""
    h = hashlib.sha256(f"{seed}:{smiles}".encode()).digest()
    u = int.from_bytes(h[:8], "big") / 2.0 ** 64
    edges = np.cumsum(fractions) / np.sum(fractions)
    return SPLITS[int(np.searchsorted(edges, u, side="right"))] if u < edges[-1] else SPLITS[-1]


def molecule_id(smiles: str) -> str:
    """A stable name for a molecule of the set: ``qm9like-`` + 10 hex digits of sha256(SMILES)."""
    return "qm9like-" + hashlib.sha256(smiles.encode()).hexdigest()[:10]


def _file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build_molecule_dataset(out_dir: str | Path, n_molecules: int = 2000, seed: int = 0, per_size: int | None = None,
                           include_g2: bool = True, max_heavy: int = 9, verbose: bool = False) -> dict[str, Any]:
    """Build the QM9-like set: enumerate, select ``n_molecules``, embed in 3D, check, split, write.

    The candidate pool is ``enumerate_molecules(per_size, seed)`` (``per_size`` defaults to
    ``max(50, ceil(n_molecules / 5))`` so the pool comfortably exceeds the request) plus, with
    ``include_g2``, the G2 molecules (their shipped geometry wins over an ETKDG one for the same
    SMILES). ``n_molecules`` are taken in the order of a seeded permutation of the pool; each is
    embedded (ETKDGv3, seed ``seed``) and MMFF94-minimised, and kept only if it passes the validity
    checks of :func:`engine_plugins.analysis.validity.check_molecule` against its own SMILES
    (RDKit bond perception from 3D, neutral, no radicals, one fragment, same graph); rejected
    molecules are listed in the manifest and replaced by the next in the permutation.

    Writes ``train.extxyz``, ``val.extxyz``, ``test.extxyz`` and ``manifest.json`` into
    ``out_dir`` and returns the manifest (a dict).
    """
    from rdkit import rdBase

    from engine_plugins.analysis.validity import check_molecule

    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    per_size = max(50, math.ceil(n_molecules / 5)) if per_size is None else per_size
    enumerated = enumerate_molecules(per_size=per_size, seed=seed, max_heavy=max_heavy)
    t_enum = time.perf_counter() - t0
    g2 = {s.smiles: s for s in g2_molecules(max_heavy=max_heavy)} if include_g2 else {}
    pool = sorted(set(enumerated) | set(g2))
    order = np.random.default_rng([seed, GENERATOR_VERSION, 1]).permutation(len(pool))
    if n_molecules > len(pool):
        raise ValueError(f"asked for {n_molecules} molecules but the pool has {len(pool)}; raise per_size")

    kept: list[Structure] = []
    rejected: list[dict[str, str]] = []
    with rdBase.BlockLogs():  # quiet RDKit; the caller's log settings come back after
        for k in order:
            if len(kept) == n_molecules:
                break
            smi = pool[k]
            try:
                if smi in g2:
                    s = g2[smi].copy()
                    s.info["source"] = "ase-g2"
                else:
                    s = embed_molecule(smi, seed=seed)
                    s.info["source"] = "enumerated"
            except StructureError as exc:
                rejected.append({"smiles": smi, "reason": str(exc)})
                continue
            v = check_molecule(s, smi)
            if not v.valid_and_same_graph:
                rejected.append({"smiles": smi, "reason": "reference structure fails validity: " + v.summary()})
                continue
            kept.append(s)
    if len(kept) < n_molecules:
        raise ValueError(f"only {len(kept)} of {n_molecules} molecules could be built; raise per_size")

    kept.sort(key=lambda s: (s.n_heavy, s.smiles))
    by_split: dict[str, list[Structure]] = {sp: [] for sp in SPLITS}
    for s in kept:
        sp = split_of(s.smiles, seed)
        s.name = s.name or molecule_id(s.smiles)
        s.info.update(split=sp, heavy_atoms=s.n_heavy, formula=s.formula, dataset="QM9-like (not QM9)")
        by_split[sp].append(s)
    files = {}
    for sp, items in by_split.items():
        p = write_structures(out_dir / f"{sp}.extxyz", items)
        files[sp] = {"path": p.name, "n_molecules": len(items), "sha256": _file_sha256(p)}
    sizes: dict[str, int] = {}
    for s in kept:
        sizes[str(s.n_heavy)] = sizes.get(str(s.n_heavy), 0) + 1
    manifest = {
        "dataset": DATASET_NAME,
        "not_qm9": "QM9 itself is not used or reproduced; molecules are enumerated and geometries are "
                   "ETKDGv3 + MMFF94 (or ASE G2 where marked source=ase-g2)",
        "generator_version": GENERATOR_VERSION,
        "rdkit_version": rdBase.rdkitVersion,
        "seed": seed, "n_molecules": len(kept), "per_size": per_size, "max_heavy_atoms": max_heavy,
        "include_g2": include_g2, "pool_size": len(pool), "n_enumerated": len(enumerated), "n_g2": len(g2),
        "elements": sorted(ALLOWED_ELEMENTS),
        "split_rule": f"sha256('{{seed}}:{{canonical smiles}}') -> fractions {list(SPLIT_FRACTIONS)} (train, val, test)",
        "files": files,
        "heavy_atom_counts": dict(sorted(sizes.items(), key=lambda kv: int(kv[0]))),
        "n_from_g2": sum(s.info.get("source") == "ase-g2" for s in kept),
        "smiles": {sp: [s.smiles for s in items] for sp, items in by_split.items()},
        "rejected": rejected,
        "timing_s": {"enumeration": round(t_enum, 2), "total": round(time.perf_counter() - t0, 2)},
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=1))
    if verbose:
        print(f"{DATASET_NAME}: {len(kept)} molecules "
              f"({', '.join(sp + ' ' + str(f['n_molecules']) for sp, f in files.items())}), "
              f"{len(rejected)} rejected, {manifest['timing_s']['total']} s -> {out_dir}")
    return manifest


def load_molecule_dataset(out_dir: str | Path, split: str | None = None) -> list[Structure]:
    """Read back a built set (one split, or all of them in train, val, test order)."""
    out_dir = Path(out_dir)
    splits = SPLITS if split is None else (split,)
    if split is not None and split not in SPLITS:
        raise ValueError(f"unknown split '{split}'; one of {SPLITS}")
    out = []
    for sp in splits:
        out += read_structures(out_dir / f"{sp}.extxyz")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m engine_plugins.data.molecules",
                                description="Build the QM9-like molecule set (enumerated; not QM9).")
    p.add_argument("out_dir", type=Path)
    p.add_argument("--n-molecules", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--per-size", type=int, default=None, help="molecules kept per heavy-atom count in the pool")
    p.add_argument("--no-g2", action="store_true", help="leave out ASE's G2 molecules")
    args = p.parse_args(argv)
    # through the package module, not __main__'s copy of it (python -m runs this file twice over)
    from engine_plugins.data.molecules import build_molecule_dataset as build

    build(args.out_dir, args.n_molecules, args.seed, per_size=args.per_size, include_g2=not args.no_g2, verbose=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
