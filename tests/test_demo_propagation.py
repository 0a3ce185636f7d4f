"""The learned-propagation step of ``make demo`` (engine_plugins.methods.propagator.demo_step), end to end
on a tiny water box with a closed-form propagator, in OpenMM and LAMMPS."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from engine_plugins.export import ArtifactMetadata, export_artifact
from engine_plugins.methods.propagator.analytic import PairRelaxPropagator
from engine_plugins.methods.propagator.demo_step import compare_lag, msd_at, run_propagation_demo


def test_compare_lag_and_msd_interpolation():
    assert compare_lag(10.0, 20, 20.0) == 10.0       # half the reference holds one jump
    assert compare_lag(2.0, 20, 20.0) == 10.0        # five jumps
    assert compare_lag(2.0, 3, 20.0) == 6.0          # no further than the rollout
    with pytest.raises(ValueError, match="shorter than two jumps"):
        compare_lag(10.0, 20, 15.0)
    t, m = np.array([0.0, 1.0, 2.0]), np.array([0.0, 6.0, 12.0])
    assert msd_at(t, m, 1.5) == pytest.approx(9.0)
    assert math.isnan(msd_at(t, m, 2.5))


def test_demo_step_runs_both_engines_on_a_tiny_water_box(tmp_path, lammps_plugin):
    rf = {"temperature_range": [250.0, 350.0], "flow_steps": 2, "solver": "euler", "delta_tau": 0.1,
          "prior": {"kind": "maxwell_boltzmann", "scale": {"HOH": 8.0}, "mass": {"HOH": 18.015}},
          "max_displacement": 3.0, "max_attempts": 4}
    meta = ArtifactMetadata(role="propagator", method="pair_relax_test", type_names=["HOH"], cutoff=4.0,
                            num_message_passing_layers=2, units={"length": "angstrom", "energy": "eV", "time": "ps"},
                            periodicity="periodic", role_fields=rf)
    model = export_artifact(PairRelaxPropagator(strength=0.05, drift=0.5), meta, tmp_path / "prop.pt")
    s = run_propagation_demo(tmp_path / "demo", model, use_corrector=False, box_nm=1.8, equil_ps=0.1,
                             reference_ps=0.4, n_jumps=4, threads=1)
    assert s["n_beads"] * 3 == s["n_atoms_all_atom"] and s["compare_lag_ps"] == pytest.approx(0.2)
    assert s["reference"]["D_A2_per_ps"] > 0
    for engine in ("openmm", "lammps"):
        e = s["engines"][engine]
        assert e["finite"] and e["ps"] == pytest.approx(0.4)
        assert e["msd_at_compare_lag"] > 0 and 0 <= e["rdf_jsd"] < math.log(2)
    # same seed, same counter-based noise, float64: one trajectory (up to periodic images), read back
    # from OpenMM's DCD, which stores float32 (1 ulp is 1.9e-6 A for coordinates of 16-32 A)
    assert s["openmm_vs_lammps_first_jump_max_A"] < 1e-5
    assert s["engines"]["openmm"]["D_A2_per_ps"] == pytest.approx(s["engines"]["lammps"]["D_A2_per_ps"], rel=1e-4)
    assert (tmp_path / "demo" / "propagation.png").stat().st_size > 10_000
    json.dumps(s)  # summary.json-ready
