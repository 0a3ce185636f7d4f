"""The GPFF step of ``make demo``: a few molecules generated from noise inside OpenMM and LAMMPS with
the shipped model (exported_models/gpff_qm9like.pt), written as extxyz, validity printed per engine."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

#: small formulas of the QM9-like chemistry (C, H, N, O, F; no molecule of the set is needed)
DEMO_FORMULAS = ("CH4O", "C2H6O", "C2H4O", "C3H8", "C2H3N", "C3H6O", "C2H5F", "C4H10")


def run_gpff_demo(output: Path, model: Optional[Path] = None, formulas: Sequence[str] = DEMO_FORMULAS,
                  nfe: Optional[int] = None, sigma_start: Optional[float] = None,
                  sampler: Optional[str] = None) -> Dict[str, Any]:
    """Generate ``formulas`` in OpenMM and LAMMPS with the model's default engine schedule (``denoise`` or
    ``ancestral`` with eta 0; both deterministic) and NFE; returns the summary."""
    from engine_plugins.methods.gpff.generate import (ENGINE_SAMPLERS, GenerationTask, check_generated,
                                                      formula_symbols, generate, load_gpff, sampler_settings,
                                                      structures_out, write_generated)

    model = Path(model) if model else Path(__file__).resolve().parents[3] / "exported_models" / "gpff_qm9like.pt"
    art = load_gpff(model)
    st = sampler_settings(art, sampler, nfe, None, None, None, None)  # the model's defaults where not given
    if sampler is None and st["sampler"] not in ENGINE_SAMPLERS:  # a standalone-only default: the engines' own
        st = sampler_settings(art, "ancestral", nfe, None, None, None, None)
    sampler, nfe = st["sampler"], int(st["nfe"])
    sigma_start = float(sigma_start if sigma_start is not None else st["sigma_start"])
    tasks = [GenerationTask(formula_symbols(f), name=f) for f in formulas]
    out: Dict[str, Any] = {"model": str(model), "sampler": sampler, "nfe": nfe, "sigma_start": sigma_start,
                           "formulas": list(formulas)}
    print(f"\nGPFF: {len(tasks)} molecules from noise with {model.name} ({sampler}"
          f"{', eta 0' if sampler == 'ancestral' else ''}, NFE {nfe}, start width sigma_start {sigma_start} Å) "
          "inside the engines")
    for engine in ("openmm", "lammps"):
        t0 = time.perf_counter()
        res = generate(art, tasks, engine=engine, sampler=sampler, nfe=nfe, sigma_start=sigma_start, seed=0,
                       eta=0.0)  # the engines' deterministic schedule, whatever the model's standalone eta
        summary, results = check_generated(tasks, res.positions)
        path = write_generated(output / f"gpff_{engine}.extxyz", structures_out(tasks, res.positions, results),
                               results)
        out[engine] = {"valid": summary["valid"], "seconds": round(time.perf_counter() - t0, 2),
                       "smiles": [r.smiles for r in results], "file": str(path)}
        print(f"  {engine:<7} valid {100 * summary['valid']:.0f} % ({sum(r.valid for r in results)}/{len(results)}), "
              f"{out[engine]['seconds']:.1f} s -> {path}")
        for t, r in zip(tasks, results):
            print(f"    {t.name:<7} {'valid  ' + (r.smiles or '') if r.valid else 'invalid: ' + ', '.join(r.failed())}")
    (output / "gpff_summary.json").write_text(json.dumps(out, indent=1))
    return out
