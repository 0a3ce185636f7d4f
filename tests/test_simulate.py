"""Reference MD of the built-in families: real LAMMPS and OpenMM runs, readable by MDAnalysis."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from _md_runs import TRANSPORT_MATERIAL, TRANSPORT_T, WATER_T, transport_run, water_run
from engine_plugins.data.simulate import (CG_PRESETS, TRANSPORT_MATERIALS, TRANSPORT_PRESETS, SimulationError,
                                          TransportMaterial, TransportModel, TransportSettings, diffusion_coefficient,
                                          transport_input, transport_system)

pytestmark = pytest.mark.filterwarnings("ignore:DCDReader currently makes:DeprecationWarning")


def _universe(case_dir: Path, **extra):
    import MDAnalysis as mda

    case = json.loads((case_dir / "case.json").read_text())
    kw = dict(case["universe_kwargs"], **extra)
    return case, mda.Universe(str(case_dir / case["topology"]), str(case_dir / case["trajectory"]), **kw)


# ------------------------------------------------------------------------------------ transport
def test_transport_model_geometry():
    m = TRANSPORT_MATERIALS["Li0.50-s1.60"]
    model = TransportModel()
    s = transport_system(m, 3, seed=0)
    n_fw = 4 * 27
    assert (s.types == 0).sum() == n_fw and (s.types == 1).sum() == round(0.5 * n_fw)
    a = model.lattice
    frac = s.positions / a
    fw, mob = frac[s.types == 0], frac[s.types == 1]
    assert np.allclose(np.round(2 * fw), 2 * fw) and np.all(np.round(2 * fw).sum(1) % 2 == 0)   # fcc sites
    assert np.allclose(np.round(2 * mob), 2 * mob) and np.all(np.round(2 * mob).sum(1) % 2 == 1)  # octahedral
    assert len(np.unique(np.round(mob * 2), axis=0)) == len(mob)
    # framework LJ minimum at the fcc nearest-neighbour distance
    assert model.sigma_ff * 2 ** (1 / 6) == pytest.approx(a / np.sqrt(2))
    text = transport_input(m, 900.0, TRANSPORT_PRESETS["tiny"])
    for needle in ("units metal", "fix tether framework spring/self", "fix eq_lang all langevin 900",
                   "fix prod all nvt temp 900 900", "dump traj all custom 50 traj.lammpstrj id type x y z ix iy iz"):
        assert needle in text
    assert "fix prod all nve" in transport_input(m, 900.0, replace(TRANSPORT_PRESETS["tiny"], ensemble="nve"))


def test_transport_case_is_readable_by_mdanalysis():
    case_dir = transport_run() / f"{TRANSPORT_MATERIAL}_T{int(TRANSPORT_T):04d}"
    case, u = _universe(case_dir, additional_columns=["ix", "iy", "iz"])
    settings = TRANSPORT_PRESETS["tiny"]
    assert case["temperature"] == TRANSPORT_T and case["composition"] == TRANSPORT_MATERIAL
    assert case["units"]["style"] == "metal" and case["timestep"] == settings.timestep
    assert case["dump_every"] == settings.dump_every
    assert case["frame_interval"] == pytest.approx(settings.timestep * settings.dump_every)
    assert case["species"] == ["Fw", "Li"] and case["masses"] == {"Fw": 100.0, "Li": 6.94}
    assert case["production"]["ensemble"] == "nvt" and case["production"]["thermostat"] == "nose-hoover"
    assert len(u.trajectory) == case["n_frames"] == settings.steps // settings.dump_every + 1
    assert len(u.atoms) == case["n_atoms"] == sum(case["formula"].values())
    # masses and types through the LAMMPS data file
    types = u.atoms.types.astype(str)
    assert set(types) == {"1", "2"}
    assert np.allclose(u.atoms.masses[types == "1"], 100.0) and np.allclose(u.atoms.masses[types == "2"], 6.94)
    assert np.allclose(u.dimensions[:3], case["box"])
    assert u.trajectory[-1].time == pytest.approx(settings.steps * settings.timestep)
    # images flags moved during the run: atoms crossed the boundaries
    images = np.stack([np.stack([ts.data["ix"], ts.data["iy"], ts.data["iz"]], 1) for ts in u.trajectory])
    assert np.any(images[-1] != images[0])
    # the reference MSD file covers the same frames
    msd = np.loadtxt(case_dir / "msd.txt", ndmin=2)
    assert np.array_equal(msd[:, 0], np.arange(case["n_frames"]) * settings.dump_every)
    assert case["diffusion"]["Li"] > 10 * abs(case["diffusion"]["Fw"])
    assert 0.5 * TRANSPORT_T < case["mean_temperature"] < 1.5 * TRANSPORT_T
    summary = json.loads((transport_run() / "summary.json").read_text())
    assert case["case_id"] in summary["cases"]


def test_diffusion_coefficient_of_a_line():
    t = np.linspace(0, 10, 101)
    assert diffusion_coefficient(t, 6 * 0.3 * t + 1.0) == pytest.approx(0.3)
    with pytest.raises(ValueError):
        diffusion_coefficient([0.0], [0.0])


def test_bad_transport_inputs():
    with pytest.raises(ValueError, match="loading"):
        TransportMaterial("bad", 1.5, 1.6)
    with pytest.raises(ValueError, match="multiple"):
        TransportSettings(steps=1001, dump_every=100)
    with pytest.raises(ValueError, match="ensemble"):
        TransportSettings(ensemble="npt")
    with pytest.raises(SimulationError, match="no mobile atom"):
        transport_system(TransportMaterial("dilute", 0.001, 1.6), 2)


def test_material_sets_expand_in_order_and_keep_the_standard_default():
    """``--materials standard|extra|wide|grid``: the default is the standard four (the shipped models'
    data), ``wide`` is standard then extra, so the standard cases keep their seeds (seed + index)."""
    from engine_plugins.data.simulate import TRANSPORT_MATERIAL_SETS, _resolve_materials

    names = lambda ms: [m.name for m in _resolve_materials(ms)]  # noqa: E731
    std = names(None)
    assert std == names(["standard"]) == ["Li0.25-s1.55", "Li0.50-s1.60", "Li0.125-s1.68", "Li0.375-s1.72"]
    assert names(["wide"]) == std + names(["extra"]) and len(names(["wide"])) == 12
    assert len(set(names(["wide"]))) == 12 and set(TRANSPORT_MATERIAL_SETS["wide"]) <= set(TRANSPORT_MATERIALS)
    assert names(["extra", "Li0.25-s1.55"])[-1] == "Li0.25-s1.55"
    grid = [(m.loading, m.sigma_mf) for m in _resolve_materials(["grid"])]
    assert len(grid) == 12 and sorted(grid) == [(x, s) for x in (0.125, 0.25, 0.375, 0.5) for s in (1.57, 1.64, 1.71)]
    wide = {(m.loading, m.sigma_mf) for m in _resolve_materials(["wide"])}
    assert not wide & set(grid), "the grid set adds materials, it repeats none of wide"
    # splits hold materials out by name: every built-in name must say its own loading and ion size
    for name, m in TRANSPORT_MATERIALS.items():
        loading, size = name.removeprefix("Li").split("-s")
        assert (float(loading), float(size)) == (m.loading, m.sigma_mf), name
    with pytest.raises(SimulationError, match="sets: standard, extra, wide"):
        _resolve_materials(["widest"])


def test_failed_lammps_run_names_the_case_and_the_error(tmp_path):
    from engine_plugins.data.simulate import run_transport_case
    from engine_plugins.engines.lammps_backend import LammpsError

    crushed = TransportMaterial("crushed", 0.5, 3.5, eps_mf=5.0)  # far too big for the octahedral sites
    with pytest.raises(LammpsError, match=r"crushed_T0800 failed .*ERROR"):
        run_transport_case(crushed, 800.0, TRANSPORT_PRESETS["tiny"], tmp_path, model=TransportModel(cutoff_ff=30.0))


def test_cli_simulate_transport_two_cases_in_parallel(tmp_path):
    from engine_plugins.cli import main

    out = tmp_path / "t"
    rc = main(["simulate", "transport", "--preset", "tiny", "--materials", "Li0.375-s1.72", "--temperatures", "700",
               "1100", "--steps", "400", "--equil-steps", "100", "--dump-every", "100", "--jobs", "2",
               "--no-progress", "--output", str(out)])
    assert rc == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["cases"] == ["Li0.375-s1.72_T0700/case.json", "Li0.375-s1.72_T1100/case.json"]
    for c in manifest["cases"]:
        case = json.loads((out / c).read_text())
        assert case["n_frames"] == 5 and (out / c).parent.joinpath("traj.lammpstrj").is_file()
    # a user material file
    mats = tmp_path / "mats.json"
    mats.write_text(json.dumps([{"name": "custom", "loading": 0.25, "sigma_mf": 1.6}]))
    assert main(["simulate", "transport", "--preset", "tiny", "--materials", str(mats), "--temperatures", "800",
                 "--steps", "100", "--equil-steps", "0", "--dump-every", "50", "--no-progress",
                 "--output", str(tmp_path / "u")]) == 0
    assert json.loads((tmp_path / "u" / "custom_T0800" / "case.json").read_text())["material"]["sigma_mf"] == 1.6


def test_cli_simulate_bad_inputs(tmp_path, capsys):
    from engine_plugins.cli import main

    assert main(["simulate", "transport", "--materials", "unobtainium", "--output", str(tmp_path)]) == 2
    assert "unknown transport material 'unobtainium'" in capsys.readouterr().err
    assert main(["simulate", "transport", "--materials", str(tmp_path / "missing.json"), "--output",
                 str(tmp_path)]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["simulate", "cg", "--preset", "tiny", "--steps", "15", "--output", str(tmp_path)]) == 2
    assert "multiple of report_every" in capsys.readouterr().err
    assert main(["simulate", "cg", "--preset", "tiny", "--box", "1.0", "--output", str(tmp_path)]) == 2
    assert "twice the cutoff" in capsys.readouterr().err


# ------------------------------------------------------------------------------------ cg (OpenMM)
def test_water_case_is_readable_by_mdanalysis():
    case_dir = water_run() / f"water_T{int(WATER_T):04d}"
    case, u = _universe(case_dir)
    settings = CG_PRESETS["tiny"]
    assert case["engine"] == "openmm" and case["temperature"] == WATER_T
    assert len(u.trajectory) == case["n_frames"] == settings.steps // settings.report_every + 1
    n_mol = case["formula"]["HOH"]
    assert len(u.residues) == n_mol and len(u.atoms) == 3 * n_mol == case["n_atoms"]
    assert set(u.residues.resnames) == {"HOH"}
    assert len(u.bonds) == 2 * n_mol                      # CONECT records: O-H1, O-H2 of every water
    masses = np.load(case_dir / case["atom_masses"])
    assert masses.shape == (len(u.atoms),) and masses[0] == pytest.approx(15.99943)
    assert np.allclose(u.dimensions[:3], case["box"], atol=1e-3)
    assert u.trajectory.dt == pytest.approx(case["frame_interval"], rel=1e-4)
    # rigid TIP3P: O-H 0.9572 Å in every frame (the DCD holds whole molecules)
    oh = np.linalg.norm(u.atoms[1::3].positions - u.atoms[0::3].positions, axis=1)
    u.trajectory[-1]
    oh_last = np.linalg.norm(u.atoms[1::3].positions - u.atoms[0::3].positions, axis=1)
    assert np.allclose(oh, 0.9572, atol=2e-3) and np.allclose(oh_last, 0.9572, atol=2e-3)
    assert case["diffusion"]["HOH"] > 0
    assert 200 < case["mean_temperature"] < 400
