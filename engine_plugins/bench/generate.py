"""``engine-plugins bench generate``: GPFF generation throughput (molecules per second), standalone
sampler vs OpenMM vs LAMMPS, in one run.

All three paths generate the same held-out formulas from the same prior draws with the same
deterministic schedule (``ancestral`` with ``eta = 0``, i.e. ``x += (1 - sigma_{k+1}/sigma_k) F``,
or ``denoise``), every molecule side by side in one model call per step (standalone: a disjoint
all-pairs graph; OpenMM: one Context, CustomIntegrator, Reference platform; LAMMPS: one in-process
instance, ``pair_style ep/torch`` + the ``fix nve`` recipe), one torch thread. Each path is run
once untimed with 2 evaluations (TorchScript warm-up), then timed over ``rounds`` interleaved
rounds (median reported), including context/instance set-up, which is part of generating. The
positions of the engines are compared with the standalone ones (float32 models agree to ~1e-4 Å,
the float64 analytic model to 1e-10) and validity is reported per path.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent.parent
DEFAULT_MODEL = REPO / "exported_models" / "gpff_qm9like.pt"


def bench_generate(model: Optional[str] = None, data: str = "out/molecules", molecules: int = 16, nfe: int = 32,
                   sampler: str = "ancestral", sigma_start: Optional[float] = None, rounds: int = 3, seed: int = 0,
                   tasks=None, step: Optional[float] = None) -> Dict[str, Any]:
    """Time the three paths; returns figures per engine (molecules/s, s, validity, |dx| vs standalone).
    ``step``: the denoise step (default: the model's)."""
    from engine_plugins.methods.gpff.commands import dataset_tasks
    from engine_plugins.methods.gpff.generate import check_generated, generate, load_gpff, sampler_settings

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        art = load_gpff(model or DEFAULT_MODEL)
        if tasks is None:
            tasks = dataset_tasks(data, "test", molecules, seed)
        kw = dict(sampler=sampler, sigma_start=sigma_start, seed=seed, eta=0.0, step=step)
        for engine in ("standalone", "openmm", "lammps"):  # warm-up (TorchScript profiling runs)
            generate(art, tasks[:2], engine=engine, nfe=2, **kw)
        times: Dict[str, list] = {e: [] for e in ("standalone", "openmm", "lammps")}
        last: Dict[str, Any] = {}
        for _ in range(max(1, rounds)):
            for engine in times:
                r = generate(art, tasks, engine=engine, nfe=nfe, **kw)
                times[engine].append(r.seconds)
                last[engine] = r
    finally:
        torch.set_num_threads(threads)
    ref = last["standalone"].positions
    out: Dict[str, Any] = {"model": str(model or DEFAULT_MODEL), "n_molecules": len(tasks),
                           "n_atoms": int(sum(len(t.symbols) for t in tasks)), "nfe": nfe, "sampler": sampler,
                           "eta": 0.0,
                           "denoise_step": sampler_settings(art, "denoise", 1, step=step)["step"],
                           "rounds": rounds, "threads": 1, "engines": {}}
    for engine, ts in times.items():
        r = last[engine]
        summary, _ = check_generated(tasks, r.positions)
        med = statistics.median(ts)
        # per molecule: a float32 model can send one molecule into another basin while the rest agree
        per_mol = [float(np.abs(a - b).max()) for a, b in zip(r.positions, ref)]
        dev = max(per_mol)
        out["engines"][engine] = {"seconds_median": round(med, 4), "seconds_all": [round(t, 4) for t in ts],
                                  "molecules_per_s": round(len(tasks) / med, 4),
                                  "relative_to_standalone": round(statistics.median(times["standalone"]) / med, 3),
                                  "max_abs_dx_vs_standalone_A": dev,
                                  "median_abs_dx_vs_standalone_A": float(np.median(per_mol)),
                                  "abs_dx_vs_standalone_A_per_molecule": per_mol, "nfe": r.nfe,
                                  "valid": summary.get("valid"),
                                  "valid_and_same_graph": summary.get("valid_and_same_graph")}
    return out


def main(model: Optional[str] = None, data: str = "out/molecules", molecules: int = 16, nfe: int = 32,
         sampler: str = "ancestral", sigma_start: Optional[float] = None, rounds: int = 3,
         output: Optional[str] = None, step: Optional[float] = None) -> int:
    from engine_plugins.methods.gpff.generate import GenerationError

    try:
        res = bench_generate(model, data, molecules, nfe, sampler, sigma_start, rounds, step=step)
    except (GenerationError, FileNotFoundError) as exc:
        print(f"engine-plugins bench generate: error: {exc}", file=sys.stderr)
        return 2
    print(f"GPFF generation: {res['n_molecules']} molecules ({res['n_atoms']} atoms), {sampler} (eta 0), "
          f"NFE {nfe}, median of {rounds} rounds, 1 thread"
          + (f", denoise step {step:g}" if step is not None and sampler == "denoise" else ""))
    print(f"{'engine':<11} {'molecules/s':>12} {'s':>9} {'vs standalone':>14} {'valid':>7} {'max|dx| (Å)':>12} "
          f"{'median':>9}  (|dx|: largest per-molecule deviation from standalone)")
    for e, r in res["engines"].items():
        print(f"{e:<11} {r['molecules_per_s']:>12.3f} {r['seconds_median']:>9.3f} {r['relative_to_standalone']:>14.3f} "
              f"{100 * r['valid']:>6.0f}% {r['max_abs_dx_vs_standalone_A']:>12.2e} "
              f"{r['median_abs_dx_vs_standalone_A']:>9.1e}")
    if output:
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        Path(output).write_text(json.dumps(res, indent=1))
        print(f"wrote {output}")
    return 0
