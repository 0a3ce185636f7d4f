"""Learned rollouts in LAMMPS with ``fix ep/propagate`` (one learned jump of Δτ per timestep).

* :func:`propagate_commands`: the ``pair_style zero`` / ``timestep`` / ``fix ep/propagate`` lines for
  an artifact (Δτ converted to the LAMMPS time unit from the metadata).
* :func:`run_lammps_propagate`: ``n_jumps`` jumps of a configuration on 1 rank in this process or on
  N ranks under ``mpiexec``; returns every frame (unwrapped, atoms in input order) and the retry
  counters the fix reports (``f_ID[1]``, ``f_ID[2]``).

Positions, box and the returned frames are in LAMMPS length units (Å for metal and real).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from engine_plugins.engines import lammps_backend as lb
from engine_plugins.units import LAMMPS_UNITS, time_factor

FIX_ID = "ep_jump"


def read_artifact_metadata(path: str | os.PathLike) -> dict:
    """The metadata JSON of an artifact, without loading its TorchScript code."""
    import json
    import zipfile

    from engine_plugins.export.metadata import METADATA_FILE

    with zipfile.ZipFile(path) as zf:
        name = next(n for n in zf.namelist() if n.endswith("extra/" + METADATA_FILE))
        return json.loads(zf.read(name))


def timestep_for(model_path: str | os.PathLike, units: str = "metal") -> float:
    """The LAMMPS ``timestep`` (in the time unit of ``units``) that equals the model's Δτ."""
    meta = read_artifact_metadata(model_path)
    return float(meta["role_fields"]["delta_tau"]) * time_factor(meta["units"]["time"], LAMMPS_UNITS[units]["time"])


def propagate_commands(model_path: str | os.PathLike, type_names: Sequence[str], temperature: float, seed: int,
                       *, units: str = "metal", corrector: str | os.PathLike | None = None,
                       fix_id: str = FIX_ID, group: str = "all", extra: str = "") -> list[str]:
    """Input lines after ``read_data``: a zero pair style for the fix's neighbor list (cutoff from the
    metadata), ``timestep`` = Δτ, and the fix. ``extra`` is appended to the fix line (keywords)."""
    cutoffs = [float(read_artifact_metadata(p)["cutoff"]) for p in (model_path, corrector) if p is not None]
    line = (f"fix {fix_id} {group} ep/propagate {Path(model_path).resolve()} types {' '.join(type_names)} "
            f"temp {temperature!r} seed {int(seed)}")
    if corrector is not None:
        line += f" corrector {Path(corrector).resolve()}"
    if extra:
        line += " " + extra
    return [f"pair_style zero {max(cutoffs)!r}", "pair_coeff * *",
            f"timestep {timestep_for(model_path, units)!r}", line]


@dataclass
class PropagateRun:
    """Frames 0..n_jumps (LAMMPS length units, unwrapped, input atom order) and the fix's counters."""

    frames: np.ndarray            # [n_jumps + 1, N, 3]
    images: np.ndarray            # [n_jumps + 1, N, 3] image flags
    retries_total: np.ndarray     # f_ID[1] after each step, [n_jumps + 1]
    retries_last: np.ndarray      # f_ID[2] after each step
    log: str = ""
    extra: dict = field(default_factory=dict)


def _read_dump(path: Path, natoms: int) -> tuple[np.ndarray, np.ndarray]:
    frames, images = [], []
    lines = path.read_text().splitlines()
    i = 0
    while i < len(lines):
        if lines[i].startswith("ITEM: ATOMS"):
            table = np.array([ln.split() for ln in lines[i + 1:i + 1 + natoms]], dtype=np.float64)
            if table.shape != (natoms, 7) or not np.array_equal(table[:, 0], np.arange(1, natoms + 1)):
                raise lb.LammpsError(f"unexpected dump file {path}")
            frames.append(table[:, 1:4])
            images.append(table[:, 4:7].astype(np.int64))
            i += 1 + natoms
        else:
            i += 1
    return np.array(frames), np.array(images)


def _read_counters(path: Path) -> np.ndarray:
    rows = [ln.split() for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    return np.array(rows, dtype=np.float64).reshape(-1, 3)


def run_lammps_propagate(model_path: str | os.PathLike, positions: np.ndarray, types: np.ndarray,
                         box: np.ndarray, type_names: Sequence[str], masses: Sequence[float], temperature: float,
                         seed: int, n_jumps: int, *, nprocs: int = 1, units: str = "metal",
                         corrector: str | os.PathLike | None = None, extra: str = "",
                         in_process: bool | None = None, workdir: str | os.PathLike | None = None) -> PropagateRun:
    """``n_jumps`` learned jumps of a configuration in LAMMPS (``types`` 0-based into ``type_names``).

    Runs in this process (1 rank) or under ``mpiexec -n nprocs`` with the same input script; the
    trajectory comes from a dump of unwrapped coordinates (``%.17g``) every step.
    """
    in_process = (nprocs == 1) if in_process is None else in_process
    with tempfile.TemporaryDirectory(prefix="ep_propagate_") as tmp:
        wd = Path(workdir) if workdir is not None else Path(tmp)
        wd.mkdir(parents=True, exist_ok=True)
        lb.write_data_file(wd / "data.lmp", positions, types, box, len(type_names), masses)
        lines = [f"units {units}", "atom_style atomic", "boundary p p p", "atom_modify map array",
                 f"read_data {wd.resolve() / 'data.lmp'}",
                 *propagate_commands(model_path, type_names, temperature, seed, units=units, corrector=corrector,
                                     extra=extra),
                 f"thermo_style custom step f_{FIX_ID}[1] f_{FIX_ID}[2] f_{FIX_ID}[3]", "thermo 1",
                 f"dump ep_traj all custom 1 {wd.resolve() / 'traj.dump'} id xu yu zu ix iy iz",
                 "dump_modify ep_traj format float %.17g sort id",
                 f"fix ep_counters all print 1 \"$(step) $(f_{FIX_ID}[1]) $(f_{FIX_ID}[2])\" "
                 f"file {wd.resolve() / 'counters.txt'} screen no",
                 f"run {int(n_jumps)}"]
        log = ""
        if in_process:
            if nprocs != 1:
                raise ValueError("in-process LAMMPS runs on 1 rank; use in_process=False for more")
            lmp = lb.make_lammps(["-screen", "none", "-log", str(wd / "log.lammps"), "-nocite"])
            try:
                lb.commands(lmp, lines)
            finally:
                lmp.close()
            log = (wd / "log.lammps").read_text(errors="replace")
        else:
            (wd / "in.propagate").write_text("\n".join(lines) + "\n")
            log = lb.run_lammps_script(wd / "in.propagate", nprocs, workdir=wd).log
        frames, images = _read_dump(wd / "traj.dump", len(positions))
        counters = _read_counters(wd / "counters.txt")
        # fix print writes at setup (step 0) and at the end of every step: one row per step
        total, last = np.zeros(int(n_jumps) + 1), np.zeros(int(n_jumps) + 1)
        steps = counters[:, 0].astype(np.int64)
        total[steps], last[steps] = counters[:, 1], counters[:, 2]
        return PropagateRun(frames, images, total, last, log)
