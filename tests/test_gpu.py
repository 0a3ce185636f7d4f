"""GPU paths give the CPU's answer: propagation, GPFF generation, RM relaxation, training, and the
TorchForce on OpenMM's CUDA platform. Skipped without CUDA.

``ENGINE_PLUGINS_TEST_DEVICE=cpu`` runs the same comparisons CPU against CPU (a dry run of the test
logic on a machine without a GPU; then every comparison is exact).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

DEVICE = os.environ.get("ENGINE_PLUGINS_TEST_DEVICE", "cuda")
MODELS = Path(__file__).resolve().parent.parent / "exported_models"

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(),
                                reason="no CUDA device (ENGINE_PLUGINS_TEST_DEVICE=cpu dry-runs these tests)")]


def test_propagation_on_the_gpu_equals_the_cpu():
    """Same seed, same jumps: the counter-based noise is the same numbers on every device, so the
    float64 transport model's trajectory may differ only by rounding."""
    from engine_plugins.bench.propagate import transport_start
    from engine_plugins.methods.propagator.sampler import propagate

    pos, box, names, _ = transport_start("Li0.25-s1.55", 2)
    runs = [propagate(str(MODELS / "propagator_transport.pt"), pos, names, box, 800.0, n_jumps=3, seed=3,
                      corrector=str(MODELS / "corrector_transport.pt"), device=d, progress=False)
            for d in ("cpu", DEVICE)]
    moved = np.abs(runs[0].positions[-1] - pos).max()
    assert moved > 0.05  # the jumps did move atoms
    assert np.abs(runs[0].positions - runs[1].positions).max() < 1e-8


def test_gpff_generation_on_the_gpu_equals_the_cpu():
    from engine_plugins.methods.gpff.generate import GenerationTask, formula_symbols, generate

    tasks = [GenerationTask(formula_symbols(f), name=f) for f in ("C2H6O", "C3H7NO", "C4H4O", "CH2F2")]
    kw = dict(sampler="ancestral", eta=0.0, nfe=16, seed=5)
    cpu = generate(str(MODELS / "gpff_qm9like.pt"), tasks, device="cpu", **kw)
    gpu = generate(str(MODELS / "gpff_qm9like.pt"), tasks, device=DEVICE, **kw)
    for a, b in zip(cpu.positions, gpu.positions):
        assert np.abs(a - b).max() < 2e-3  # a float32 model, 16 deterministic steps
    assert cpu.nfe == gpu.nfe == 16


def test_sampler_hands_the_model_back_on_its_device():
    from engine_plugins.export.artifact import load_artifact
    from engine_plugins.methods.gpff.samplers import sample

    art = load_artifact(MODELS / "gpff_qm9like.pt")
    sample(art, ["C", "H", "H", "H", "H"], nfe=2, device=DEVICE)
    assert {p.device.type for p in art.module.parameters()} == {"cpu"}


@pytest.mark.parametrize("name", ["NaCl-rocksalt", "Si-diamond"])
def test_rm_relaxation_on_the_gpu_equals_the_cpu(name):
    from engine_plugins.data.crystals import build_crystal, perturb_crystal
    from engine_plugins.methods.response_matching.relax import relax_structure

    s = perturb_crystal(build_crystal(name), 0.1, 0.02, seed=1)
    cpu, gpu = (relax_structure(str(MODELS / "rm_crystals.pt"), s.symbols, s.positions, s.cell, device=d)
                for d in ("cpu", DEVICE))
    n = len(s.symbols)
    assert cpu.converged and gpu.converged
    assert abs(cpu.energy - gpu.energy) / n < 1e-6
    assert np.abs(cpu.cell - gpu.cell).max() < 1e-3
    assert np.abs(cpu.positions - gpu.positions).max() < 1e-3


def test_training_on_the_gpu_exports_an_artifact_the_cpu_runs(tmp_path):
    """RM training on the GPU: the loss stays finite, and the exported file loads on the CPU and gives
    the same forces there as on the GPU."""
    from engine_plugins.data.crystals import build_crystal, perturb_crystal
    from engine_plugins.export.artifact import load_artifact
    from engine_plugins.methods.response_matching.relax import make_calculator
    from engine_plugins.train.gpff import read_config_file
    from engine_plugins.train.response_matching import train_rm

    cfg = read_config_file(Path(__file__).resolve().parent.parent / "engine_plugins/train/configs/rm_crystals.json")
    cfg.update(output_dir=str(tmp_path / "rm"), device=DEVICE)
    cfg["export"] = {"path": str(tmp_path / "rm.pt"), "dtype": "float64"}
    cfg["train"].update(steps=4, checkpoint_every=1000, val_every=1000, progress=False, max_minutes=None)
    losses = []
    path = train_rm(cfg, callback=lambda step, stats: losses.append(stats["loss"]))
    assert len(losses) == 4 and np.isfinite(losses).all()
    art = load_artifact(path)
    assert {p.device.type for p in art.module.parameters()} == {"cpu"}
    s = perturb_crystal(build_crystal("LiF-rocksalt"), 0.1, 0.0, seed=2)
    from ase import Atoms

    forces = []
    for d in ("cpu", DEVICE):
        atoms = Atoms(s.symbols, positions=s.positions, cell=s.cell, pbc=True)
        atoms.calc = make_calculator(load_artifact(path), d)
        forces.append(atoms.get_forces())
    assert np.abs(forces[0]).max() > 1e-3
    assert np.abs(forces[0] - forces[1]).max() < 1e-8


def test_torchforce_on_the_openmm_cuda_platform_equals_openmm_nonbonded(tmp_path):
    """The Lennard-Jones artifact as a TorchForce on OpenMM's CUDA platform (double precision) against
    OpenMM's own NonbondedForce on the Reference platform."""
    import openmm as mm
    import openmm.unit as unit

    from engine_plugins.data.systems import NOBLE_GAS_LJ, fcc_lattice
    from engine_plugins.engines.openmm_backend import create_pseudo_force, import_openmmtorch
    from engine_plugins.export import export_artifact
    from engine_plugins.methods.lennard_jones import LennardJones, lennard_jones_metadata

    # openmm-torch and OpenMM's CUDA plugin are dependencies of this project: on a machine with a GPU
    # their absence is a broken install, so it fails here instead of skipping
    import_openmmtorch()
    platform = "CUDA" if DEVICE == "cuda" else "CPU"
    names = [mm.Platform.getPlatform(i).getName() for i in range(mm.Platform.getNumPlatforms())]
    assert platform in names, (f"OpenMM has no {platform} platform ({names}; plugin failures: "
                               f"{mm.Platform.getPluginLoadFailures()}). Fix: install OpenMM-CUDA-13 (required by acellera-openmmtorch-cu13 in pyproject.toml)")
    types, cutoff = ["Ar", "Ne"], 8.5
    eps, sig = [NOBLE_GAS_LJ[n][0] for n in types], [NOBLE_GAS_LJ[n][1] for n in types]
    model = export_artifact(LennardJones(eps, sig, cutoff), lennard_jones_metadata(types, cutoff), tmp_path / "lj.pt")
    sysdef = fcc_lattice(5, a=5.5, jitter=0.25, seed=1, type_names=tuple(types))
    kj_nm = unit.kilojoule_per_mole / unit.nanometer

    def evaluate(system, name, props):
        ctx = mm.Context(system, mm.VerletIntegrator(0.001), mm.Platform.getPlatformByName(name), props)
        ctx.setPositions(sysdef.positions * 0.1)
        st = ctx.getState(getEnergy=True, getForces=True)
        return st.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole), st.getForces(asNumpy=True).value_in_unit(kj_nm)

    learned = sysdef.openmm_system()
    learned.addForce(create_pseudo_force(model, types=sysdef.atom_type_names, periodic=True))
    e, f = evaluate(learned, platform, {"Precision": "double"} if platform == "CUDA" else {})
    ref = sysdef.openmm_system()
    nb = mm.NonbondedForce()
    nb.setNonbondedMethod(mm.NonbondedForce.CutoffPeriodic)
    nb.setCutoffDistance(cutoff / 10)
    nb.setUseDispersionCorrection(False)
    for t in sysdef.types:
        nb.addParticle(0.0, sig[t] / 10, eps[t] * 4.184)
    ref.addForce(nb)
    e_ref, f_ref = evaluate(ref, "Reference", {})
    assert abs(e - e_ref) <= 1e-8 * abs(e_ref)
    assert np.abs(f - f_ref).max() <= 1e-8 * np.abs(f_ref).max()
