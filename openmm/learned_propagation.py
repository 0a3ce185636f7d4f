"""Learned large-timestep propagation in OpenMM: each integrator step is one learned jump of Δτ.

    python openmm/learned_propagation.py --model exported_models/propagator_X.pt --structure start.pdb \\
        [--corrector corrector.pt] [--jumps 1000] [--temperature 300] [--seed 1] [--platform CPU]
    python openmm/learned_propagation.py --demo          # no trained model needed (closed-form test field)

Writes OUTPUT/trajectory.dcd (DCDReporter), OUTPUT/state.csv (StateDataReporter: step, time, kinetic
energy of the jump velocities, speed) and OUTPUT/checkpoint.chk. The structure file (PDB or PDBx/mmCIF)
gives positions, the box (CRYST1) and the particle types: element symbols, atom names, or residue names
for CG beads (``--type-map NAME=TYPE`` remaps). The three lines that matter are marked.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import openmm as mm
import openmm.app as app
import openmm.unit as unit

from engine_plugins.engines.openmm_propagate import (LearnedPropagationError, create_learned_integrator,
                                                     create_system_for_model)


def _demo_inputs(out: Path) -> tuple[Path, Path]:
    """A closed-form PairRelax propagator artifact and a 64-atom Li/Ar box, for a run without a trained model."""
    from engine_plugins.export import ArtifactMetadata, export_artifact
    from engine_plugins.methods.propagator.analytic import PairRelaxPropagator

    meta = ArtifactMetadata(
        role="propagator", method="pair_relax_demo", type_names=["Li", "Ar"], cutoff=4.0,
        num_message_passing_layers=2, units={"length": "angstrom", "energy": "eV", "time": "ps"},
        periodicity="periodic",
        role_fields={"delta_tau": 1.0, "temperature_range": [300.0, 900.0], "flow_steps": 5, "solver": "euler",
                     "prior": {"kind": "maxwell_boltzmann", "scale": {"Li": 1.0, "Ar": 0.3},
                               "mass": {"Li": 6.94, "Ar": 39.948}},
                     "max_displacement": 3.0, "max_attempts": 10})
    model = export_artifact(PairRelaxPropagator(strength=0.05, drift=0.5), meta, out / "demo_propagator.pt")
    g, a = 4, 3.0
    grid = np.array([[i, j, k] for i in range(g) for j in range(g) for k in range(g)], float)
    pos = (grid + 0.5) * a + np.random.default_rng(0).normal(0.0, 0.1, grid.shape)
    top = app.Topology()
    chain = top.addChain()
    for i in range(len(pos)):
        name = "Li" if i % 4 == 0 else "Ar"
        top.addAtom(name, app.element.Element.getBySymbol(name), top.addResidue(name.upper(), chain))
    top.setPeriodicBoxVectors(np.eye(3) * g * a * 0.1)
    structure = out / "demo_start.pdb"
    with open(structure, "w") as fh:
        app.PDBFile.writeFile(top, pos * 0.1 * unit.nanometer, fh)
    return model, structure


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="propagator artifact (.pt)")
    p.add_argument("--corrector", help="optional corrector artifact, applied after every jump")
    p.add_argument("--structure", help="start structure: PDB or PDBx/mmCIF (box from CRYST1 / cell)")
    p.add_argument("--jumps", type=int, default=200, help="number of learned jumps (integrator steps)")
    p.add_argument("--temperature", type=float, default=None, help="K (default: middle of the trained range)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--report-interval", type=int, default=10)
    p.add_argument("--type-map", nargs="*", default=[], metavar="NAME=TYPE",
                   help="map atom/element/residue names of the structure to model type names")
    p.add_argument("--prior-scale", nargs="*", default=[], metavar="TYPE=S",
                   help="prior scale per type, e.g. Li=6: the adaptive prior's pick for this material "
                        "(`engine-plugins adaptive-prior MODEL CASE` measures it)")
    p.add_argument("--platform", default="CPU", help="Reference (float64), CPU, or CUDA when a GPU is present")
    p.add_argument("--output", default="out/openmm_learned")
    p.add_argument("--demo", action="store_true", help="run the closed-form demo field on a built-in box")
    args = p.parse_args(argv)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    if args.demo:
        model, structure = _demo_inputs(out)
    elif args.model and args.structure:
        model, structure = Path(args.model), Path(args.structure)
    else:
        p.error("give --model and --structure, or --demo")
    type_map = dict(item.split("=", 1) for item in args.type_map) or None
    from engine_plugins.analysis.cli_args import parse_prior_scale

    try:
        prior_scale = parse_prior_scale(args.prior_scale)
    except ValueError as exc:
        p.error(str(exc))

    from engine_plugins.export.artifact import read_metadata

    meta = read_metadata(model)
    lo, hi = meta.role_fields["temperature_range"][:2]
    temperature = args.temperature if args.temperature is not None else 0.5 * (float(lo) + float(hi))
    reader = app.PDBxFile if structure.suffix.lower() in (".cif", ".pdbx", ".mmcif") else app.PDBFile
    pdb = reader(str(structure))

    system = create_system_for_model(pdb.topology, model, type_map)            # particles with the model's masses
    try:
        setup = create_learned_integrator(system, pdb.topology, model, args.corrector,  # <- the learned integrator
                                          temperature=temperature, seed=args.seed, type_map=type_map,
                                          prior_scale=prior_scale)
    except LearnedPropagationError as exc:
        p.error(str(exc))
    simulation = app.Simulation(pdb.topology, system, setup.integrator,      # <- an ordinary Simulation
                                mm.Platform.getPlatformByName(args.platform))
    simulation.context.setPositions(pdb.positions)
    simulation.reporters.append(app.DCDReporter(str(out / "trajectory.dcd"), args.report_interval))
    for target in (str(out / "state.csv"), sys.stdout):
        simulation.reporters.append(app.StateDataReporter(
            target, args.report_interval, step=True, time=True, kineticEnergy=True, speed=True,
            totalSteps=args.jumps, remainingTime=target is sys.stdout, progress=target is sys.stdout))
    simulation.reporters.append(app.CheckpointReporter(str(out / "checkpoint.chk"), args.report_interval))
    print(f"{meta.method}: delta_tau = {setup.delta_tau_ps:g} ps per step, T = {temperature:g} K, "
          f"{system.getNumParticles()} particles, periodic = {setup.periodic}")
    simulation.step(args.jumps)
    t = simulation.context.getState().getTime().value_in_unit(unit.picosecond)
    print(f"simulated {t:g} ps in {args.jumps} jumps; redraws: {setup.retries()}; "
          f"wrote {out / 'trajectory.dcd'} and {out / 'state.csv'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
