"""Why a CG water rollout stopped: the shortest bead-bead distance (minimum image, MDAnalysis) over a
kept rollout and in its last frames, then the next jump tried again from the last frame with a few
seeds (a stop is a jump whose every redraw was non-finite).

Usage (repository root; DIR = OUT/rollouts/standalone/CASE of a stopped ``engine-plugins evaluate``)::

    python docs/experiments_2026-12-05/cg_rollout_stop.py DIR [--model exported_models/propagator_cg_water.pt]
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np
import torch
from MDAnalysis.lib.distances import self_distance_array
from MDAnalysis.lib.mdamath import triclinic_box

from engine_plugins.data.trajectories import load_cases
from engine_plugins.methods.propagator.sampler import JumpFailedError, SamplerError, build_flow_sampler


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("rollout")
    ap.add_argument("--model", default="exported_models/propagator_cg_water.pt")
    ap.add_argument("--seeds", type=int, default=3)
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    case = load_cases(args.rollout)[0]
    traj = case.read()
    n = traj.n_frames
    mins = [float(self_distance_array(traj.positions[f], box=triclinic_box(*traj.boxes[f])).min()) for f in range(n)]
    print(f"{case.case_id}: {n} frames; shortest bead distance (A) at 10 evenly spaced frames:",
          [round(mins[f], 2) for f in np.linspace(0, n - 1, 10).astype(int)])
    print("  last 6 frames:", [round(m, 3) for m in mins[-6:]])
    sampler = build_flow_sampler(args.model, "propagator")
    x = torch.tensor(traj.positions[-1], dtype=torch.float64)
    box = torch.tensor(traj.boxes[-1], dtype=torch.float64)
    types = torch.zeros(len(x), dtype=torch.long)
    temp = torch.tensor(float(case.temperature), dtype=torch.float64)
    for seed in range(args.seeds):
        try:
            d = sampler(x, types, box, temp, seed, n)
            print(f"  next jump, seed {seed}: finite, longest displacement {float(d.norm(dim=1).max()):.2f} A")
        except (RuntimeError, JumpFailedError, SamplerError) as exc:
            print(f"  next jump, seed {seed}: failed ({str(exc).split(';')[0][:120]})")


if __name__ == "__main__":
    main()
