"""Tiny real reference runs shared by test_simulate.py and test_trajectories.py (one of each per
pytest process, in a temporary directory removed at exit)."""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

_ROOT = Path(tempfile.mkdtemp(prefix="ep_md_runs_"))
atexit.register(shutil.rmtree, _ROOT, ignore_errors=True)

#: the fast material at a high temperature: many boundary crossings in 1 ps
TRANSPORT_MATERIAL = "Li0.25-s1.55"
TRANSPORT_T = 1200.0
WATER_T = 300.0


@functools.lru_cache(maxsize=None)
def transport_run() -> Path:
    """One tiny LAMMPS transport case with LAMMPS's own unwrapped coordinates dumped too."""
    from engine_plugins.data.simulate import TRANSPORT_PRESETS, simulate_transport

    out = _ROOT / "transport"
    simulate_transport(out, materials=[TRANSPORT_MATERIAL], temperatures=[TRANSPORT_T],
                       settings=replace(TRANSPORT_PRESETS["tiny"], unwrapped_reference=True), progress=False)
    return out


@functools.lru_cache(maxsize=None)
def water_run() -> Path:
    """One tiny OpenMM TIP3P water case (DCD + PDB)."""
    from engine_plugins.data.simulate import CG_PRESETS, simulate_cg

    out = _ROOT / "water"
    simulate_cg(out, temperatures=[WATER_T], settings=replace(CG_PRESETS["tiny"], threads=1), progress=False)
    return out
