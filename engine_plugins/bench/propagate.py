"""``engine-plugins bench propagate``: simulated time per wall-clock second, learned jumps vs reference MD.

One run, one machine, the same systems (issue 3, part 7, speed target):

* **transport** (atoms): the reference is LAMMPS MD of a built-in transport material with the
  ``simulate transport`` settings (``standard`` preset: 4^3 fcc cells, 1 fs, Nose-Hoover NVT, dumps
  every 100 steps, LAMMPS's ``compute msd``), timed by LAMMPS's own loop time of the production run;
* **cg** (water beads): the reference is the all-atom OpenMM TIP3P water of ``simulate cg``
  (``standard``: 2.5 nm box, PME, rigid water, 2 fs LangevinMiddle), timed over ``integrator.step``;
  the learned system is the same box mapped to molecule centres of mass (one bead per water).

Learned paths, each timed after warm-up jumps (TorchScript profiling runs):

* ``standalone``: the scripted ``FlowJump`` (propagator [+ corrector]) called in Python;
* ``openmm``: TorchForce + CustomIntegrator (``engines.openmm_propagate``), ``integrator.step(n)``;
* ``lammps``: ``fix ep/propagate`` in ``lmp`` (1 rank), loop time of ``run n``.

Every path uses ``threads`` CPU threads (default 1: torch, OpenMM CPU platform, LAMMPS/OpenMP), so
the ratios compare algorithms, not parallelism. Figure: simulated ps per wall second; ratio =
learned / reference of the same system.
"""

from __future__ import annotations

import json
import math
import re
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

REPO = Path(__file__).resolve().parent.parent.parent
DEFAULT_MODELS = {"transport": (REPO / "exported_models" / "propagator_transport.pt",
                                REPO / "exported_models" / "corrector_transport.pt"),
                  "cg": (REPO / "exported_models" / "propagator_cg_water.pt",
                         REPO / "exported_models" / "corrector_cg_water.pt")}
ENGINES = ("standalone", "openmm", "lammps")


class BenchError(RuntimeError):
    """The benchmark cannot run as asked."""


# ------------------------------------------------------------------------------------ systems
def transport_start(material: str, n_cells: int, seed: int = 1):
    """(positions Å, box 3x3 Å, species per atom, masses) of a built-in transport material."""
    from engine_plugins.data.simulate import TRANSPORT_MATERIALS, transport_system

    if material not in TRANSPORT_MATERIALS:
        raise BenchError(f"unknown transport material {material!r}; built-in: {', '.join(TRANSPORT_MATERIALS)}")
    s = transport_system(TRANSPORT_MATERIALS[material], n_cells, seed=seed)
    return s.positions, s.box, s.atom_type_names, np.array([s.masses[t] for t in s.types])


def water_beads(box_nm: float):
    """(positions Å, box 3x3 Å, ['HOH']*n, masses) of the ``simulate cg`` water box mapped to
    molecule centres of mass (the CG system the propagator runs on)."""
    import openmm.unit as u

    from engine_plugins.data.simulate import water_box

    _ff, topology, positions = water_box(box_nm)
    xyz = np.array(positions.value_in_unit(u.angstrom))
    mass = np.array([a.element.mass.value_in_unit(u.dalton) for a in topology.atoms()])
    box = 10.0 * box_nm
    beads, masses, names = [], [], []
    for res in topology.residues():
        idx = [a.index for a in res.atoms()]
        ref = xyz[idx[0]]
        d = xyz[idx] - ref
        d -= box * np.round(d / box)  # molecule whole
        m = mass[idx]
        beads.append(ref + (m[:, None] * d).sum(0) / m.sum())
        masses.append(m.sum())
        names.append(res.name)
    return np.mod(np.array(beads), box), np.eye(3) * box, names, np.array(masses)


# ------------------------------------------------------------------------------------ reference MD
def reference_transport(material: str, temperature: float, steps: int, workdir: Path, threads: int) -> dict:
    """LAMMPS production MD of ``simulate transport`` (standard preset), timed by its loop time."""
    from engine_plugins.data.simulate import TRANSPORT_MATERIALS, TRANSPORT_PRESETS, run_transport_case

    s = TRANSPORT_PRESETS["standard"]
    settings = replace(s, equil_steps=200, steps=steps, dump_every=min(s.dump_every, steps))
    run_transport_case(TRANSPORT_MATERIALS[material], temperature, settings, workdir)
    log = (workdir / "log.lammps").read_text()
    loops = re.findall(r"Loop time of ([0-9.eE+-]+) on \d+ procs for (\d+) steps", log)
    wall, n = float(loops[-1][0]), int(loops[-1][1])
    return {"path": "LAMMPS MD (reference)", "engine": "lammps", "step_ps": settings.timestep, "steps": n,
            "wall_s": wall, "atoms": None, "detail": f"lj/cut + WCA, nvt, {settings.timestep * 1000:g} fs, "
                                                   f"dump every {settings.dump_every}"}


def reference_water(temperature: float, steps: int, threads: int, platform: str = "CPU") -> dict:
    """All-atom OpenMM TIP3P water of ``simulate cg`` (standard preset), timed over ``step``."""
    import openmm as mm
    import openmm.app as app
    import openmm.unit as u

    from engine_plugins.data.simulate import CG_PRESETS, water_box

    s = CG_PRESETS["standard"]
    ff, topology, positions = water_box(s.box)
    system = ff.createSystem(topology, nonbondedMethod=app.PME, nonbondedCutoff=s.cutoff * u.nanometer,
                             constraints=app.HBonds, rigidWater=True)
    integ = mm.LangevinMiddleIntegrator(temperature * u.kelvin, s.friction / u.picosecond, s.timestep * u.picosecond)
    props = {"Threads": str(threads)} if platform == "CPU" else {}
    ctx = mm.Context(system, integ, mm.Platform.getPlatformByName(platform), props)
    ctx.setPositions(positions)
    mm.LocalEnergyMinimizer.minimize(ctx, 10.0, 200)
    ctx.setVelocitiesToTemperature(temperature * u.kelvin, 1)
    integ.step(20)
    t0 = time.perf_counter()
    integ.step(steps)
    ctx.getState(getPositions=True)
    wall = time.perf_counter() - t0
    return {"path": "OpenMM all-atom MD (reference)", "engine": "openmm", "step_ps": s.timestep, "steps": steps,
            "wall_s": wall, "atoms": system.getNumParticles(),
            "detail": f"TIP3P, PME {s.cutoff} nm, rigid water, {s.timestep * 1000:g} fs, {platform}"}


# ------------------------------------------------------------------------------------ learned paths
def learned_standalone(model: Path, corrector: Path | None, pos, box, names, temperature: float, jumps: int,
                       warmup: int = 2, device: str = "cpu") -> dict:
    """The scripted FlowJump called from Python on ``device`` (timed with the device synchronised)."""
    import torch

    from engine_plugins.export.artifact import read_metadata
    from engine_plugins.methods.propagator.sampler import build_flow_jump, type_indices

    meta = read_metadata(model)
    dev = torch.device(device)
    jump = build_flow_jump(str(model), str(corrector) if corrector else None).to(dev)
    dtype = getattr(torch, meta.dtype)
    x = torch.tensor(pos, dtype=dtype, device=dev)
    b = torch.tensor(box, dtype=dtype, device=dev)
    types = type_indices(names, meta.type_names).to(dev)
    temp = torch.full((len(pos),), float(temperature), dtype=dtype, device=dev)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    # as propagate(): no gradient, and plain TorchScript execution: the neighbour count changes every
    # jump, and the profiling executor would re-optimise (on CUDA: compile fused kernels) for each size
    with torch.jit.optimized_execution(False), torch.no_grad():
        for k in range(warmup):
            x = jump(x, types, b, temp, 1, k)
        sync()
        t0 = time.perf_counter()
        for k in range(jumps):
            x = jump(x, types, b, temp, 1, warmup + k)
        sync()
        wall = time.perf_counter() - t0
    if not bool(torch.isfinite(x).all()):
        raise BenchError("the standalone rollout produced non-finite positions")
    return {"path": "learned, standalone" + (f" ({dev.type})" if dev.type != "cpu" else ""),
            "engine": "standalone", "step_ps": float(jump.delta_tau_ps), "steps": jumps, "wall_s": wall,
            "atoms": len(pos), "device": dev.type}


def learned_openmm(model: Path, corrector: Path | None, pos, box, names, temperature: float, jumps: int,
                   threads: int, warmup: int = 2, platform: str = "CPU") -> dict:
    import openmm as mm

    from engine_plugins.engines.openmm_propagate import create_learned_integrator
    from engine_plugins.export.artifact import read_metadata

    masses = read_metadata(model).role_fields["prior"]["mass"]
    system = mm.System()
    system.setDefaultPeriodicBoxVectors(*[mm.Vec3(*row) * 0.1 for row in box])
    for n in names:
        system.addParticle(float(masses[n]))
    setup = create_learned_integrator(system, list(names), str(model), str(corrector) if corrector else None,
                                      temperature=temperature, seed=1, periodic=True)
    props = {"Threads": str(threads)} if platform == "CPU" else {}
    ctx = mm.Context(system, setup.integrator, mm.Platform.getPlatformByName(platform), props)
    ctx.setPositions(np.asarray(pos) * 0.1)
    setup.integrator.step(warmup)
    t0 = time.perf_counter()
    setup.integrator.step(jumps)
    ctx.getState(getPositions=True)
    wall = time.perf_counter() - t0
    return {"path": "learned, OpenMM integrator" + (f" ({platform})" if platform != "CPU" else ""),
            "engine": "openmm", "step_ps": setup.delta_tau_ps, "steps": jumps, "wall_s": wall, "atoms": len(pos),
            "device": "cuda" if platform == "CUDA" else "cpu"}


def learned_lammps(model: Path, corrector: Path | None, pos, box, names, masses, temperature: float, jumps: int,
                   workdir: Path, warmup: int = 2) -> dict:
    from engine_plugins.analysis.rollout import RolloutStart, lammps_propagate_input, write_topology
    from engine_plugins.engines.lammps_backend import run_lammps_script
    from engine_plugins.engines.lammps_build import build_plugin
    from engine_plugins.export.artifact import read_metadata
    from engine_plugins.units import time_factor

    build_plugin()
    meta = read_metadata(model)
    type_names = list(meta.type_names)
    types = np.array([type_names.index(n) for n in names])
    start = RolloutStart("bench", np.asarray(pos), np.asarray(box), list(names), np.asarray(masses), temperature,
                         type_names, types)
    workdir.mkdir(parents=True, exist_ok=True)
    write_topology(workdir / "start.data", start)
    script = lammps_propagate_input(model, start, warmup, 1, corrector, {})
    script = script.replace("dump traj", "# dump traj").replace("dump_modify traj", "# dump_modify traj")
    script += f"run {jumps}\n"
    (workdir / "in.bench").write_text(script)
    out = run_lammps_script(workdir / "in.bench", 1, workdir=workdir, timeout=3600)
    loops = re.findall(r"Loop time of ([0-9.eE+-]+) on \d+ procs for (\d+) steps", out.stdout)
    wall, n = float(loops[-1][0]), int(loops[-1][1])
    dtau = float(meta.role_fields["delta_tau"]) * time_factor(meta.units["time"], "ps")
    return {"path": "learned, LAMMPS fix ep/propagate", "engine": "lammps", "step_ps": dtau, "steps": n,
            "wall_s": wall, "atoms": len(pos)}


# ------------------------------------------------------------------------------------ driver
def _finish(row: dict, reference: dict | None) -> dict:
    row["ps_per_wall_s"] = row["step_ps"] * row["steps"] / row["wall_s"]
    row["wall_per_step_ms"] = 1e3 * row["wall_s"] / row["steps"]
    if reference is not None:
        row["speedup_vs_reference"] = row["ps_per_wall_s"] / reference["ps_per_wall_s"]
    return row


def bench_system(system: str, model: Path, corrector: Path | None, *, engines: Sequence[str], jumps: int,
                 md_steps: int, temperature: float, threads: int, material: str, workdir: Path,
                 progress: bool = True) -> list[dict]:
    """Reference MD and every learned path of one system; rows with ps per wall second and ratios."""
    from tqdm.auto import tqdm

    from engine_plugins.analysis.rollout import check_roles

    check_roles(model, corrector)
    if system == "transport":
        pos, box, names, masses = transport_start(material, 4)
    elif system == "cg":
        from engine_plugins.data.simulate import CG_PRESETS

        pos, box, names, masses = water_beads(CG_PRESETS["standard"].box)
    else:
        raise BenchError(f"unknown system {system!r}; choose transport or cg")
    tasks = ["reference", *engines]
    rows: list[dict] = []
    ref = None
    for task in tqdm(tasks, desc=f"bench propagate {system}", unit="path", disable=not progress):
        if task == "reference":
            ref = reference_transport(material, temperature, md_steps, workdir / "ref_transport", threads) \
                if system == "transport" else reference_water(temperature, md_steps, threads)
            row = _finish(ref, None)
            row["speedup_vs_reference"] = 1.0
        elif task == "standalone":
            row = _finish(learned_standalone(model, corrector, pos, box, names, temperature, jumps), ref)
        elif task == "openmm":
            row = _finish(learned_openmm(model, corrector, pos, box, names, temperature, jumps, threads), ref)
        elif task == "lammps":
            row = _finish(learned_lammps(model, corrector, pos, box, names, masses, temperature, jumps,
                                         workdir / f"lammps_{system}"), ref)
        else:
            raise BenchError(f"unknown engine {task!r}; choose from {', '.join(ENGINES)}")
        if row.get("atoms") is None:
            row["atoms"] = len(pos)
        row["system"] = system
        rows.append(row)
    return rows


def format_table(rows: list[dict]) -> str:
    lines = [f"{'system':<10}{'path':<36}{'atoms':>7}{'step (ps)':>11}{'ms/step':>10}{'ps per wall s':>15}"
             f"{'vs MD':>10}"]
    for r in rows:
        lines.append(f"{r['system']:<10}{r['path']:<36}{r['atoms']:>7}{r['step_ps']:>11.4g}{r['wall_per_step_ms']:>10.2f}"
                     f"{r['ps_per_wall_s']:>15.4g}{r['speedup_vs_reference']:>9.3g}x")
    return "\n".join(lines)


def main(systems: Sequence[str] = ("transport", "cg"), *, engines: Sequence[str] = ENGINES, jumps: int = 10,
         md_steps: int = 2000, temperature_transport: float = 800.0, temperature_cg: float = 300.0,
         threads: int = 1, material: str = "Li0.25-s1.55", model_transport: str | None = None,
         corrector_transport: str | None = None, model_cg: str | None = None, corrector_cg: str | None = None,
         no_corrector: bool = False, output: str | None = None, progress: bool = True) -> int:
    import torch

    from engine_plugins.analysis.rollout import RolloutError
    from engine_plugins.export.artifact import ArtifactError

    torch.set_num_threads(threads)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="ep_bench_propagate_") as tmp:
        for system in systems:
            dm, dc = DEFAULT_MODELS[system]
            model = Path(model_transport if system == "transport" and model_transport else
                         model_cg if system == "cg" and model_cg else dm)
            corr_arg = corrector_transport if system == "transport" else corrector_cg
            corrector = None if no_corrector else (Path(corr_arg) if corr_arg else (dc if dc and dc.is_file() else None))
            if not model.is_file():
                print(f"engine-plugins bench propagate: error: no {system} propagator at {model}. Fix: train and export "
                      f"one (exported_models/) or pass --model-{system}", file=sys.stderr)
                return 2
            T = temperature_transport if system == "transport" else temperature_cg
            try:
                sys_rows = bench_system(system, model, corrector, engines=engines, jumps=jumps, md_steps=md_steps,
                                        temperature=T, threads=threads, material=material, workdir=Path(tmp),
                                        progress=progress)
            except (BenchError, RolloutError, ArtifactError) as exc:
                print(f"engine-plugins bench propagate: error: {exc}", file=sys.stderr)
                return 2
            for r in sys_rows:
                r.update({"model": str(model), "corrector": str(corrector) if corrector else None, "temperature": T})
            rows += sys_rows
    print(f"\nthreads per path: {threads}; learned: {jumps} timed jumps after 2 warm-up jumps; reference: "
          f"{md_steps} MD steps")
    print(format_table(rows))
    if output:
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        Path(output).write_text(json.dumps({"threads": threads, "jumps": jumps, "md_steps": md_steps, "rows": rows},
                                           indent=1))
        print(f"wrote {output}")
    return 0
