"""QM9-like molecule set (enumeration, 3D build, split, files), crystal prototypes, and reading
users' structure files with clear errors. Small sizes: the whole file runs in a few seconds."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("rdkit")

from engine_plugins.data.molecules import (  # noqa: E402
    ALLOWED_ELEMENTS,
    SPLITS,
    Structure,
    StructureError,
    build_molecule_dataset,
    embed_molecule,
    enumerate_molecules,
    hill_formula,
    load_molecule_dataset,
    read_structures,
    split_of,
    write_structures,
)

PER_SIZE = 10  # tiny enumeration for tests (about 80 molecules, < 1 s)


@pytest.fixture(scope="module")
def enumerated() -> list[str]:
    return enumerate_molecules(per_size=PER_SIZE, seed=0)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("qm9like")
    return out, build_molecule_dataset(out, n_molecules=24, seed=3, per_size=PER_SIZE)


# ------------------------------------------------------------------------------ enumeration

def test_enumeration_is_deterministic(enumerated):
    assert enumerate_molecules(per_size=PER_SIZE, seed=0) == enumerated
    other = enumerate_molecules(per_size=PER_SIZE, seed=1)
    assert other != enumerated  # the seed drives the sampling
    assert len(enumerated) == len(set(enumerated))


def test_enumerated_molecules_are_qm9_like(enumerated):
    """Independent of the enumeration's own filter: RDKit re-parses every SMILES from scratch."""
    from ase import Atoms
    from rdkit import Chem
    from rdkit.Chem.rdMolDescriptors import CalcMolFormula

    sizes = set()
    for smi in enumerated:
        mol = Chem.MolFromSmiles(smi)  # sanitises: valences, aromaticity
        assert mol is not None, smi
        assert Chem.MolToSmiles(mol) == smi, "not canonical"
        heavy = mol.GetNumAtoms()
        sizes.add(heavy)
        assert 1 <= heavy <= 9, smi
        mol_h = Chem.AddHs(mol)
        assert {a.GetSymbol() for a in mol_h.GetAtoms()} <= ALLOWED_ELEMENTS, smi
        assert all(a.GetFormalCharge() == 0 for a in mol_h.GetAtoms()), smi
        assert all(a.GetNumRadicalElectrons() == 0 for a in mol_h.GetAtoms()), smi
        assert len(Chem.GetMolFrags(mol)) == 1, smi
        assert "." not in smi and "+" not in smi and "-]" not in smi
        # our formula agrees with ASE's and RDKit's
        symbols = [a.GetSymbol() for a in mol_h.GetAtoms()]
        assert hill_formula(symbols) == Atoms(symbols).get_chemical_formula(mode="hill") == CalcMolFormula(mol_h)
    assert sizes == set(range(1, 10))


def test_embedding_is_seeded():
    a = embed_molecule("CC(=O)Nc1ccncc1", seed=7)
    b = embed_molecule("CC(=O)Nc1ccncc1", seed=7)
    np.testing.assert_array_equal(a.positions, b.positions)
    assert a.n_heavy == 10 and a.smiles == "CC(=O)Nc1ccncc1"
    assert a.info["geometry"] == "ETKDGv3+MMFF94" and a.info["mmff94_converged"]


# ------------------------------------------------------------------------------ built set

def test_build_writes_split_files_and_manifest(built):
    out, manifest = built
    assert manifest["n_molecules"] == 24 and "not QM9" in manifest["dataset"]
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk["smiles"] == manifest["smiles"]
    seen = set()
    for sp in SPLITS:
        structures = read_structures(out / f"{sp}.extxyz")
        assert [s.smiles for s in structures] == manifest["smiles"][sp]
        assert len(structures) == manifest["files"][sp]["n_molecules"]
        for s in structures:
            assert s.info["split"] == sp and split_of(s.smiles, 3) == sp
            assert s.smiles not in seen, "a molecule in two splits"
            seen.add(s.smiles)
            assert set(s.symbols) <= ALLOWED_ELEMENTS and 1 <= s.n_heavy <= 9
            # formula: ours = ASE's = RDKit's for the SMILES
            from rdkit import Chem
            from rdkit.Chem.rdMolDescriptors import CalcMolFormula

            assert s.formula == s.to_ase().get_chemical_formula(mode="hill")
            assert s.formula == CalcMolFormula(Chem.AddHs(Chem.MolFromSmiles(s.smiles)))
    assert len(seen) == 24
    assert sum(manifest["heavy_atom_counts"].values()) == 24


def test_reference_structures_are_valid(built):
    from engine_plugins.analysis.validity import validity_report

    out, _ = built
    summary, results = validity_report(load_molecule_dataset(out))
    assert summary["valid"] == 1.0 and summary["valid_and_same_graph"] == 1.0, \
        [r.summary() for r in results if not r.valid_and_same_graph]


def test_build_is_reproducible(built, tmp_path):
    out, manifest = built
    again = build_molecule_dataset(tmp_path, n_molecules=24, seed=3, per_size=PER_SIZE)
    assert again["smiles"] == manifest["smiles"]
    for sp in SPLITS:
        assert again["files"][sp]["sha256"] == manifest["files"][sp]["sha256"]


def test_split_is_by_molecule_and_stable():
    keys = [f"C{'C' * (i % 7)}O{i}" for i in range(4000)]
    splits = [split_of(k, 0) for k in keys]
    frac = {sp: splits.count(sp) / len(keys) for sp in SPLITS}
    assert abs(frac["train"] - 0.8) < 0.03 and abs(frac["val"] - 0.1) < 0.02 and abs(frac["test"] - 0.1) < 0.02
    assert splits == [split_of(k, 0) for k in keys]  # no dependence on the rest of the set
    assert splits != [split_of(k, 1) for k in keys]


# ------------------------------------------------------------------------------ crystals

@pytest.mark.filterwarnings("ignore::DeprecationWarning:spglib")
def test_crystal_prototypes_space_groups_and_box_widths():
    """Space groups checked independently with spglib (through pymatgen); boxes >= 2 x cutoff."""
    pytest.importorskip("pymatgen")
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    from engine_plugins.data.crystals import CRYSTAL_PROTOTYPES, build_crystal, cell_widths

    for name, spec in CRYSTAL_PROTOTYPES.items():
        conv = build_crystal(name, cutoff=None)
        assert SpacegroupAnalyzer(conv.to_pymatgen(), symprec=1e-3).get_space_group_number() == spec.spacegroup, name
        for cutoff in (3.0, 5.0, 6.5):
            s = build_crystal(name, cutoff=cutoff)
            w = cell_widths(s.cell)
            assert w.min() >= 2 * cutoff - 1e-9, (name, cutoff, w)
            # not needlessly large: one repeat fewer along any axis would be too thin
            reps = np.array(s.info["supercell"])
            assert np.all((reps == 1) | (w * (reps - 1) / reps < 2 * cutoff)), (name, cutoff)
            assert s.periodic and s.formula == s.to_ase().get_chemical_formula(mode="hill")
        s.validate()


# ------------------------------------------------------------------------------ reading files

def _ethanol() -> Structure:
    return embed_molecule("CCO", seed=0)


def test_read_formats_roundtrip(tmp_path):
    import ase.io
    from rdkit import Chem
    from rdkit.Chem import AllChem

    ref = _ethanol()
    atoms = ref.to_ase()
    for ext, fmt in ((".xyz", "xyz"), (".pdb", "proteindatabank"), (".extxyz", "extxyz")):
        p = tmp_path / f"ethanol{ext}"
        ase.io.write(str(p), atoms, format=fmt)
        (s,) = read_structures(p)
        assert s.symbols == ref.symbols, ext
        np.testing.assert_allclose(s.positions, ref.positions, atol=2e-3 if ext == ".pdb" else 1e-6)
    assert read_structures(tmp_path / "ethanol.extxyz")[0].smiles == "CCO"

    # SDF / MOL through RDKit: bonds and SMILES come along
    mol = Chem.AddHs(Chem.MolFromSmiles("c1ccncc1O"))
    AllChem.EmbedMolecule(mol, randomSeed=1)
    with Chem.SDWriter(str(tmp_path / "two.sdf")) as w:
        w.write(mol)
        w.write(mol)
    Chem.MolToMolFile(mol, str(tmp_path / "one.mol"))
    two = read_structures(tmp_path / "two.sdf")
    (one,) = read_structures(tmp_path / "one.mol")
    assert len(two) == 2 and one.smiles == "Oc1cccnc1" and len(one.bonds) == mol.GetNumBonds()
    np.testing.assert_allclose(one.positions, mol.GetConformer().GetPositions(), atol=1e-4)

    # periodic: CIF through ASE keeps the cell
    from engine_plugins.data.crystals import build_crystal

    nacl = build_crystal("NaCl-rocksalt", cutoff=None)
    ase.io.write(str(tmp_path / "nacl.cif"), nacl.to_ase())
    (c,) = read_structures(tmp_path / "nacl.cif")
    assert c.periodic and c.formula == "Cl4Na4"
    np.testing.assert_allclose(np.abs(c.cell), np.abs(nacl.cell), atol=1e-6)


def test_read_lammps_data(tmp_path):
    """The project's own LAMMPS data writer -> MDAnalysis reader: elements from masses, cell, positions."""
    from engine_plugins.data.lammps_data import write_lammps_data
    from engine_plugins.data.systems import fcc_lattice

    sysdef = fcc_lattice(2, jitter=0.05, type_names=("Ar", "Ne"), seed=2)
    p = write_lammps_data(tmp_path / "argon.data", sysdef)
    (s,) = read_structures(p)
    assert s.symbols == sysdef.atom_type_names and s.periodic
    np.testing.assert_allclose(s.positions, sysdef.positions, atol=1e-4)
    np.testing.assert_allclose(s.cell, sysdef.box, atol=1e-6)
    (s2,) = read_structures(p, type_elements=["Kr", "Xe"])
    assert set(s2.symbols) == {"Kr", "Xe"}


def test_write_structures_roundtrip(tmp_path):
    hf = Structure(["F", "H"], [[0, 0, 0], [0, 0, 0.92]], smiles="F")  # ASE's extxyz parser reads "F" as False
    ref = [_ethanol(), hf]
    p = write_structures(tmp_path / "out.extxyz", ref)
    back = read_structures(p)
    assert [s.smiles for s in back] == ["CCO", "F"]
    np.testing.assert_allclose(back[0].positions, ref[0].positions, atol=1e-7)


@pytest.mark.parametrize("name, content, message", [
    ("empty.xyz", "", "empty"),
    ("blank.sdf", "\n   \n", "empty"),
    ("mol.unknown", "1\n\nC 0 0 0\n", "unknown structure format"),
    ("nan.xyz", "2\n\nC 0 0 0\nO nan 0 1.2\n", "NaN"),
    ("overlap.xyz", "3\n\nC 0 0 0\nO 0 0 1.2\nH 0 0.1 0.2\n", "overlapping atoms"),
    ("garbage.xyz", "this is not\nan xyz file\n", "could not read"),
    ("zero.xyz", "0\n\n", "no"),
])
def test_bad_files_give_clear_errors(tmp_path, name, content, message):
    p = tmp_path / name
    p.write_text(content)
    with pytest.raises(StructureError, match=message) as exc:
        read_structures(p)
    assert str(p) in str(exc.value)


def test_sdf_errors_name_the_record(tmp_path):
    from rdkit import Chem

    flat = tmp_path / "flat.sdf"
    flat.write_text(Chem.MolToMolBlock(Chem.MolFromSmiles("CCOC(=O)C")) + "$$$$\n")  # 2D depiction
    with pytest.raises(StructureError, match="record 0 has 2D coordinates"):
        read_structures(flat)
    broken = tmp_path / "broken.sdf"
    broken.write_text("junk\n  not a mol block\n\n  2  1  0  0  0  0  0  0  0  0999 V2000\n$$$$\n")
    with pytest.raises(StructureError, match="record 0 could not be parsed"):
        read_structures(broken)


def test_missing_file_and_unknown_format(tmp_path):
    with pytest.raises(StructureError, match="no such file"):
        read_structures(tmp_path / "nope.xyz")
    p = tmp_path / "a.xyz"
    p.write_text("1\n\nC 0 0 0\n")
    with pytest.raises(StructureError, match="unknown format 'gro'"):
        read_structures(p, format="gro")
    assert read_structures(p, format="xyz")[0].symbols == ["C"]


def test_periodic_overlap_uses_minimum_image():
    cell = np.eye(3) * 5.0
    s = Structure(["Ar", "Ar"], [[0.1, 0, 0], [4.8, 0, 0]], cell=cell, pbc=True)  # 0.3 A apart through the face
    with pytest.raises(StructureError, match="overlapping"):
        s.validate()
    Structure(["Ar", "Ar"], [[0.1, 0, 0], [4.8, 0, 0]]).validate()  # 4.7 A apart without the cell
