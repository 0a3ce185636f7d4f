"""How close CG beads come in learned rollouts vs reference MD: per frame the shortest bead-bead
distance and the number of bead pairs closer than ``--below`` (minimum image, MDAnalysis).

Why: the RDF's Jensen-Shannon divergence barely sees a few overlapping beads, but they end long
rollouts (see ``cg_rollout_stop.py``); this counts them directly.

Usage (repository root; each DIR a case directory: OUT/rollouts/standalone/CASE of an
``engine-plugins evaluate``, or a reference case such as /work/data/cg_water/water_T0300)::

    python docs/experiments_2026-12-05/cg_bead_contacts.py DIR [DIR ...] [--below 2.0] [--every 1]
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np
from MDAnalysis.lib.distances import self_distance_array
from MDAnalysis.lib.mdamath import triclinic_box

from engine_plugins.analysis.rollout import read_reference
from engine_plugins.data.trajectories import load_cases


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("cases", nargs="+")
    ap.add_argument("--below", type=float, default=2.0, help="pair distance counted as a contact (A)")
    ap.add_argument("--every", type=int, default=1, help="use every n-th frame")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    print(f"| case | frames | shortest distance, median of frames (A) | min (A) | pairs < {args.below} A per frame |")
    print("|---|---|---|---|---|")
    for path in args.cases:
        case = load_cases(path)[0]
        ref = read_reference(case, step=args.every)
        mins, close = [], []
        for f in range(ref.n_frames):
            box = None if ref.boxes is None else triclinic_box(*ref.boxes[f])
            d = self_distance_array(ref.positions[f].astype(np.float64), box=box)
            mins.append(float(d.min()))
            close.append(int((d < args.below).sum()))
        print(f"| {path} | {ref.n_frames} | {np.median(mins):.3f} | {min(mins):.3f} | {np.mean(close):.2f} |")


if __name__ == "__main__":
    main()
