"""Is the 10-ps window the pick is measured on too short? (nineteenth session)

Usage: python docs/experiments_2026-12-06/probe_pick_window.py --model MODEL
           --set REFERENCE_ROOT EVAL_DIR [EVAL_DIR ...] [--set ...]

For every case of each EVAL_DIR (`engine-plugins evaluate` outputs of held-out cases, one rollout
seed each), the rule's unrounded pick measured on the first 10, 50 and 200 ps of the case's reference
under REFERENCE_ROOT, and the mean log10 learned/MD Li MSD over the seeds. Why: the training cases'
picks were measured on their whole 50-ps runs, a new material's on 10 ps; if the short window's pick
were off, the case's error should follow log(pick_long / pick_10).
"""
from __future__ import annotations

import argparse
import json
import math
import warnings
from pathlib import Path

import numpy as np

from engine_plugins.analysis.rollout import measure_case_prior, read_reference
from engine_plugins.data.trajectories import TrajectoryCase

WINDOWS = (10.0, 50.0, 200.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--set", nargs="+", action="append", required=True, metavar="ROOT_THEN_EVAL_DIRS")
    ap.add_argument("--species", default="Li")
    args = ap.parse_args()
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    rows = []
    for root, *evals in args.set:
        logs: dict[str, list[float]] = {}
        for e in evals:
            for cid, c in json.loads((Path(e) / "evaluation.json").read_text())["cases"].items():
                s = c["species"][args.species]
                logs.setdefault(cid, []).append(math.log10(s["msd_learned"] / s["msd_ref"]))
        for cid in sorted(logs):
            case = TrajectoryCase.load(Path(root) / cid)
            ref = read_reference(case)
            picks = [measure_case_prior(args.model, case, ps, reference=ref, continuous=True)[args.species]
                     for ps in WINDOWS]
            rows.append((picks, float(np.mean(logs[cid]))))
            print(f"{cid:26s} pick on 10 / 50 / 200 ps {picks[0]:.3f} / {picks[1]:.3f} / {picks[2]:.3f}; "
                  f"mean log10 learned/MD {rows[-1][1]:+.3f}")
    picks = np.array([p for p, _ in rows])
    err = np.array([e for _, e in rows])
    for j in (1, 2):
        d = np.log10(picks[:, j] / picks[:, 0])
        print(f"{len(rows)} cases: log10 pick({WINDOWS[j]:g} ps) / pick(10 ps) rms {np.sqrt(np.mean(d ** 2)):.4f}, "
              f"correlation with -log10 learned/MD {np.corrcoef(d, -err)[0, 1]:.2f}")


if __name__ == "__main__":
    main()
