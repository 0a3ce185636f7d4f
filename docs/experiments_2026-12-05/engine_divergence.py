"""Where two engines' rollouts of the same model, case and seed part (twelfth session).

Usage: python docs/experiments_2026-12-05/engine_divergence.py EVAL_DIR [ENGINE_A ENGINE_B]
EVAL_DIR is the --output of `engine-plugins evaluate ... --engine standalone openmm lammps`; DCD rollouts only
(standalone, openmm). Prints, per case, the largest per-atom difference (minimum image, Å) at each jump where it
first exceeds 1e-10, 1e-6 and 1e-3 Å, and the largest over the run.
"""
from __future__ import annotations

import sys
import warnings
from pathlib import Path

import MDAnalysis as mda
import numpy as np


def frames(directory: Path) -> mda.Universe:
    return mda.Universe(str(directory / "start.data"), str(directory / "traj.dcd"), topology_format="DATA",
                        atom_style="id type x y z")


def main() -> None:
    root = Path(sys.argv[1])
    a_name, b_name = (sys.argv[2], sys.argv[3]) if len(sys.argv) > 3 else ("standalone", "openmm")
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    for case in sorted((root / a_name / "rollouts" / a_name).iterdir()):
        a, b = frames(case), frames(root / b_name / "rollouts" / b_name / case.name)
        diffs = []
        for ta, _ in zip(a.trajectory, b.trajectory):
            d = a.atoms.positions.astype(np.float64) - b.atoms.positions
            box = ta.dimensions[:3]
            d -= box * np.round(d / box)
            diffs.append(float(np.abs(d).max()))
        diffs = np.asarray(diffs)
        firsts = {th: (int(np.argmax(diffs > th)) if (diffs > th).any() else None) for th in (1e-10, 1e-6, 1e-3)}
        print(f"{case.name}: {len(diffs) - 1} jumps; first jump beyond 1e-10 / 1e-6 / 1e-3 Å: "
              f"{firsts[1e-10]} / {firsts[1e-6]} / {firsts[1e-3]}; largest {diffs.max():.3g} Å")


if __name__ == "__main__":
    main()
