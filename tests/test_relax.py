"""Engine relaxations with a pseudo_force artifact: OpenMM and LAMMPS agree with the standalone GPFF
sampler given the same start, minimizers find the known minimum, fixed atoms stay put."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.build import molecule

from engine_plugins.engines.relax import (RelaxError, denoise_lammps, denoise_openmm, minimize_lammps,
                                          minimize_openmm)
from engine_plugins.export import ArtifactMetadata, export_artifact
from engine_plugins.methods.gpff.analytic import script_quadratic
from engine_plugins.methods.gpff.noise import rmsd
from engine_plugins.methods.gpff.samplers import sample


@pytest.fixture(scope="module")
def quadratic(tmp_path_factory):
    """The exact GPFF pseudo-force around ethanol: its minimum is known (the molecule itself)."""
    mol = molecule("CH3CH2OH")
    x0 = torch.tensor(mol.positions)
    types = mol.get_chemical_symbols()
    meta = ArtifactMetadata(role="pseudo_force", method="gpff_quadratic_reference", type_names=sorted(set(types)),
                            cutoff=12.0, num_message_passing_layers=1, periodicity="nonperiodic",
                            units={"length": "angstrom", "energy": "eV", "time": "ps"},
                            role_fields={"conservative": True})
    path = export_artifact(script_quadratic(x0), meta, tmp_path_factory.mktemp("q") / "quad.pt", check_role=False)
    start = mol.positions + np.random.default_rng(0).normal(0.0, 0.3, mol.positions.shape)
    return path, types, x0, start


@pytest.mark.parametrize("with_fixed", [False, True])
def test_denoising_in_openmm_and_lammps_equals_the_standalone_sampler(lammps_plugin, quadratic, with_fixed):
    path, types, x0, start = quadratic
    fixed = np.zeros(len(types), bool)
    if with_fixed:
        fixed[[0, 2]] = True
    ref = sample(path, types, init_positions=torch.tensor(start), sampler="denoise", nfe=5, step=0.5, renoise=0.0,
                 fixed_mask=torch.tensor(fixed)).positions[0].numpy()
    omm = denoise_openmm(path, types, start, 5, step=0.5, fixed=fixed if with_fixed else None)
    lmp = denoise_lammps(path, types, start, 5, step=0.5, fixed=fixed if with_fixed else None)
    assert np.abs(omm - ref).max() < 1e-10
    assert np.abs(lmp - ref).max() < 1e-10
    assert float(rmsd(torch.tensor(ref), x0)) < 0.5 * float(rmsd(torch.tensor(start), x0))  # it denoised
    if with_fixed:
        assert np.abs(omm[fixed] - start[fixed]).max() < 1e-12
        assert np.abs(lmp[fixed] - start[fixed]).max() == 0.0


def test_engine_minimizers_reach_the_known_minimum(lammps_plugin, quadratic):
    path, types, x0, start = quadratic
    for relaxed in (minimize_openmm(path, types, start), minimize_lammps(path, types, start)):
        assert float(rmsd(torch.tensor(relaxed), x0)) < 1e-4


def test_minimizers_hold_fixed_atoms(lammps_plugin, quadratic):
    path, types, x0, start = quadratic
    fixed = np.zeros(len(types), bool)
    fixed[:3] = True
    for relaxed in (minimize_openmm(path, types, start, fixed=fixed),
                    minimize_lammps(path, types, start, fixed=fixed)):
        assert np.abs(relaxed[fixed] - start[fixed]).max() < 1e-12
        assert not np.allclose(relaxed[~fixed], start[~fixed])


def test_bad_input(quadratic):
    path, types, _, start = quadratic
    bad = start.copy()
    bad[1, 0] = np.nan
    with pytest.raises(RelaxError, match="NaN"):
        denoise_openmm(path, types, bad, 3)
    with pytest.raises(RelaxError, match=r"\[N, 3\]"):
        minimize_openmm(path, types[:-1], start)
