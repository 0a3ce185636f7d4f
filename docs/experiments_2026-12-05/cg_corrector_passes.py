"""One learned jump of CG water from reference frames, then the corrector again and again: bead pairs
closer than 2 A and the shortest bead distance after 0..N corrector passes (minimum image, MDAnalysis).

Why: the count that chose the corrector's ``passes`` (role_fields.passes); each pass is what the
engines run, pass p with its own noise stream (attempt offset 2**20 + p * 2**16).

Usage (repository root)::

    python docs/experiments_2026-12-05/cg_corrector_passes.py [/work/data/cg_water/water_T0300]
        [--corrector exported_models/corrector_cg_water.pt] [--flow-steps K] [--passes 6] [--frames 5]
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np
import torch
from MDAnalysis.lib.distances import self_distance_array
from MDAnalysis.lib.mdamath import triclinic_box

from engine_plugins.analysis.rollout import read_reference
from engine_plugins.data.trajectories import load_cases
from engine_plugins.methods.propagator.sampler import (CORRECTOR_ATTEMPT_OFFSET, PASS_ATTEMPT_STRIDE,
                                                       build_flow_sampler)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("case", nargs="?", default="/work/data/cg_water/water_T0300")
    ap.add_argument("--model", default="exported_models/propagator_cg_water.pt")
    ap.add_argument("--corrector", default="exported_models/corrector_cg_water.pt")
    ap.add_argument("--flow-steps", type=int, help="the corrector's flow steps (default: its metadata)")
    ap.add_argument("--passes", type=int, default=6)
    ap.add_argument("--frames", type=int, default=5, help="start frames, 50 frames apart")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    case = load_cases(args.case)[0]
    ref = read_reference(case, step=50)
    prop = build_flow_sampler(args.model, "propagator")
    corr = build_flow_sampler(args.corrector, "corrector", flow_steps=args.flow_steps)  # one pass per call
    close = np.zeros((args.frames, args.passes + 1))
    shortest = np.zeros_like(close)
    with torch.no_grad(), torch.jit.optimized_execution(False):
        for f in range(args.frames):
            x = torch.tensor(ref.positions[f], dtype=torch.float32)
            box = torch.tensor(ref.boxes[f], dtype=torch.float32)
            types = torch.zeros(len(x), dtype=torch.long)
            temp = torch.full((len(x),), float(case.temperature))
            x = x + prop(x, types, box, temp, 0, f + 1)
            for p in range(args.passes + 1):
                if p > 0:
                    corr.attempt_offset = CORRECTOR_ATTEMPT_OFFSET + (p - 1) * PASS_ATTEMPT_STRIDE
                    x = x + corr(x, types, box, temp, 0, f + 1)
                d = self_distance_array(x.numpy().astype(np.float64), box=triclinic_box(*ref.boxes[f]))
                close[f, p], shortest[f, p] = (d < 2.0).sum(), d.min()
    print(f"{case.case_id}, {args.frames} start frames, corrector {args.corrector}"
          f"{'' if args.flow_steps is None else f' at {args.flow_steps} flow steps'}")
    print("| passes | " + " | ".join(str(p) for p in range(args.passes + 1)) + " |")
    print("|---" * (args.passes + 2) + "|")
    print("| pairs < 2 A per frame | " + " | ".join(f"{v:.1f}" for v in close.mean(0)) + " |")
    print("| shortest distance (A), mean | " + " | ".join(f"{v:.2f}" for v in shortest.mean(0)) + " |")


if __name__ == "__main__":
    main()
