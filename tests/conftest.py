"""Shared pytest fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def lammps_plugin() -> Path:
    """The LAMMPS plugin epplugin.so, built once per session if the sources changed."""
    from engine_plugins.engines.lammps_build import build_plugin

    return build_plugin()
