"""Reference MD of built-in example systems with the engines' own force fields.

Every shipped model and every demo starts from real engine output: here OpenMM runs Lennard-Jones
argon with its own NonbondedForce, writes a DCD trajectory any MDAnalysis reader opens, and keeps
the reference energies and forces of each saved frame for fitting.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine_plugins.data.systems import NOBLE_GAS_LJ, ExampleSystem


@dataclass
class LabelledFrames:
    """Frames with reference labels, in Å, kcal/mol and kcal/mol/Å."""

    positions: np.ndarray  # [F, N, 3]
    energies: np.ndarray  # [F]
    forces: np.ndarray  # [F, N, 3]
    box: np.ndarray | None
    types: np.ndarray
    type_names: list[str]


def lj_openmm_system(sysdef: ExampleSystem, cutoff: float = 8.5):
    """OpenMM System with NonbondedForce LJ (truncated, no dispersion correction) for ``sysdef``."""
    import openmm as mm

    system = sysdef.openmm_system()
    nb = mm.NonbondedForce()
    nb.setNonbondedMethod(mm.NonbondedForce.CutoffPeriodic if sysdef.box is not None
                          else mm.NonbondedForce.CutoffNonPeriodic)
    nb.setCutoffDistance(cutoff / 10)
    nb.setUseDispersionCorrection(False)
    nb.setUseSwitchingFunction(False)
    for t in sysdef.types:
        name = sysdef.type_names[t]
        eps, sig, _ = NOBLE_GAS_LJ[name]
        nb.addParticle(0.0, sig / 10, eps * 4.184)
    system.addForce(nb)
    return system


def run_lj_reference_md(sysdef: ExampleSystem, n_frames: int, stride: int, temperature: float = 120.0,
                        timestep_fs: float = 4.0, seed: int = 0, dcd: str | Path | None = None,
                        platform: str = "CPU") -> LabelledFrames:
    """Langevin MD of ``sysdef`` with OpenMM's own LJ; keep ``n_frames`` frames every ``stride`` steps."""
    import openmm as mm
    import openmm.app as app
    import openmm.unit as u

    system = lj_openmm_system(sysdef)
    integrator = mm.LangevinMiddleIntegrator(temperature * u.kelvin, 5.0 / u.picosecond, timestep_fs * u.femtosecond)
    integrator.setRandomNumberSeed(seed)
    ctx = mm.Context(system, integrator, mm.Platform.getPlatformByName(platform))
    ctx.setPositions(sysdef.positions * 0.1)
    ctx.setVelocitiesToTemperature(temperature * u.kelvin, seed)
    mm.LocalEnergyMinimizer.minimize(ctx, 1.0, 200)
    integrator.step(10 * stride)  # equilibrate
    dcd_file = None
    if dcd is not None:
        top = app.Topology()
        chain = top.addChain()
        for t in sysdef.types:
            name = sysdef.type_names[t]
            top.addAtom(name, app.element.Element.getBySymbol(name), top.addResidue(name, chain))
        if sysdef.box is not None:
            top.setPeriodicBoxVectors([mm.Vec3(*row) * 0.1 for row in sysdef.box])
        dcd_file = open(dcd, "wb")
        writer = app.DCDFile(dcd_file, top, timestep_fs * u.femtosecond, 0, stride)
    pos_f, e_f, f_f = [], [], []
    kj_to_kcal = 1.0 / 4.184
    for _ in range(n_frames):
        integrator.step(stride)
        st = ctx.getState(getPositions=True, getEnergy=True, getForces=True, enforcePeriodicBox=True)
        pos = st.getPositions(asNumpy=True).value_in_unit(u.angstrom)
        pos_f.append(pos)
        e_f.append(st.getPotentialEnergy().value_in_unit(u.kilojoule_per_mole) * kj_to_kcal)
        f_f.append(st.getForces(asNumpy=True).value_in_unit(u.kilojoule_per_mole / u.angstrom) * kj_to_kcal)
        if dcd_file is not None:
            writer.writeModel(st.getPositions(), periodicBoxVectors=st.getPeriodicBoxVectors())
    if dcd_file is not None:
        dcd_file.close()
    return LabelledFrames(np.array(pos_f), np.array(e_f), np.array(f_f), sysdef.box, sysdef.types.copy(),
                          list(sysdef.type_names))
