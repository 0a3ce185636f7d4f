"""Run a shipped engine_plugins model as an ordinary OpenMM force (app layer, reporters, any platform).

    python openmm/argon_nvt.py [--model exported_models/nequip_argon.pt] [--steps 1000] [--platform CPU]

The two lines that matter are marked: build the TorchForce from the artifact, add it to the System.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import openmm as mm
import openmm.app as app
import openmm.unit as unit

from engine_plugins.data.systems import fcc_lattice
from engine_plugins.engines.openmm_backend import create_pseudo_force

REPO = Path(__file__).resolve().parent.parent


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=str(REPO / "exported_models" / "nequip_argon.pt"))
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--platform", default="CPU", help="Reference (float64), CPU, or CUDA when a GPU is present")
    p.add_argument("--output", default="out/openmm_argon")
    args = p.parse_args()
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)

    # An ordinary OpenMM topology and system: 256 argon atoms in a periodic box.
    sysdef = fcc_lattice(4, a=5.6, type_names=("Ar",))
    topology = app.Topology()
    chain = topology.addChain()
    for _ in range(sysdef.n_atoms):
        topology.addAtom("Ar", app.element.argon, topology.addResidue("AR", chain))
    box = [mm.Vec3(*row) * 0.1 for row in sysdef.box]
    topology.setPeriodicBoxVectors(box)
    system = mm.System()
    system.setDefaultPeriodicBoxVectors(*box)
    for atom in topology.atoms():
        system.addParticle(atom.element.mass)

    force = create_pseudo_force(args.model, topology=topology)  # <- the model as an OpenMM Force
    system.addForce(force)                                      # <- that's all

    integrator = mm.LangevinMiddleIntegrator(120 * unit.kelvin, 1 / unit.picosecond, 4 * unit.femtosecond)
    simulation = app.Simulation(topology, system, integrator, mm.Platform.getPlatformByName(args.platform))
    simulation.context.setPositions(sysdef.positions * 0.1)
    simulation.minimizeEnergy(maxIterations=100)
    simulation.context.setVelocitiesToTemperature(120 * unit.kelvin, 1)
    simulation.reporters.append(app.DCDReporter(str(out / "trajectory.dcd"), 100))
    simulation.reporters.append(app.StateDataReporter(sys.stdout, 100, step=True, potentialEnergy=True,
                                                      temperature=True, speed=True))
    simulation.step(args.steps)
    print(f"wrote {out / 'trajectory.dcd'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
