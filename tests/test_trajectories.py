"""Datasets from trajectories: unwrapping, CG mappings, frame pairs, case splits, bad inputs.

Every check compares with an independent reference on real engine output: LAMMPS's own unwrapped
coordinates and compute msd, MDAnalysis's EinsteinMSD, NoJump and center_of_mass.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from _md_runs import TRANSPORT_T, WATER_T, transport_run, water_run
from engine_plugins.data.cg_mapping import (CGMapping, CGMappingError, graph_partition_mapping, load_mapping_file,
                                            molecule_mapping, partition_graph, residue_mapping, resolve_mapping)
from engine_plugins.data.datasets import FramePairDataset, collate_frame_pairs, split_cases
from engine_plugins.data.trajectories import (TrajectoryCase, TrajectoryError, frame_pairs, load_cases,
                                              minimum_image, msd_curve, open_universe)

pytestmark = pytest.mark.filterwarnings("ignore:DCDReader currently makes:DeprecationWarning")


@pytest.fixture(scope="module")
def transport_case() -> TrajectoryCase:
    return load_cases(transport_run())[0]


@pytest.fixture(scope="module")
def water_case() -> TrajectoryCase:
    return load_cases(water_run())[0]


def _lammps_unwrapped(case: TrajectoryCase) -> np.ndarray:
    """LAMMPS's own xu yu zu (read by MDAnalysis with the 'unwrapped' convention)."""
    u = open_universe(case.topology, case.topology.parent / case.meta["reference_unwrapped"], format="LAMMPSDUMP",
                      topology_format="DATA", atom_style="id type x y z", lammps_coordinate_convention="unwrapped",
                      dt=case.meta["timestep"])
    return np.stack([ts.positions.astype(np.float64) for ts in u.trajectory])


# ------------------------------------------------------------------------------------ unwrapping
def test_image_unwrapping_equals_lammps_unwrapped_coordinates(transport_case):
    traj = transport_case.read()
    assert traj.unwrap == "images" and traj.n_frames == transport_case.meta["n_frames"]
    ref = _lammps_unwrapped(transport_case)
    assert np.abs(traj.positions - ref).max() < 1e-4          # float32 reading of %.10g columns
    span = ref.max(axis=0) - ref.min(axis=0)
    assert span.max() > 0.5 * transport_case.meta["box"][0]   # atoms did cross boundaries
    # unwrapping by continuity gives the same displacements (atoms move < L/2 between frames)
    cont = transport_case.read(unwrap="continuity")
    assert cont.unwrap == "continuity"
    d_img = traj.positions - traj.positions[0]
    assert np.abs((cont.positions - cont.positions[0]) - d_img).max() < 1e-4
    # a file of unwrapped coordinates is used as it is
    ref_file = transport_case.topology.parent / "ref_unwrapped.lammpstrj"
    kwargs = {"format": "LAMMPSDUMP", "topology_format": "DATA", "atom_style": "id type x y z", "dt": 0.001}
    case2 = TrajectoryCase.from_files(transport_case.topology, ref_file, TRANSPORT_T, universe_kwargs=kwargs,
                                      type_map={"1": "Fw", "2": "Li"})
    t2 = case2.read()
    assert t2.unwrap == "unwrapped" and np.allclose(t2.positions, ref)


def test_msd_equals_lammps_compute_msd(transport_case):
    traj = transport_case.read()
    table = np.loadtxt(transport_case.topology.parent / "msd.txt", ndmin=2)
    species = np.array(traj.species)
    d2 = ((traj.positions - traj.positions[0]) ** 2).sum(-1)
    for col, sp in ((1, "Fw"), (2, "Li")):
        ours = d2[:, species == sp].mean(1)
        assert np.allclose(ours, table[:, col], rtol=1e-5, atol=1e-5), sp
    assert table[-1, 2] > 1.0  # the mobile species moved several Å


def test_dataset_msd_equals_mdanalysis_einstein_msd(transport_case):
    from MDAnalysis.analysis.msd import EinsteinMSD

    u = open_universe(transport_case.topology, transport_case.trajectory, format="LAMMPSDUMP", topology_format="DATA",
                      atom_style="id type x y z", unwrap_images=True, dt=0.001)
    ref = EinsteinMSD(u, select="type 2", msd_type="xyz", fft=False).run().results.timeseries
    for lag in (1, 5, 12, 20):
        ds = FramePairDataset([transport_case], lag=lag, dtype=torch.float64)
        li = ds.type_names.index("Li")
        msd = np.mean([(s["displacement"][s["types"] == li] ** 2).sum(-1).mean().item() for s in ds])
        assert msd == pytest.approx(ref[lag], rel=1e-5, abs=1e-6), lag


def test_continuity_unwrapping_of_dcd_equals_mdanalysis_nojump(water_case):
    from MDAnalysis.analysis.msd import EinsteinMSD
    from MDAnalysis.transformations import NoJump

    traj = water_case.read()
    assert traj.unwrap == "continuity"
    u = water_case.universe()
    u.trajectory.add_transformations(NoJump())
    ref = np.stack([ts.positions.astype(np.float64) for ts in u.trajectory])
    assert np.abs(traj.positions - ref).max() < 1e-4
    lags = [1, 4, 10, 20]
    einstein = EinsteinMSD(u, select="name O", msd_type="xyz", fft=False).run().results.timeseries
    oxygens = np.array(traj.species) == "O"
    assert np.allclose(msd_curve(traj.positions, lags, oxygens), einstein[lags], rtol=1e-5)


def test_any_mdanalysis_format_xtc(water_case, tmp_path):
    """A third format: the water trajectory rewritten as XTC reads to the same (0.01 Å precision) frames."""
    import MDAnalysis as mda

    u = water_case.universe()
    with mda.Writer(str(tmp_path / "w.xtc"), n_atoms=len(u.atoms)) as w:
        for ts in u.trajectory:
            w.write(u.atoms)
    case = TrajectoryCase.from_files(water_case.topology, tmp_path / "w.xtc", WATER_T, case_id="xtc",
                                     frame_interval=water_case.frame_interval)
    a, b = water_case.read(), case.read()
    assert b.unwrap == "continuity" and np.abs(a.positions - b.positions).max() < 0.01
    assert np.allclose(b.times, a.times)


# ------------------------------------------------------------------------------------ CG mappings
def test_residue_beads_equal_mdanalysis_center_of_mass(water_case):
    traj = water_case.read(mapping="residue")
    u = water_case.universe()
    u.atoms.masses = np.load(water_case.atom_masses)
    ref = np.stack([u.atoms.center_of_mass(compound="residues") for ts in u.trajectory])
    assert traj.positions.shape == ref.shape == (traj.n_frames, len(u.residues), 3)
    diff = minimum_image((traj.positions - ref).reshape(-1, 3), traj.boxes[0])
    assert np.abs(diff).max() < 1e-4
    assert set(traj.species) == {"HOH"} and np.allclose(traj.masses, u.residues[0].atoms.masses.sum())
    # beads are unwrapped: no jump between frames
    assert np.abs(np.diff(traj.positions, axis=0)).max() < 2.0
    # the same through the registry, a callable and a mapping file
    for how in (residue_mapping, molecule_mapping, "molecule"):
        other = water_case.read(mapping=how)
        assert np.allclose(other.positions, traj.positions)


def test_bead_com_is_whole_across_the_boundary():
    box = np.diag([10.0, 10.0, 10.0])
    x = np.array([[9.9, 5.0, 5.0], [0.1, 5.0, 5.0], [3.0, 3.0, 3.0]])  # a bead split by the boundary
    cg = CGMapping(3, [[0, 1], [2]], ["A", "B"], ["T", "T"])
    com = cg.apply(x, np.array([1.0, 3.0, 2.0]), box)
    assert np.allclose(com[0], [9.9 + 0.75 * 0.2, 5.0, 5.0]) and np.allclose(com[1], x[2])
    assert np.allclose(cg.bead_masses(np.array([1.0, 3.0, 2.0])), [4.0, 2.0])


@pytest.fixture(scope="module")
def villin(tmp_path_factory):
    """Villin headpiece (OpenMM's test.pdb, waters and ions removed) with CONECT bonds."""
    import MDAnalysis as mda
    import openmm.app as app

    from engine_plugins.data.simulate import write_pdb_with_bonds

    pdb = app.PDBFile(os.path.join(os.path.dirname(app.__file__), "data", "test.pdb"))
    m = app.Modeller(pdb.topology, pdb.positions)
    m.deleteWater()
    m.delete([a for a in m.topology.atoms() if a.residue.name in ("Cl", "CL", "Na", "NA")])
    path = write_pdb_with_bonds(tmp_path_factory.mktemp("villin") / "villin.pdb", m.topology, m.positions)
    return mda.Universe(str(path))


def test_graph_partition_of_a_protein(villin):
    u = villin
    cg = graph_partition_mapping(u, atoms_per_bead=4)
    again = graph_partition_mapping(u, atoms_per_bead=4)
    assert [a.tolist() for a in cg.bead_atoms] == [a.tolist() for a in again.bead_atoms]  # deterministic
    owner = cg.atom_to_bead
    assert np.all(owner >= 0)                                       # every atom in exactly one bead
    elements = np.array(u.atoms.elements)
    heavy = elements != "H"
    per_bead = np.array([heavy[b].sum() for b in cg.bead_atoms])
    assert cg.n_beads == pytest.approx(heavy.sum() / 4, rel=0.2)
    assert 2 <= np.median(per_bead) <= 5 and per_bead.min() >= 1
    bonds = u.bonds.to_indices()
    for i, j in bonds:                                              # hydrogens sit with their heavy atom
        if heavy[i] != heavy[j]:
            assert owner[i] == owner[j]
    from engine_plugins.data.cg_mapping import _split_components
    for b in cg.bead_atoms:                                         # every bead is connected
        inside = np.isin(bonds, b).all(1)
        assert len(_split_components(b, bonds[inside])) == 1
    assert all(t == "".join(t.split()) for t in cg.bead_types) and "C2H2NO" in cg.bead_types  # backbone beads
    # residue and molecule mappings of the same protein
    assert residue_mapping(u).n_beads == 35 and molecule_mapping(u).n_beads == 1
    # bead positions are mass-weighted centres
    pos = cg.apply(u.atoms.positions, u.atoms.masses)
    b = cg.bead_atoms[3]
    assert np.allclose(pos[3], u.atoms[b].center_of_mass())


def test_partition_graph_of_a_chain_is_contiguous():
    n = 40
    edges = np.array([[i, i + 1] for i in range(n - 1)])
    parts = partition_graph(n, edges, 5)
    assert len(parts) == 8 and all(np.array_equal(p, np.arange(p[0], p[0] + len(p))) for p in parts)
    assert sorted(np.concatenate(parts).tolist()) == list(range(n))


def test_mapping_file_and_registry(villin, tmp_path):
    from engine_plugins.plugins import get_plugin_manager

    pm = get_plugin_manager()
    assert {"residue", "molecule", "file", "graph_partition"} <= set(pm.registry["cg_mappings"])
    cg = pm.get("cg_mappings", "graph_partition").build(villin, atoms_per_bead=6)
    path = cg.save(tmp_path / "map.json")
    loaded = load_mapping_file(path, len(villin.atoms))
    assert loaded.bead_names == cg.bead_names and loaded.bead_types == cg.bead_types
    assert all(np.array_equal(a, b) for a, b in zip(loaded.bead_atoms, cg.bead_atoms))
    via_registry = pm.get("cg_mappings", "file").build(villin, path=path)
    assert via_registry.n_beads == cg.n_beads
    assert resolve_mapping(str(path), villin).n_beads == cg.n_beads
    # the simple form: bead name -> indices, type = name
    simple = tmp_path / "simple.json"
    simple.write_text(json.dumps({"NTERM": [0, 1, 2, 3], "CA2": [20]}))
    s = load_mapping_file(simple, len(villin.atoms))
    assert s.bead_types == ["NTERM", "CA2"] and s.n_beads == 2


def test_water_file_mapping_dataset(water_case, tmp_path):
    """A user mapping file on the DCD case: one bead per water from the file = residue beads."""
    n_mol = water_case.meta["formula"]["HOH"]
    path = tmp_path / "w.json"
    path.write_text(json.dumps({"beads": {f"W{k}": [3 * k, 3 * k + 1, 3 * k + 2] for k in range(n_mol)},
                                "types": {f"W{k}": "W" for k in range(n_mol)}}))
    a = water_case.read(mapping=str(path))
    b = water_case.read(mapping="residue")
    assert a.species[0] == "W" and np.allclose(a.positions, b.positions)


# ------------------------------------------------------------------------------------ dataset
def test_frame_pair_dataset_items(transport_case, water_case):
    lag = 4
    ds = FramePairDataset([transport_case, water_case], lag=lag, mapping=None)
    assert ds.type_names == ["Fw", "Li", "O", "H"]
    n_t = transport_case.meta["n_frames"] - lag
    n_w = water_case.meta["n_frames"] - lag
    assert len(ds) == n_t + n_w
    s = ds[2]
    assert s["case_id"] == transport_case.case_id and s["frame"].item() == 2
    box = s["box"].diagonal()
    assert torch.all(s["X_tau"] >= 0) and torch.all(s["X_tau"] < box)
    assert torch.allclose(s["X_tau_plus"] - s["X_tau"], s["displacement"], atol=1e-5)
    assert s["temperature"].item() == TRANSPORT_T
    assert s["lag_time"].item() == pytest.approx(lag * transport_case.frame_interval)
    li = s["types"] == 1
    assert torch.allclose(s["masses"][li], torch.tensor(6.94))
    w = ds[n_t]
    assert w["case_id"] == water_case.case_id and w["temperature"].item() == WATER_T
    batch = collate_frame_pairs([s, w])
    assert batch["X_tau"].shape == (len(s["types"]) + len(w["types"]), 3)
    assert batch["batch"].bincount().tolist() == batch["n_atoms"].tolist()
    assert batch["case_id"] == [transport_case.case_id, water_case.case_id] and batch["box"].shape == (2, 3, 3)
    loader = torch.utils.data.DataLoader(ds, batch_size=3, collate_fn=collate_frame_pairs)
    assert next(iter(loader))["temperature"].shape == (3,)
    # CG dataset: beads of water, stride between origins
    cg = FramePairDataset([water_case], lag=lag, mapping="residue", stride=3)
    assert len(cg) == len(range(0, n_w, 3)) and cg.type_names == ["HOH"]
    assert cg[0]["X_tau"].shape == (water_case.meta["formula"]["HOH"], 3)


def _fake_cases(compositions, temperatures):
    return [TrajectoryCase(case_id=f"{c}_T{t:g}", temperature=t, topology=Path(f"{c}.data"),
                           trajectory=Path(f"{c}_{t:g}.dump"), composition=c)
            for c in compositions for t in temperatures]


def test_case_held_out_split():
    comps, temps = ["A", "B", "C", "D"], [600.0, 800.0, 1000.0, 1200.0]
    cases = _fake_cases(comps, temps)
    split = split_cases(cases, test_compositions=["C"], test_temperatures=[1200.0], val_fraction=0.25,
                        val_by="composition", seed=3)
    ids = split.ids()
    assert not (set(ids["train"]) & set(ids["test"])) and not (set(ids["train"]) & set(ids["val"]))
    assert not (set(ids["val"]) & set(ids["test"]))
    assert sorted(ids["train"] + ids["val"] + ids["test"]) == sorted(c.case_id for c in cases)
    assert all(c.composition == "C" or c.temperature == 1200.0 for c in split.test) and len(split.test) == 7
    train_comps = {c.composition for c in split.train}
    assert "C" not in train_comps and 1200.0 not in {c.temperature for c in split.train}
    val_comps = {c.composition for c in split.val}
    assert len(val_comps) == 1 and not (val_comps & train_comps)     # whole compositions
    assert split_cases(cases, val_fraction=0.25, seed=3).ids() == split_cases(cases, val_fraction=0.25, seed=3).ids()
    with pytest.raises(TrajectoryError, match="no case has composition"):
        split_cases(cases, test_compositions=["Z"])
    with pytest.raises(TrajectoryError, match="no case has temperature"):
        split_cases(cases, test_temperatures=[700.0])
    with pytest.raises(TrajectoryError, match="no training"):
        split_cases(cases, test_temperatures=temps)


def test_split_datasets_share_no_case(transport_case, water_case):
    split = split_cases([transport_case, water_case], test_compositions=[water_case.composition])
    train = FramePairDataset(split.train, lag=2)
    test = FramePairDataset(split.test, lag=2)
    assert not set(train.case_ids()) & set(test.case_ids())
    assert {s["case_id"] for s in train} == {transport_case.case_id}


# ------------------------------------------------------------------------------------ bad inputs
def test_bad_inputs(transport_case, water_case, tmp_path):
    with pytest.raises(FileNotFoundError, match="topology file"):
        open_universe(tmp_path / "nope.pdb", water_case.trajectory)
    with pytest.raises(FileNotFoundError, match="trajectory file"):
        open_universe(water_case.topology, tmp_path / "nope.dcd")
    with pytest.raises(TrajectoryError, match="unknown trajectory format 'nope'"):
        open_universe(water_case.topology, water_case.trajectory, format="nope")
    odd = tmp_path / "traj.xyzzy"
    odd.write_text("x")
    with pytest.raises(TrajectoryError, match="cannot tell the trajectory format"):
        open_universe(water_case.topology, odd)
    with pytest.raises(TrajectoryError, match="could not open"):
        open_universe(water_case.topology, transport_case.trajectory, dt=0.001)  # 555 atoms vs a 135-atom dump
    with pytest.raises(FileNotFoundError):
        load_cases(tmp_path / "missing")
    bad_case = tmp_path / "case.json"
    bad_case.write_text(json.dumps({"case_id": "x", "temperature": 300}))
    with pytest.raises(TrajectoryError, match="lacks the field"):
        TrajectoryCase.load(bad_case)
    # lags
    with pytest.raises(TrajectoryError, match="longer than the trajectory"):
        FramePairDataset([transport_case], lag=transport_case.meta["n_frames"])
    with pytest.raises(TrajectoryError, match="positive"):
        frame_pairs(10, 0)
    # unwrapping modes
    with pytest.raises(TrajectoryError, match="image flags"):
        water_case.read(unwrap="images")
    with pytest.raises(TrajectoryError, match="unwrap must be"):
        water_case.read(unwrap="sideways")
    # mappings
    n = len(water_case.universe().atoms)
    with pytest.raises(CGMappingError, match="out of range"):
        CGMapping(n, [[0, 1, n]], ["A"], ["A"])
    with pytest.raises(CGMappingError, match="in bead 'A' and in bead 'B'"):
        CGMapping(n, [[0, 1], [1, 2]], ["A", "B"], ["T", "T"])
    with pytest.raises(CGMappingError, match="no atoms"):
        CGMapping(n, [[]], ["A"], ["A"])
    path = tmp_path / "m.json"
    path.write_text(json.dumps({"A": [0, 1, 2], "B": [3, 4, n + 7]}))
    with pytest.raises(CGMappingError, match=r"m.json: bead 'B': atom index\(es\) \[" + str(n + 7)):
        water_case.read(mapping=str(path))
    path.write_text(json.dumps({"A": [0, "x"]}))
    with pytest.raises(CGMappingError, match="integer atom indices"):
        load_mapping_file(path, n)
    with pytest.raises(FileNotFoundError):
        load_mapping_file(tmp_path / "absent.json", n)
    with pytest.raises(CGMappingError, match="no bonds"):
        graph_partition_mapping(transport_case.universe())
    from engine_plugins.plugins.manager import UnknownPluginError
    with pytest.raises(UnknownPluginError, match="no cg mapping named 'martini'"):
        water_case.read(mapping="martini")
    with pytest.raises(TrajectoryError, match="type_map"):
        TrajectoryCase.from_files(transport_case.topology, transport_case.trajectory, 300.0,
                                  universe_kwargs=transport_case.universe_kwargs, type_map={"1": "Fw"}).read()
