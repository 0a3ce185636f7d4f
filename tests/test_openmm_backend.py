"""OpenMM TorchForce backend: exact against OpenMM's own NonbondedForce, finite differences, bad input."""

from __future__ import annotations

import numpy as np
import openmm as mm
import openmm.app as app
import openmm.unit as unit
import pytest

from engine_plugins.data.systems import NOBLE_GAS_LJ, fcc_lattice
from engine_plugins.engines.openmm_backend import OpenMMBackendError, create_pseudo_force
from engine_plugins.export import ArtifactMetadata, export_artifact
from engine_plugins.methods.lennard_jones import LennardJones, lennard_jones_metadata

KJ_NM = unit.kilojoule_per_mole / unit.nanometer
CUTOFF = 8.5  # Å
NAMES = ["Ar", "Ne"]
EPS = [NOBLE_GAS_LJ[n][0] for n in NAMES]
SIG = [NOBLE_GAS_LJ[n][1] for n in NAMES]


@pytest.fixture(scope="module")
def lj_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("lj") / "lj.pt"
    return export_artifact(LennardJones(EPS, SIG, CUTOFF), lennard_jones_metadata(NAMES, CUTOFF), path)


def _system(sysdef, periodic: bool) -> mm.System:
    """Particles and box; whether forces use the box is the force's setting (``periodic``)."""
    return sysdef.openmm_system()


def _evaluate(system, positions_angstrom, platform="Reference"):
    ctx = mm.Context(system, mm.VerletIntegrator(0.001), mm.Platform.getPlatformByName(platform))
    ctx.setPositions(positions_angstrom * 0.1)
    state = ctx.getState(getEnergy=True, getForces=True)
    return (state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole),
            state.getForces(asNumpy=True).value_in_unit(KJ_NM))


def _nonbonded_reference(sysdef, periodic: bool):
    system = _system(sysdef, periodic)
    nb = mm.NonbondedForce()
    nb.setNonbondedMethod(mm.NonbondedForce.CutoffPeriodic if periodic else mm.NonbondedForce.CutoffNonPeriodic)
    nb.setCutoffDistance(CUTOFF / 10)
    nb.setUseDispersionCorrection(False)
    nb.setUseSwitchingFunction(False)
    for t in sysdef.types:
        nb.addParticle(0.0, SIG[t] / 10, EPS[t] * 4.184)
    system.addForce(nb)
    return _evaluate(system, sysdef.positions)


@pytest.mark.parametrize("periodic", [True, False])
def test_lj_torchforce_equals_openmm_nonbonded(lj_model, periodic):
    sysdef = fcc_lattice(5, a=5.5, jitter=0.25, seed=1, type_names=tuple(NAMES))  # 500 atoms
    system = _system(sysdef, periodic)
    system.addForce(create_pseudo_force(lj_model, types=sysdef.atom_type_names, periodic=periodic))
    e, f = _evaluate(system, sysdef.positions)
    e_ref, f_ref = _nonbonded_reference(sysdef, periodic)
    assert abs(e - e_ref) <= 1e-10 * abs(e_ref)
    assert np.abs(f - f_ref).max() <= 1e-10 * np.abs(f_ref).max()


def test_cpu_platform_mixed_precision_agrees(lj_model):
    sysdef = fcc_lattice(4, a=5.5, jitter=0.2, seed=2, type_names=tuple(NAMES))
    system = _system(sysdef, True)
    system.addForce(create_pseudo_force(lj_model, types=sysdef.atom_type_names, periodic=True))
    e, f = _evaluate(system, sysdef.positions, "CPU")
    e_ref, f_ref = _nonbonded_reference(sysdef, True)
    assert abs(e - e_ref) <= 1e-5 * abs(e_ref)
    assert np.abs(f - f_ref).max() <= 1e-4 * np.abs(f_ref).max()


def test_finite_differences_across_the_periodic_boundary(lj_model):
    """Central differences of the OpenMM energy for atoms whose neighbours sit across the boundary."""
    sysdef = fcc_lattice(4, a=5.5, jitter=0.3, seed=3, type_names=tuple(NAMES))
    system = _system(sysdef, True)
    system.addForce(create_pseudo_force(lj_model, types=sysdef.atom_type_names, periodic=True))
    ctx = mm.Context(system, mm.VerletIntegrator(0.001), mm.Platform.getPlatformByName("Reference"))
    pos = sysdef.positions.copy()
    ctx.setPositions(pos * 0.1)
    forces = ctx.getState(getForces=True).getForces(asNumpy=True).value_in_unit(KJ_NM)
    L = sysdef.box[0, 0]
    near_edge = [i for i in range(len(pos)) if min(pos[i, 0], L - pos[i, 0]) < 1.0][:4]
    assert near_edge, "the test needs atoms near the boundary"
    h = 1e-5  # nm
    for i in near_edge:
        for d in range(3):
            energies = []
            for sign in (1, -1):
                p = pos * 0.1
                p[i, d] += sign * h
                ctx.setPositions(p)
                energies.append(ctx.getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole))
            fd = -(energies[0] - energies[1]) / (2 * h)
            assert fd == pytest.approx(forces[i, d], rel=1e-6, abs=1e-6 * np.abs(forces).max())


def test_types_from_topology_and_type_map(lj_model):
    top = app.Topology()
    chain = top.addChain()
    for name in ["AR1", "NE1"]:
        res = top.addResidue("GAS", chain)
        top.addAtom(name, None, res)
    force = create_pseudo_force(lj_model, topology=top, type_map={"AR1": "Ar", "NE1": "Ne"})
    assert not force.usesPeriodicBoundaryConditions()
    with pytest.raises(OpenMMBackendError, match="atom 0 .*'AR1'.*the model knows Ar, Ne.*type_map"):
        create_pseudo_force(lj_model, topology=top)
    top2 = app.Topology()
    res = top2.addResidue("GAS", top2.addChain())
    top2.addAtom("Ar", app.element.argon, res)
    assert create_pseudo_force(lj_model, topology=top2).getNumGlobalParameters() == 0


def test_unknown_type_name(lj_model):
    with pytest.raises(OpenMMBackendError, match="Xe are not known to the model"):
        create_pseudo_force(lj_model, types=["Ar", "Xe"])


def test_wrong_role_is_refused(tmp_path):
    meta = ArtifactMetadata(role="corrector", method="x", type_names=["Ar"], cutoff=5.0, num_message_passing_layers=1,
                            units={"length": "angstrom", "energy": "eV", "time": "ps"},
                            role_fields={"temperature_range": [300, 300], "flow_steps": 10, "solver": "euler",
                                         "prior": {"kind": "maxwell_boltzmann", "scale": {"Ar": 1.0},
                                                   "mass": {"Ar": 39.948}}})
    # a pseudo-force module labelled corrector (check_role=False: it has not the corrector's signature)
    path = export_artifact(LennardJones([1.0], [3.0], 5.0), meta, tmp_path / "c.pt", check_role=False)
    with pytest.raises(OpenMMBackendError, match="role is 'corrector'.*needs role 'pseudo_force'"):
        create_pseudo_force(path, types=["Ar"])


def test_periodicity_mismatch(tmp_path):
    per = export_artifact(LennardJones([1.0], [3.0], 5.0), lennard_jones_metadata(["Ar"], 5.0, periodicity="periodic"),
                          tmp_path / "p.pt")
    non = export_artifact(LennardJones([1.0], [3.0], 5.0),
                          lennard_jones_metadata(["Ar"], 5.0, periodicity="nonperiodic"), tmp_path / "n.pt")
    with pytest.raises(OpenMMBackendError, match="trained for periodic systems but this system has no periodic box"):
        create_pseudo_force(per, types=["Ar"], periodic=False)
    with pytest.raises(OpenMMBackendError, match="trained for non-periodic systems"):
        create_pseudo_force(non, types=["Ar"], periodic=True)


def test_nan_positions_raise_a_clear_error(lj_model):
    sysdef = fcc_lattice(2, a=5.5, type_names=("Ar",))
    system = _system(sysdef, False)
    system.addForce(create_pseudo_force(lj_model, types=sysdef.atom_type_names, periodic=False))
    pos = sysdef.positions.copy()
    pos[3, 1] = np.nan
    with pytest.raises(mm.OpenMMException, match="non-finite"):
        _evaluate(system, pos)


def test_box_smaller_than_twice_the_cutoff(lj_model):
    sysdef = fcc_lattice(2, a=5.5, type_names=("Ar",))  # 11 Å box < 2 * 8.5 Å
    system = _system(sysdef, True)
    system.addForce(create_pseudo_force(lj_model, types=sysdef.atom_type_names, periodic=True))
    with pytest.raises(mm.OpenMMException, match="narrower than twice the model cutoff"):
        _evaluate(system, sysdef.positions)


def test_particle_count_mismatch(lj_model):
    sysdef = fcc_lattice(2, a=5.5, type_names=("Ar",))
    system = _system(sysdef, False)
    system.addParticle(39.9)
    system.addForce(create_pseudo_force(lj_model, types=sysdef.atom_type_names, periodic=False))
    with pytest.raises(mm.OpenMMException, match="built for 32 particles but the system has 33"):
        _evaluate(system, np.vstack([sysdef.positions, [[50.0, 50.0, 50.0]]]))
