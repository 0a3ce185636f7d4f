"""Where two engines' rollouts of the same model, case and seed part (twelfth session).

Usage: python docs/experiments_2026-12-05/engine_divergence.py EVAL_DIR [ENGINE_A ENGINE_B]
EVAL_DIR is the --output of `engine-plugins evaluate ... --engine standalone openmm lammps` (default pair:
standalone, openmm). Each rollout is read through its case.json, as `evaluate` reads it. Prints, per case, the
first jump at which the largest per-atom position difference exceeds 1e-10, 1e-6 and 1e-3 Å, and the largest
over the run. Rollout files hold float32 (DCD) or 10 digits (LAMMPS dump), so differences below ~1e-6 Å show
only for coordinates near 0.
"""
from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np

from engine_plugins.data.trajectories import TrajectoryCase

THRESHOLDS = (1e-10, 1e-6, 1e-3)


def trajectory(case_json: Path):
    case = TrajectoryCase.load(case_json)
    return case.read(unwrap=case.meta.get("unwrap", "auto"))


def main() -> None:
    root = Path(sys.argv[1])
    a_name, b_name = (sys.argv[2], sys.argv[3]) if len(sys.argv) > 3 else ("standalone", "openmm")
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    for case in sorted((root / a_name / "rollouts" / a_name).iterdir()):
        a = trajectory(case / "case.json")
        b = trajectory(root / b_name / "rollouts" / b_name / case.name / "case.json")
        n = min(a.n_frames, b.n_frames)
        d = a.positions[:n] - b.positions[:n]
        # minimum image: engines may start from images of the start frame a box vector apart (LAMMPS wraps it)
        box = a.boxes[:n]
        frac = np.einsum("fni,fij->fnj", d, np.linalg.inv(box))
        d -= np.einsum("fnj,fjk->fnk", np.round(frac), box)
        diffs = np.abs(d).max(axis=(1, 2))
        firsts = [int(np.argmax(diffs > th)) if (diffs > th).any() else None for th in THRESHOLDS]
        print(f"{case.name}: {n - 1} jumps; first jump beyond 1e-10 / 1e-6 / 1e-3 Å: "
              f"{' / '.join(str(f) for f in firsts)}; largest {diffs.max():.3g} Å")


if __name__ == "__main__":
    main()
