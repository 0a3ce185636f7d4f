"""Relax or denoise a structure with a ``pseudo_force`` artifact inside the engines' own machinery.

GPFF/RM pseudo-forces point from noisy geometries back to valid ones, so the engines' minimizers
and a fixed-step update turn noise into structures:

* ``denoise`` (direct denoising, GPFF's ``x <- x + step * F``): in OpenMM a ``CustomIntegrator``
  (``x = x + c*f*free``), in LAMMPS an input-script recipe (below) built on ``fix nve``;
* ``minimize``: OpenMM ``LocalEnergyMinimizer`` and LAMMPS ``minimize`` on the pseudo-energy.

Fixed atoms are held by each engine's usual means: a per-DOF mask in the OpenMM integrator and
zero mass for the minimizer; ``fix setforce 0 0 0`` on a group in LAMMPS.

The LAMMPS denoising recipe: with unit masses and zero velocities at the start of a step,
velocity Verlet moves ``x += dt^2 * ftm2v / (2 m) * f``; choosing ``dt`` so that this factor is
``step`` (in the model's units) and zeroing the velocities after every ``run 1`` gives exactly
one denoising update per step::

    mass * 1.0
    velocity all set 0 0 0
    fix freeze FIXED setforce 0.0 0.0 0.0      # optional: fixed atoms
    fix dn all nve
    timestep DT                                  # DT = sqrt(2 * step / ftm2v)
    variable k loop NFE
    label loop
    run 1 pre no post no
    velocity all set 0 0 0
    next k
    jump SELF loop

Positions in and out are in Å (the artifact's length unit must be Å for the LAMMPS path, as the
``metal``/``real`` unit styles it uses are).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from engine_plugins.export.artifact import Artifact, load_artifact
from engine_plugins.units import OPENMM_UNITS, energy_factor, length_factor

#: force -> mass * length / time^2 conversion of LAMMPS unit styles (LAMMPS's force->ftm2v)
LAMMPS_FTM2V = {"metal": 1.0 / 1.0364269e-4, "real": 1.0 / 48.88821291 / 48.88821291}
LAMMPS_UNITS_FOR_ENERGY = {"eV": "metal", "kcal/mol": "real"}


class RelaxError(ValueError):
    """A relaxation cannot run as asked (message says why and the fix)."""


def _artifact(model: str | os.PathLike | Artifact) -> Artifact:
    art = model if isinstance(model, Artifact) else load_artifact(model)
    if art.metadata.role != "pseudo_force":
        raise RelaxError(f"model role is '{art.metadata.role}'; relaxation needs a 'pseudo_force' model")
    return art


def _check_positions(positions: np.ndarray, types: Sequence[str]) -> np.ndarray:
    pos = np.asarray(positions, dtype=float)
    if pos.ndim != 2 or pos.shape[1] != 3 or len(pos) != len(types) or len(pos) == 0:
        raise RelaxError(f"positions must be [N, 3] with N = len(types) = {len(types)} > 0; got {pos.shape}")
    if not np.isfinite(pos).all():
        raise RelaxError("positions contain NaN or inf; give finite coordinates (Å)")
    return pos


# ----------------------------------------------------------------------------------------- OpenMM
def _openmm_context(art: Artifact, types: Sequence[str], pos: np.ndarray, integrator, fixed: np.ndarray | None):
    import openmm as mm

    from engine_plugins.engines.openmm_backend import create_pseudo_force

    system = mm.System()
    for i in range(len(types)):
        system.addParticle(0.0 if fixed is not None and fixed[i] else 1.0)
    system.addForce(create_pseudo_force(art, types=list(types), periodic=False))
    ctx = mm.Context(system, integrator, mm.Platform.getPlatformByName("Reference"))
    ctx.setPositions(pos * 0.1)
    return ctx


def _openmm_positions(ctx) -> np.ndarray:
    import openmm.unit as u

    return ctx.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(u.angstrom)


def denoise_openmm(model: str | os.PathLike | Artifact, types: Sequence[str], positions: np.ndarray, nfe: int,
                   step: float = 0.5, fixed: np.ndarray | None = None) -> np.ndarray:
    """``nfe`` direct-denoising updates ``x <- x + step * F`` (model units) in an OpenMM CustomIntegrator."""
    import openmm as mm

    art = _artifact(model)
    pos = _check_positions(positions, types)
    nm_to_model = length_factor(OPENMM_UNITS["length"], art.metadata.units["length"])
    e_to_kj = energy_factor(art.metadata.units["energy"], OPENMM_UNITS["energy"])
    integ = mm.CustomIntegrator(0.0)
    integ.addGlobalVariable("c", step / (e_to_kj * nm_to_model ** 2))
    integ.addPerDofVariable("free", 1.0)
    integ.addComputePerDof("x", "x + c*f*free")
    ctx = _openmm_context(art, types, pos, integ, None)
    if fixed is not None:
        integ.setPerDofVariableByName("free", [mm.Vec3(*([0.0] * 3 if f else [1.0] * 3)) for f in fixed])
    integ.step(int(nfe))
    return _openmm_positions(ctx)


def minimize_openmm(model: str | os.PathLike | Artifact, types: Sequence[str], positions: np.ndarray,
                    tolerance_kj_mol_nm: float = 1e-3, max_iterations: int = 0,
                    fixed: np.ndarray | None = None) -> np.ndarray:
    """OpenMM ``LocalEnergyMinimizer`` on the pseudo-energy; fixed atoms get zero mass (not moved)."""
    import openmm as mm

    art = _artifact(model)
    pos = _check_positions(positions, types)
    ctx = _openmm_context(art, types, pos, mm.VerletIntegrator(0.001), None if fixed is None else np.asarray(fixed))
    mm.LocalEnergyMinimizer.minimize(ctx, tolerance_kj_mol_nm, max_iterations)
    return _openmm_positions(ctx)


# ----------------------------------------------------------------------------------------- LAMMPS
def _lammps_setup(art: Artifact, types: Sequence[str], pos: np.ndarray, fixed: np.ndarray | None,
                  workdir: Path) -> tuple[list[str], str]:
    from engine_plugins.data.lammps_data import write_lammps_data
    from engine_plugins.data.systems import ExampleSystem

    if art.metadata.units["length"] != "angstrom":
        raise RelaxError("the LAMMPS relaxation path needs a model in Å (units metal/real)")
    units = LAMMPS_UNITS_FOR_ENERGY.get(art.metadata.units["energy"])
    if units is None:
        raise RelaxError(f"no LAMMPS unit style for model energy unit '{art.metadata.units['energy']}'")
    names = list(dict.fromkeys(types))
    sysdef = ExampleSystem(pos, None, np.array([names.index(t) for t in types]), names, [1.0] * len(names))
    data = write_lammps_data(workdir / "relax.data", sysdef, padding=20.0)
    # no spatial sorting: 1-rank node order = input order (matters only for order-dependent reference
    # models such as the analytic quadratic; learned models are permutation-equivariant)
    lines = [f"units {units}", "atom_style atomic", "atom_modify map array sort 0 0.0", "boundary f f f",
             f"read_data {data}", "mass * 1.0", f"pair_style ep/torch {art.path}",
             f"pair_coeff * * {' '.join(names)}", "neighbor 2.0 bin", "neigh_modify every 1 delay 0 check yes",
             "thermo 0"]
    if fixed is not None and np.any(fixed):
        ids = " ".join(str(i + 1) for i in np.flatnonzero(fixed))
        lines += [f"group fixed id {ids}", "fix freeze fixed setforce 0.0 0.0 0.0"]
    return lines, units


def _lammps_positions(lmp, n: int) -> np.ndarray:
    x = np.ctypeslib.as_array(lmp.gather_atoms("x", 1, 3)).reshape(n, 3)
    return x.copy()


def denoise_lammps(model: str | os.PathLike | Artifact, types: Sequence[str], positions: np.ndarray, nfe: int,
                   step: float = 0.5, fixed: np.ndarray | None = None, workdir: str | os.PathLike | None = None
                   ) -> np.ndarray:
    """``nfe`` direct-denoising updates in LAMMPS with the ``fix nve`` recipe of this module's docstring."""
    import tempfile

    from engine_plugins.engines.lammps_backend import make_lammps

    art = _artifact(model)
    pos = _check_positions(positions, types)
    with tempfile.TemporaryDirectory() as tmp:
        wd = Path(workdir or tmp)
        lines, units = _lammps_setup(art, types, pos, fixed, wd)
        dt = math.sqrt(2.0 * step / LAMMPS_FTM2V[units])
        lines += ["velocity all set 0.0 0.0 0.0", "fix dn all nve", f"timestep {dt:.17g}",
                  f"variable k loop {int(nfe)}", "run 0", "label loop", "run 1 pre no post no",
                  "velocity all set 0.0 0.0 0.0", "next k", "jump SELF loop"]
        (wd / "in.denoise").write_text("\n".join(lines) + "\n")
        lmp = make_lammps()
        try:
            lmp.file(str(wd / "in.denoise"))
            return _lammps_positions(lmp, len(pos))
        finally:
            lmp.close()


def minimize_lammps(model: str | os.PathLike | Artifact, types: Sequence[str], positions: np.ndarray,
                    ftol: float = 1e-8, max_iterations: int = 10000, fixed: np.ndarray | None = None,
                    min_style: str = "cg") -> np.ndarray:
    """LAMMPS ``minimize`` (``min_style`` cg/fire/...) on the pseudo-energy; fixed atoms by ``fix setforce``."""
    import tempfile

    from engine_plugins.engines.lammps_backend import make_lammps

    art = _artifact(model)
    pos = _check_positions(positions, types)
    with tempfile.TemporaryDirectory() as tmp:
        lines, _ = _lammps_setup(art, types, pos, fixed, Path(tmp))
        lines += [f"min_style {min_style}", f"minimize 0.0 {ftol:g} {max_iterations} {10 * max_iterations}"]
        lmp = make_lammps()
        try:
            for line in lines:
                lmp.command(line)
            return _lammps_positions(lmp, len(pos))
        finally:
            lmp.close()
