"""The shipped 2-layer NequIP model gives the same energy, forces and virial standalone, in OpenMM and in
LAMMPS on 1 and 2 MPI ranks (float64), and its LAMMPS pressure equals a strain finite difference."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import openmm as mm
import openmm.unit as unit
import pytest
import torch

from engine_plugins.data.systems import fcc_lattice
from engine_plugins.engines.lammps_backend import run_lammps_energy_forces
from engine_plugins.engines.openmm_backend import create_pseudo_force
from engine_plugins.export import load_artifact
from engine_plugins.nn.graph import neighbor_graph

MODEL = Path(__file__).resolve().parent.parent / "exported_models" / "nequip_argon.pt"
EV_PER_A3_TO_BAR = 1.6021765e6  # LAMMPS metal nktv2p
EV_TO_KJ = 96.48533212331002


@pytest.fixture(scope="module")
def setup():
    art = load_artifact(MODEL)
    assert art.metadata.num_message_passing_layers >= 2
    sysdef = fcc_lattice((4, 4, 5), a=5.6, jitter=0.3, seed=11, type_names=("Ar",))  # 320 atoms, non-cubic box
    return art, sysdef


def standalone(art, pos: np.ndarray, box: np.ndarray) -> tuple[float, np.ndarray]:
    p = torch.tensor(pos, dtype=torch.float64)
    b = torch.tensor(box, dtype=torch.float64)
    ei, es = neighbor_graph(p, art.metadata.cutoff, b)
    e, f = art.module(p, torch.zeros(len(p), dtype=torch.long), ei, es, len(p))
    return float(e.sum()), f.detach().numpy()


def _rel(a, b):
    return np.abs(np.asarray(a) - np.asarray(b)).max() / np.abs(np.asarray(b)).max()


@pytest.mark.mpi
def test_nequip_same_in_standalone_openmm_and_lammps_1_and_2_ranks(lammps_plugin, setup):
    art, sysdef = setup
    e_ref, f_ref = standalone(art, sysdef.positions, sysdef.box)

    # OpenMM, Reference platform (float64), nm and kJ/mol
    system = mm.System()
    system.setDefaultPeriodicBoxVectors(*[mm.Vec3(*row) * 0.1 for row in sysdef.box])
    for _ in range(sysdef.n_atoms):
        system.addParticle(39.948)
    system.addForce(create_pseudo_force(MODEL, types=sysdef.atom_type_names, periodic=True))
    ctx = mm.Context(system, mm.VerletIntegrator(0.001), mm.Platform.getPlatformByName("Reference"))
    ctx.setPositions(sysdef.positions * 0.1)
    st = ctx.getState(getEnergy=True, getForces=True)
    e_omm = st.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole) / EV_TO_KJ
    f_omm = st.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer) / EV_TO_KJ / 10
    assert abs(e_omm - e_ref) <= 1e-10 * abs(e_ref)
    assert _rel(f_omm, f_ref) <= 1e-10

    # LAMMPS, units metal (the model's), 1 rank in process and 2 ranks under mpiexec
    results = {n: run_lammps_energy_forces(MODEL, sysdef.positions, sysdef.types, sysdef.box, ["Ar"], "metal", n)
               for n in (1, 2)}
    for n, res in results.items():
        assert abs(res.energy - e_ref) <= 1e-10 * abs(e_ref), f"{n} rank(s)"
        assert _rel(res.forces, f_ref) <= 1e-10, f"{n} rank(s)"
        assert abs(res.atom_energy.sum() - e_ref) <= 1e-10 * abs(e_ref)
    assert _rel(results[2].pressure, results[1].pressure) <= 1e-10


def test_nequip_lammps_virial_equals_strain_finite_difference(lammps_plugin, setup):
    """p_aa (virial part) = -(1/V) dE/d(eps_aa) under homogeneous strain of positions and box."""
    art, sysdef = setup
    res = run_lammps_energy_forces(MODEL, sysdef.positions, sysdef.types, sysdef.box, ["Ar"], "metal", 1)
    vol = float(np.linalg.det(sysdef.box))
    h = 1e-5
    for a in range(3):
        energies = []
        for sign in (1, -1):
            strain = np.eye(3)
            strain[a, a] += sign * h
            energies.append(standalone(art, sysdef.positions @ strain, sysdef.box @ strain)[0])
        dE = (energies[0] - energies[1]) / (2 * h)
        p_fd = -dE / vol * EV_PER_A3_TO_BAR
        assert res.pressure[a] == pytest.approx(p_fd, rel=1e-6, abs=1e-6 * np.abs(res.pressure[:3]).max())
