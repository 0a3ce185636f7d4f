"""``engine-plugins bench engines``: time per force evaluation, standalone vs OpenMM vs LAMMPS.

One run, one model, the same systems (fcc argon of several sizes). All paths use one torch thread per
process (LAMMPS: per rank), so the ratios measure integration overhead, not threading:

* standalone: the artifact's TorchScript forward on a precomputed graph (``model``), and with the
  package's TorchScript graph construction included (``model+graph``, what the OpenMM adapter does);
* OpenMM: a TorchForce in a Context (CPU platform), one VerletIntegrator step per evaluation;
* LAMMPS 1 rank: ``pair_style ep/torch`` in this process (lammps module), ``run`` with no integrator;
* LAMMPS R ranks: ``mpiexec -n R lmp``, time per step from LAMMPS's loop times.

The in-process paths are timed in interleaved rounds (each round times every path once) and the
median over rounds is reported, so that machine noise hits all paths alike. LAMMPS steps are timed
as (time of ``run 2n`` - time of ``run n``) / n, removing each run's fixed first/last-step cost.
Ratios are engine time / standalone ``model`` time (target: <= 1.10 at >= 1,000 atoms).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from engine_plugins.data.lammps_data import write_lammps_data
from engine_plugins.data.systems import fcc_lattice
from engine_plugins.export.artifact import load_artifact
from engine_plugins.nn.graph import neighbor_graph

REPO = Path(__file__).resolve().parent.parent.parent
DEFAULT_MODEL = REPO / "exported_models" / "nequip_argon.pt"
LAMMPS_UNITS_FOR_ENERGY = {"eV": "metal", "kcal/mol": "real"}


def _cells_for(n_atoms: int) -> tuple[int, int, int]:
    """fcc cell counts giving about ``n_atoms`` atoms (4 per cell), at least 4 cells a side."""
    cells = max(4, round((n_atoms / 4) ** (1 / 3)))
    base = (cells, cells, cells)
    best = min(((a, b, c) for a in range(4, cells + 3) for b in range(4, cells + 3) for c in range(4, 4 * cells)),
               key=lambda t: (abs(4 * t[0] * t[1] * t[2] - n_atoms), max(t) - min(t)))
    return best if abs(4 * np.prod(best) - n_atoms) < abs(4 * np.prod(base) - n_atoms) else base


def _timeit(fn, repeats: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t0) / repeats


def standalone_paths(art, sysdef) -> tuple[dict, int]:
    """Callables doing ``k`` evaluations of the artifact alone (fixed graph) and with graph building."""
    dtype = getattr(torch, art.metadata.dtype)
    pos = torch.tensor(sysdef.positions, dtype=dtype)
    box = torch.tensor(sysdef.box, dtype=dtype)
    types = torch.zeros(len(pos), dtype=torch.long)
    cutoff = art.metadata.cutoff
    ei, es = neighbor_graph(pos, cutoff, box)
    n = len(pos)

    def model_only(k: int) -> None:
        for _ in range(k):
            art.module(pos, types, ei, es, n)

    def with_graph(k: int) -> None:
        for _ in range(k):
            e, s = neighbor_graph(pos, cutoff, box)
            art.module(pos, types, e, s, n)

    return {"standalone model": model_only, "standalone model+graph": with_graph}, int(ei.shape[1])


def openmm_path(model_path: Path, sysdef, platform: str = "CPU"):
    import openmm as mm

    from engine_plugins.engines.openmm_backend import create_pseudo_force

    system = sysdef.openmm_system()
    system.addForce(create_pseudo_force(model_path, types=sysdef.atom_type_names, periodic=True))
    integ = mm.VerletIntegrator(1e-6)
    props = {"Threads": "1"} if platform == "CPU" else {}
    ctx = mm.Context(system, integ, mm.Platform.getPlatformByName(platform), props)
    ctx.setPositions(sysdef.positions * 0.1)
    return integ.step, ctx


def lammps_inprocess_path(model_path: Path, units: str, sysdef, workdir: Path):
    """``k`` force evaluations in an in-process LAMMPS (1 rank); returns the callable and the instance."""
    from engine_plugins.engines.lammps_backend import make_lammps

    data = write_lammps_data(workdir / f"bench_{sysdef.n_atoms}.data", sysdef)
    lmp = make_lammps()
    for line in [f"units {units}", "atom_style atomic", "boundary p p p", f"read_data {data}",
                 f"pair_style ep/torch {model_path} threads 1", "pair_coeff * * Ar", "neighbor 1.0 bin",
                 "thermo 0", "run 0"]:
        lmp.command(line)

    def steps(k: int) -> None:
        # the difference of two runs cancels the virial step at the end of each run
        t0 = time.perf_counter()
        lmp.command(f"run {k} pre no post no")
        t1 = time.perf_counter()
        lmp.command(f"run {2 * k} pre no post no")
        t2 = time.perf_counter()
        steps.elapsed = (t2 - t1) - (t1 - t0)  # type: ignore[attr-defined]

    return steps, lmp


def _interleaved(paths: dict, repeats: int, rounds: int) -> dict[str, float]:
    """Median over rounds of seconds per evaluation, every path timed once per round."""
    for fn in paths.values():  # warm-up: TorchScript profiling runs, first neighbour lists
        fn(3)
    samples: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(rounds):
        for name, fn in paths.items():
            t0 = time.perf_counter()
            fn(repeats)
            dt = time.perf_counter() - t0
            dt = getattr(fn, "elapsed", dt)
            samples[name].append(dt / repeats)
    return {name: float(np.median(v)) for name, v in samples.items()}


def bench_lammps(model_path: Path, units: str, sysdef, repeats: int, ranks: int, workdir: Path) -> float:
    """Seconds per step of ``run`` with pair ep/torch (no integrator: one force evaluation per step).

    Timed as (loop time of ``run 2N`` - loop time of ``run N``) / N, which removes the fixed cost of
    each run's first and last step (thermo output asks for the virial there, the explicit-ghost path).
    """
    data = write_lammps_data(workdir / f"bench_{sysdef.n_atoms}.data", sysdef)
    script = workdir / f"in.bench_{sysdef.n_atoms}"
    script.write_text("\n".join([
        f"units {units}", "atom_style atomic", "boundary p p p", f"read_data {data}",
        f"pair_style ep/torch {model_path} threads 1", "pair_coeff * * Ar",
        "neighbor 1.0 bin", "thermo 0", "run 3",  # warm-up (TorchScript profiling runs)
        f"run {repeats}", f"run {2 * repeats}", ""]))
    bindir = Path(sys.executable).parent
    cmd = [str(bindir / "lmp"), "-in", str(script), "-log", "none"]
    if ranks > 1:
        cmd = [str(bindir / "mpiexec"), "-n", str(ranks)] + cmd
    cmd_out = subprocess.run(cmd, capture_output=True, text=True,
                             env=dict(os.environ, OMP_NUM_THREADS="1"), cwd=workdir)
    if cmd_out.returncode != 0:
        raise RuntimeError(f"LAMMPS benchmark failed ({' '.join(cmd)}):\n{cmd_out.stdout[-2000:]}\n{cmd_out.stderr[-2000:]}")
    loops = re.findall(r"Loop time of ([0-9.eE+-]+) on \d+ procs for (\d+) steps", cmd_out.stdout)
    (t1, n1), (t2, n2) = [(float(t), int(n)) for t, n in loops[-2:]]
    return (t2 - t1) / (n2 - n1)


def main(sizes: list[int], repeats: int = 10, model: str | None = None, ranks: list[int] | None = None,
         output: str | None = None, rounds: int = 5) -> int:
    torch.set_num_threads(1)
    model_path = Path(model).resolve() if model else DEFAULT_MODEL
    art = load_artifact(model_path)
    units = LAMMPS_UNITS_FOR_ENERGY.get(art.metadata.units["energy"], "metal")
    ranks = ranks or [1, 2]
    rows = []
    print(f"model {model_path.name} ({art.metadata.method}, cutoff {art.metadata.cutoff} {art.metadata.units['length']}, "
          f"{art.metadata.num_message_passing_layers} layers, {art.metadata.dtype}); torch threads per process 1; "
          f"median of {rounds} interleaved rounds of {repeats} evaluations")
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            sysdef = fcc_lattice(_cells_for(n), a=5.6, jitter=0.05, seed=0, type_names=("Ar",))
            paths, edges = standalone_paths(art, sysdef)
            paths["OpenMM TorchForce"], _ctx = openmm_path(model_path, sysdef)
            lmp = None
            if 1 in ranks:
                paths["LAMMPS 1 rank"], lmp = lammps_inprocess_path(model_path, units, sysdef, Path(tmp))
            try:
                row = {"atoms": sysdef.n_atoms, "standalone edges": edges}
                row.update(_interleaved(paths, repeats, rounds))
            finally:
                if lmp is not None:
                    lmp.close()
            for r in ranks:
                if r > 1:
                    row[f"LAMMPS {r} ranks"] = bench_lammps(model_path, units, sysdef, repeats, r, Path(tmp))
            rows.append(row)
            _print_row(row)
    if output:
        Path(output).write_text(json.dumps(rows, indent=2))
    return 0


def _print_row(row: dict) -> None:
    base = row["standalone model"]
    n = row["atoms"]
    print(f"\n{n} atoms ({row['standalone edges']} edges)")
    print(f"  {'path':<28}{'ms/eval':>10}{'ratio':>8}{'atom-steps/s':>14}")
    for k, v in row.items():
        if k in ("atoms", "standalone edges"):
            continue
        print(f"  {k:<28}{v * 1e3:>10.2f}{v / base:>8.3f}{n / v:>14.0f}")
