"""Built-in example systems, so that every example and test starts from the same real geometry."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class ExampleSystem:
    """Positions (Å), box (Å, rows = cell vectors, or None), per-atom type indices and names, masses."""

    positions: np.ndarray
    box: np.ndarray | None
    types: np.ndarray
    type_names: list[str]
    masses: list[float]

    @property
    def n_atoms(self) -> int:
        return len(self.positions)

    @property
    def atom_type_names(self) -> list[str]:
        return [self.type_names[t] for t in self.types]

    def openmm_system(self):
        """An empty ``openmm.System`` with these particles (masses) and the box (nm), no forces."""
        import openmm as mm

        system = mm.System()
        if self.box is not None:
            system.setDefaultPeriodicBoxVectors(*[mm.Vec3(*row) * 0.1 for row in self.box])
        for t in self.types:
            system.addParticle(self.masses[t])
        return system


#: Lennard-Jones parameters for argon and neon (kcal/mol, Å): the built-in noble-gas example.
NOBLE_GAS_LJ = {"Ar": (0.238, 3.405, 39.948), "Ne": (0.0711, 2.78, 20.180)}


def fcc_lattice(n_cells: int | tuple[int, int, int], a: float = 5.26, jitter: float = 0.0,
                seed: int = 0, type_names: tuple[str, ...] = ("Ar",),
                fractions: tuple[float, ...] | None = None) -> ExampleSystem:
    """An fcc crystal of ``4 * nx * ny * nz`` atoms (lattice constant ``a`` Å), optionally jittered.

    With several type names, types are drawn at random with ``fractions`` (uniform by default).
    """
    nx, ny, nz = (n_cells, n_cells, n_cells) if isinstance(n_cells, int) else n_cells
    rng = np.random.default_rng(seed)
    grid = np.array([[i, j, k] for i in range(nx) for j in range(ny) for k in range(nz)], float)
    basis = np.array([[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    pos = (grid[:, None, :] + basis[None]).reshape(-1, 3) * a
    box = np.diag([nx * a, ny * a, nz * a])
    if jitter:
        pos = pos + rng.normal(0.0, jitter, pos.shape)
    pos = np.mod(pos, np.diag(box))
    k = len(type_names)
    types = rng.choice(k, size=len(pos), p=fractions) if k > 1 else np.zeros(len(pos), dtype=int)
    masses = [NOBLE_GAS_LJ.get(t, (0, 0, 1.0))[2] for t in type_names]
    return ExampleSystem(pos, box, types.astype(np.int64), list(type_names), masses)
