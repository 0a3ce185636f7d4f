"""Standalone relaxation of periodic crystals on a ``pseudo_force`` artifact (no engine).

:class:`PseudoForceCalculator` is an ASE calculator around any periodic ``pseudo_force`` artifact:
energy, forces and, when the artifact exports ``energy_forces_virial`` (RM models do), the stress
``-W / V`` (eV/A^3, ASE's sign). The graph is a full periodic neighbour list (ASE's
``primitive_neighbor_list``, every image within the cutoff, so any cell size works).

:func:`relax_structure` runs ASE's FIRE on the atoms, with the cell through ASE's
``UnitCellFilter`` (``relax_cell=True``, zero target pressure) or fixed (``relax_cell=False``).
It stops when every atom force and every cell-filter force is below ``fmax`` (the filter's cell
forces are the virial ``-V sigma`` divided by N, eV per atom) or after ``max_steps`` steps.

:func:`relax_with_kicks` is response matching's generation recipe (relax -> kick -> relax): after
the first relaxation, kick the best structure so far with Gaussian displacements, relax again, and
keep the result when its pseudo-energy is lower (greedy basin hopping). It wraps any relaxation,
standalone or in an engine, because a single relaxation stops in the first basin it meets, and
at large starting noise that is often not the prototype's.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional, Sequence

import numpy as np
import torch

from engine_plugins.export.artifact import Artifact, load_artifact


class RelaxInputError(ValueError):
    """A relaxation input that cannot work (the message names it and the fix)."""


def _artifact(model: Any) -> Artifact:
    art = model if isinstance(model, Artifact) else load_artifact(model)
    if art.metadata.role != "pseudo_force":
        raise RelaxInputError(f"model role is '{art.metadata.role}'; relaxation needs a 'pseudo_force' model")
    return art


def check_structure(art: Artifact, symbols: Sequence[str], positions: np.ndarray, cell: Optional[np.ndarray]) -> None:
    """Clear errors for what the model cannot take: unknown elements, a cell given to a non-periodic
    model, no cell for a periodic one, NaN/inf, an empty or degenerate structure."""
    meta = art.metadata
    pos = np.asarray(positions, float)
    if len(symbols) == 0:
        raise RelaxInputError("the structure is empty (no atoms)")
    if pos.shape != (len(symbols), 3):
        raise RelaxInputError(f"positions must be [N, 3] with N = {len(symbols)}; got {pos.shape}")
    if not np.isfinite(pos).all():
        raise RelaxInputError("positions contain NaN or inf; give finite coordinates (A)")
    unknown = sorted(set(symbols) - set(meta.type_names))
    if unknown:
        raise RelaxInputError(f"element(s) {', '.join(unknown)} are not known to the model (it knows "
                              f"{', '.join(meta.type_names)}). Fix: use a model trained with them, or drop those atoms")
    if cell is not None and meta.periodicity == "nonperiodic":
        raise RelaxInputError("the model is non-periodic (trained on molecules in vacuum) but a periodic cell was "
                              "given. Fix: use a periodic model (e.g. exported_models/rm_crystals.pt) or drop the cell")
    if cell is None and meta.periodicity == "periodic":
        raise RelaxInputError("the model is periodic (trained on crystals) but the structure has no cell. Fix: give "
                              "the cell (rows = cell vectors, A)")
    if cell is not None:
        c = np.asarray(cell, float)
        if c.shape != (3, 3) or not np.isfinite(c).all() or abs(np.linalg.det(c)) < 1e-6:
            raise RelaxInputError(f"cell must be a finite, non-degenerate 3x3 matrix (rows = cell vectors); got {c!r}")


class PseudoForceCalculator:
    """ASE calculator (energy, forces, stress) for a periodic or non-periodic ``pseudo_force`` artifact.

    Built lazily as a subclass of ``ase.calculators.calculator.Calculator`` by :func:`make_calculator`.
    """


def make_calculator(model: Any, device: str = "cpu"):
    """An ASE calculator for ``model`` (path or :class:`Artifact`); counts evaluations in ``.nfe``."""
    from ase.calculators.calculator import Calculator, all_changes

    from engine_plugins.methods.response_matching.noise import periodic_neighbor_list

    art = _artifact(model)
    meta = art.metadata
    module = art.module.to(device)
    dtype = getattr(torch, meta.dtype)
    has_virial = hasattr(module, "energy_forces_virial")

    class _Calc(Calculator, PseudoForceCalculator):
        implemented_properties = ["energy", "free_energy", "forces"] + (["stress"] if has_virial else [])

        def __init__(self) -> None:
            super().__init__()
            self.artifact = art
            self.nfe = 0

        def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
            super().calculate(atoms, properties, system_changes)
            a = self.atoms
            periodic = bool(a.pbc.any())
            cell = np.asarray(a.cell.array) if periodic else None
            check_structure(art, a.get_chemical_symbols(), a.positions, cell)
            index = {t: i for i, t in enumerate(meta.type_names)}
            types = torch.tensor([index[s] for s in a.get_chemical_symbols()], dtype=torch.long, device=device)
            x = torch.tensor(a.positions, dtype=torch.float64)
            if periodic:
                c = torch.tensor(cell, dtype=torch.float64)
                ei, sc = periodic_neighbor_list(x, c, meta.cutoff, tuple(bool(p) for p in a.pbc))
                es = sc @ c
            else:
                from engine_plugins.nn.graph import neighbor_graph

                ei, es = neighbor_graph(x, float(meta.cutoff))
            args = (x.to(device, dtype), types, ei.to(device), es.to(device, dtype), len(a))
            # no TorchScript profiling: graph sizes change every step, and re-optimising for each new
            # shape costs seconds per call on a CPU (measured); plain execution is 20-40 ms here
            with torch.jit.optimized_execution(False):
                if has_virial:
                    e, f, w = module.energy_forces_virial(*args)
                else:
                    e, f = module(*args)
                    w = None
            self.nfe += 1
            energy = float(e.detach().double().sum())
            self.results["energy"] = self.results["free_energy"] = energy
            self.results["forces"] = f.detach().double().cpu().numpy()
            if w is not None and periodic:
                s = -w.detach().double().cpu().numpy() / a.get_volume()
                s = 0.5 * (s + s.T)
                self.results["stress"] = np.array([s[0, 0], s[1, 1], s[2, 2], s[1, 2], s[0, 2], s[0, 1]])

    return _Calc()


@dataclass
class RelaxResult:
    """Relaxed structure (positions A, cell A) and how the run went."""

    symbols: list
    positions: np.ndarray
    cell: Optional[np.ndarray]
    energy: float
    steps: int
    converged: bool
    fmax: float  # largest atom force at the end, eV/A
    smax: Optional[float]  # largest stress component at the end, eV/A^3
    info: Dict[str, Any] = field(default_factory=dict)

    def to_structure(self, name: str = ""):
        from engine_plugins.data.molecules import Structure

        return Structure(self.symbols, self.positions, self.cell, pbc=(self.cell is not None,) * 3, name=name)


def relax_structure(model: Any, symbols: Sequence[str], positions: np.ndarray, cell: Optional[np.ndarray] = None,
                    relax_cell: bool = True, fmax: float = 0.01, max_steps: int = 1000, maxstep: float = 0.2,
                    device: str = "cpu") -> RelaxResult:
    """FIRE relaxation (ASE) of one structure on the pseudo-energy; cell by ``UnitCellFilter``."""
    from ase import Atoms
    from ase.optimize import FIRE

    art = _artifact(model)
    check_structure(art, list(symbols), positions, cell)
    if relax_cell and cell is None:
        raise RelaxInputError("relax_cell=True needs a periodic cell; pass relax_cell=False for molecules")
    atoms = Atoms(symbols=list(symbols), positions=np.asarray(positions, float),
                  cell=None if cell is None else np.asarray(cell, float), pbc=cell is not None)
    calc = make_calculator(art, device)
    atoms.calc = calc
    target = atoms
    if relax_cell:
        # UnitCellFilter, not FrechetCellFilter: the latter's scipy expm/logm per step cost ~0.4 s on a
        # loaded 2-core machine (OpenBLAS threads), 10x the model evaluation
        from ase.filters import UnitCellFilter

        target = UnitCellFilter(atoms)
    opt = FIRE(target, logfile=None, maxstep=maxstep)
    converged = bool(opt.run(fmax=fmax, steps=max_steps))
    f = atoms.get_forces()
    smax = None
    if cell is not None and "stress" in calc.implemented_properties:
        smax = float(np.abs(atoms.get_stress()).max())
    return RelaxResult(list(symbols), atoms.positions.copy(), None if cell is None else atoms.cell.array.copy(),
                       float(atoms.get_potential_energy()), int(opt.nsteps), converged,
                       float(np.linalg.norm(f, axis=1).max()), smax, {"nfe": calc.nfe, "optimizer": "ase.FIRE",
                                                                       "cell_filter": "UnitCellFilter" if relax_cell else None})


def relax_with_kicks(relax: Callable[[np.ndarray, Optional[np.ndarray]], RelaxResult], positions: np.ndarray,
                     cell: Optional[np.ndarray], kicks: int = 0, kick_size: float = 0.2, seed: int = 0,
                     kick_strain: float = 0.0) -> RelaxResult:
    """Relax, then ``kicks`` times: displace the best structure so far, relax, keep it if lower.

    ``relax(positions, cell)`` is any relaxation returning a :class:`RelaxResult` (e.g. a
    ``functools.partial`` of :func:`relax_structure` or of the LAMMPS ``relax_lammps``);
    ``kick_size`` is the standard deviation (A) of each Cartesian kick component. ``kick_strain``
    (default 0: the cell is not kicked) also strains the cell at each kick by a random symmetric
    strain of that standard deviation per component, fractional coordinates kept, so that a search
    can leave a basin along a cell-shape path (a shear, the Bain path). ``info`` of the result
    records every relaxation's energy, how many kicks were accepted and the steps summed over all
    relaxations.
    """
    if kicks < 0 or not (kick_size > 0.0 and np.isfinite(kick_size)):
        raise RelaxInputError(f"kicks must be >= 0 and kick_size > 0 A (got kicks={kicks}, kick_size={kick_size}); "
                              "fix: e.g. kicks=4, kick_size=0.2")
    if not (kick_strain >= 0.0 and np.isfinite(kick_strain)) or (kick_strain > 0 and cell is None):
        raise RelaxInputError(f"kick_strain={kick_strain}: needs a value >= 0 and, when > 0, a periodic cell; "
                              "fix: kick_strain=0 for molecules, e.g. 0.05 for crystals")
    best = relax(np.asarray(positions, float), None if cell is None else np.asarray(cell, float))
    energies = [float(best.energy)]
    total_steps = int(best.steps)
    accepted = 0
    rng = np.random.default_rng(seed)
    for _ in range(int(kicks)):
        start = best.positions + rng.normal(0.0, kick_size, size=best.positions.shape)
        start_cell = best.cell
        if kick_strain > 0:
            eps = rng.normal(0.0, kick_strain, (3, 3))
            start_cell = best.cell @ (np.eye(3) + 0.5 * (eps + eps.T))
            start = np.linalg.solve(best.cell.T, start.T).T @ start_cell  # fractional coordinates kept
        trial = relax(start, start_cell)
        energies.append(float(trial.energy))
        total_steps += int(trial.steps)
        if np.isfinite(trial.energy) and trial.energy < best.energy:
            best, accepted = trial, accepted + 1
    best.info.update({"kicks": int(kicks), "kick_size": float(kick_size), "kick_strain": float(kick_strain),
                      "kick_seed": int(seed),
                      "kicks_accepted": accepted, "energies": energies, "total_steps": total_steps})
    return best


__all__ = ["PseudoForceCalculator", "RelaxInputError", "RelaxResult", "check_structure", "make_calculator",
           "relax_structure", "relax_with_kicks"]
