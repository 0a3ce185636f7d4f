"""Write LAMMPS data files (atom_style atomic) for built-in systems, with optional velocities."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from engine_plugins.data.systems import ExampleSystem


def write_lammps_data(path: str | Path, sysdef: ExampleSystem, velocities: np.ndarray | None = None,
                      padding: float = 0.0) -> Path:
    """Positions in Å; velocities in the LAMMPS units the script will use (Å/fs for real, Å/ps for metal).

    Orthorhombic periodic boxes only; without a box a bounding box with ``padding`` Å is written.
    """
    path = Path(path)
    pos = np.asarray(sysdef.positions, float)
    if sysdef.box is not None:
        if np.abs(sysdef.box - np.diag(np.diag(sysdef.box))).max() > 0:
            raise ValueError("write_lammps_data writes orthorhombic boxes only")
        lo, hi = np.zeros(3), np.diag(sysdef.box)
    else:
        lo, hi = pos.min(0) - padding, pos.max(0) + padding
    lines = [f"LAMMPS data file: {sysdef.n_atoms} atoms of {' '.join(sysdef.type_names)} (engine_plugins)", "",
             f"{sysdef.n_atoms} atoms", f"{len(sysdef.type_names)} atom types", ""]
    for d, ax in enumerate("xyz"):
        lines.append(f"{lo[d]:.16g} {hi[d]:.16g} {ax}lo {ax}hi")
    lines += ["", "Masses", ""]
    lines += [f"{i + 1} {m:.16g}  # {n}" for i, (m, n) in enumerate(zip(sysdef.masses, sysdef.type_names))]
    lines += ["", "Atoms # atomic", ""]
    lines += [f"{i + 1} {t + 1} {p[0]:.17g} {p[1]:.17g} {p[2]:.17g}" for i, (t, p) in enumerate(zip(sysdef.types, pos))]
    if velocities is not None:
        lines += ["", "Velocities", ""]
        lines += [f"{i + 1} {v[0]:.17g} {v[1]:.17g} {v[2]:.17g}" for i, v in enumerate(np.asarray(velocities, float))]
    path.write_text("\n".join(lines) + "\n")
    return path
