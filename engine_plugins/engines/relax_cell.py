"""Relax periodic crystals on a ``pseudo_force`` artifact inside the engines, with or without the cell.

* :func:`relax_lammps`: LAMMPS ``minimize`` with pair ``ep/torch``; ``box_relax=True`` adds
  ``fix box/relax tri 0.0`` (all six cell degrees of freedom, zero target pressure; the pressure
  comes from the pair style's global virial, ``fdotr`` over local + ghost atoms, which for these
  models equals ``-dE/d strain``). ``box_relax=False``: the cell is fixed.
* :func:`minimize_openmm_periodic`: OpenMM ``LocalEnergyMinimizer`` with the TorchForce in a
  periodic box; the cell stays fixed (OpenMM's minimizer moves particles only). The box must be at
  least twice the model cutoff thick (the adapter's minimum-image graph).

Cells: both engines want the reduced, lower-triangular form (``a`` along x, ``b`` in the xy plane).
A general cell (rows = cell vectors, right-handed) is rotated into it, relaxed, and rotated back,
so the result is in the caller's frame. Positions in and out are in A; the artifact must be in
A/eV (LAMMPS ``units metal``) or A/kcal/mol (``units real``).

The LAMMPS input, for reference (what :func:`relax_lammps` runs)::

    units metal
    atom_style atomic
    atom_modify map array sort 0 0.0
    boundary p p p
    read_data relax.data                      # triclinic box (xy xz yz tilts)
    mass * 1.0
    pair_style ep/torch model.pt
    pair_coeff * * C Si ...
    neighbor 1.0 bin
    neigh_modify every 1 delay 0 check yes
    fix relax all box/relax tri 0.0 vmax 0.01
    min_style cg
    minimize 0.0 1e-6 2000 20000
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Optional, Sequence, Tuple

import numpy as np

from engine_plugins.engines.relax import LAMMPS_UNITS_FOR_ENERGY, RelaxError
from engine_plugins.export.artifact import Artifact, load_artifact
from engine_plugins.methods.response_matching.relax import RelaxInputError, RelaxResult, check_structure

#: eV/A^3 -> bar (LAMMPS metal pressure unit)
EV_PER_A3_TO_BAR = 1.602176634e6


def _artifact(model: Any) -> Artifact:
    art = model if isinstance(model, Artifact) else load_artifact(model)
    if art.metadata.role != "pseudo_force":
        raise RelaxError(f"model role is '{art.metadata.role}'; relaxation needs a 'pseudo_force' model")
    return art


def reduced_cell(cell: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(lower-triangular cell L, rotation R) with ``cell @ R = L``; R is proper (cell right-handed)."""
    cell = np.asarray(cell, float)
    if np.linalg.det(cell) <= 0:
        raise RelaxInputError("the cell is left-handed or degenerate (det <= 0). Fix: reorder the cell vectors")
    a, b, c = cell
    ax = np.linalg.norm(a)
    ahat = a / ax
    bx = b @ ahat
    by = np.linalg.norm(np.cross(ahat, b))
    cx = c @ ahat
    cy = (b @ c - bx * cx) / by
    cz = np.sqrt(max(c @ c - cx * cx - cy * cy, 0.0))
    lower = np.array([[ax, 0.0, 0.0], [bx, by, 0.0], [cx, cy, cz]])
    rot = np.linalg.solve(cell, lower)
    return lower, rot


def write_triclinic_data(path: Path, positions: np.ndarray, type_index: np.ndarray, ntypes: int,
                         lower: np.ndarray) -> Path:
    """LAMMPS data file (atom_style atomic) in a triclinic box with origin 0 (unit masses)."""
    lines = [f"LAMMPS data file: {len(positions)} atoms (engine_plugins relax_cell)", "",
             f"{len(positions)} atoms", f"{ntypes} atom types", "",
             f"0.0 {lower[0, 0]:.17g} xlo xhi", f"0.0 {lower[1, 1]:.17g} ylo yhi", f"0.0 {lower[2, 2]:.17g} zlo zhi",
             f"{lower[1, 0]:.17g} {lower[2, 0]:.17g} {lower[2, 1]:.17g} xy xz yz", "", "Masses", ""]
    lines += [f"{t + 1} 1.0" for t in range(ntypes)]
    lines += ["", "Atoms # atomic", ""]
    lines += [f"{i + 1} {t + 1} {p[0]:.17g} {p[1]:.17g} {p[2]:.17g}" for i, (t, p) in enumerate(zip(type_index, positions))]
    path.write_text("\n".join(lines) + "\n")
    return path


def relax_lammps(model: Any, symbols: Sequence[str], positions: np.ndarray, cell: np.ndarray,
                 box_relax: bool = True, ftol: float = 1e-6, etol: float = 0.0, max_iterations: int = 2000,
                 min_style: str = "cg", vmax: float = 0.01, box_relax_style: str = "tri 0.0",
                 threads: int = 1, workdir: Optional[str | os.PathLike] = None,
                 atoms_first: bool = False) -> RelaxResult:
    """LAMMPS ``minimize`` of a periodic structure, with ``fix box/relax`` when ``box_relax``.

    ``atoms_first``: one ``minimize`` of the atoms in the given cell before the one with
    ``fix box/relax`` (the usual two-stage recipe). From a strained, noisy crystal, CG with the cell
    free from the first iteration can shear the cell into another, nearly degenerate minimum of a
    learned pseudo-energy (rm_crystals v4, Cu at 0.5 A / 8 % strain: a C2/m cell 0.08 meV/atom above
    fcc); relaxing the atoms first kept it fcc. Off by default: over the 84 noisy crystals of
    ``evaluate-rm --first-seed 1`` and ``2`` it matched 77.4 % against 81.0 % without it (it repairs bcc
    Li, but loses C and CaF2 at 0.3 A and several 0.5 A cases).

    ``vmax`` (largest fractional volume change per iteration) is 0.01, not 0.001: a cell strained by
    8 % did not converge in 1000 iterations at 0.001 and took 340 at 0.01 (rm_crystals v4, LiF at 0.5 A
    noise: the ``steps`` of ``engine-plugins evaluate-rm ... --lammps-vmax 0.001`` vs the default).
    """
    from engine_plugins.engines.lammps_backend import commands, make_lammps

    art = _artifact(model)
    meta = art.metadata
    if cell is None:
        raise RelaxInputError("relax_lammps relaxes periodic structures: give the cell (rows = cell vectors, A)")
    check_structure(art, list(symbols), positions, cell)
    if meta.units["length"] != "angstrom" or meta.units["energy"] not in LAMMPS_UNITS_FOR_ENERGY:
        raise RelaxError("the LAMMPS relaxation needs a model in A and eV or kcal/mol (units metal/real)")
    units = LAMMPS_UNITS_FOR_ENERGY[meta.units["energy"]]
    lower, rot = reduced_cell(cell)
    names = list(meta.type_names)
    index = {t: i for i, t in enumerate(names)}
    x = np.asarray(positions, float) @ rot
    frac = x @ np.linalg.inv(lower)
    x = (frac - np.floor(frac)) @ lower  # inside the box
    shift = x - np.asarray(positions, float) @ rot  # lattice translations applied (undone on return)
    with tempfile.TemporaryDirectory(prefix="ep_relax_cell_") as tmp:
        wd = Path(workdir or tmp)
        wd.mkdir(parents=True, exist_ok=True)
        data = write_triclinic_data(wd / "relax.data", x, np.array([index[s] for s in symbols]), len(names), lower)
        lines = [f"units {units}", "atom_style atomic", "atom_modify map array sort 0 0.0", "boundary p p p",
                 f"read_data {data}", "mass * 1.0",
                 f"pair_style ep/torch {Path(art.path).resolve()} threads {int(threads)}",
                 f"pair_coeff * * {' '.join(names)}", "neighbor 1.0 bin", "neigh_modify every 1 delay 0 check yes",
                 "thermo_style custom step pe press vol", "thermo 0"]
        minimize = f"minimize {etol:g} {ftol:g} {int(max_iterations)} {10 * int(max_iterations)}"
        first = [f"min_style {min_style}", minimize] if atoms_first and box_relax else []
        second = [f"fix ep_box all box/relax {box_relax_style} vmax {vmax:g}"] if box_relax else []
        second += [f"min_style {min_style}", minimize]
        (wd / "in.relax").write_text("\n".join(lines + first + second) + "\n")
        lmp = make_lammps()
        try:
            commands(lmp, lines + first)
            start = int(lmp.get_thermo("step")) if first else 0
            commands(lmp, second)
            n = len(symbols)
            xr = np.ctypeslib.as_array(lmp.gather_atoms("x", 1, 3)).reshape(n, 3).copy()
            image = np.ctypeslib.as_array(lmp.gather_atoms("image", 0, 1)).copy()
            boxlo, boxhi, xy, yz, xz, _, _ = lmp.extract_box()
            lo = np.array(boxlo)
            hi = np.array(boxhi)
            new_lower = np.array([[hi[0] - lo[0], 0.0, 0.0], [xy, hi[1] - lo[1], 0.0], [xz, yz, hi[2] - lo[2]]])
            energy = float(lmp.get_thermo("pe"))
            steps = int(lmp.get_thermo("step"))
            fr = np.ctypeslib.as_array(lmp.gather_atoms("f", 1, 3)).reshape(n, 3)
            fnorm_max = float(np.linalg.norm(fr, axis=1).max())
            press = float(lmp.get_thermo("press"))
        finally:
            lmp.close()
    # unwrap LAMMPS image flags, undo the initial wrap, rotate back to the caller's frame
    img = np.stack([(image & 1023) - 512, ((image >> 10) & 1023) - 512, (image >> 20) - 512], axis=1)
    xr = xr - lo + img @ new_lower
    new_cell = new_lower @ rot.T
    frac_shift = shift @ np.linalg.inv(lower)  # integer lattice translations in the old cell
    pos = (xr - frac_shift @ new_lower) @ rot.T
    return RelaxResult(list(symbols), pos, new_cell, energy, steps, steps - start < max_iterations, fnorm_max, None,
                       {"engine": "lammps", "min_style": min_style, "atoms_first": bool(first),
                        "box_relax": box_relax_style if box_relax else None, "pressure": press,
                        "pressure_units": "bar" if units == "metal" else "atm"})


def minimize_openmm_periodic(model: Any, symbols: Sequence[str], positions: np.ndarray, cell: np.ndarray,
                             tolerance_kj_mol_nm: float = 1e-2, max_iterations: int = 0,
                             platform: str = "Reference") -> RelaxResult:
    """OpenMM ``LocalEnergyMinimizer`` in a fixed periodic box (the cell is not relaxed)."""
    import openmm as mm
    import openmm.unit as u

    from engine_plugins.data.crystals import cell_widths
    from engine_plugins.engines.openmm_backend import create_pseudo_force

    art = _artifact(model)
    if cell is None:
        raise RelaxInputError("minimize_openmm_periodic needs the cell (rows = cell vectors, A)")
    check_structure(art, list(symbols), positions, cell)
    width = float(cell_widths(np.asarray(cell, float)).min())
    if width < 2.0 * art.metadata.cutoff:
        raise RelaxInputError(f"the cell is {width:.2f} A thick in its thinnest direction, less than twice the model "
                              f"cutoff ({2 * art.metadata.cutoff:g} A), which OpenMM's minimum-image graph needs. Fix: "
                              "replicate the cell (e.g. build_crystal(name, cutoff)) or use relax_lammps")
    lower, rot = reduced_cell(cell)
    x = np.asarray(positions, float) @ rot
    system = mm.System()
    for _ in symbols:
        system.addParticle(1.0)
    box_nm = [mm.Vec3(*(lower[k] * 0.1)) for k in range(3)]
    system.setDefaultPeriodicBoxVectors(*box_nm)
    system.addForce(create_pseudo_force(art, types=list(symbols), periodic=True))
    ctx = mm.Context(system, mm.VerletIntegrator(0.001), mm.Platform.getPlatformByName(platform))
    ctx.setPeriodicBoxVectors(*box_nm)
    ctx.setPositions(x * 0.1)
    mm.LocalEnergyMinimizer.minimize(ctx, tolerance_kj_mol_nm, max_iterations)
    state = ctx.getState(getPositions=True, getEnergy=True, getForces=True)
    xr = state.getPositions(asNumpy=True).value_in_unit(u.angstrom)
    f = state.getForces(asNumpy=True).value_in_unit(u.kilojoule_per_mole / u.angstrom)
    e_kj = state.getPotentialEnergy().value_in_unit(u.kilojoule_per_mole)
    from engine_plugins.units import energy_factor

    to_model = energy_factor("kJ/mol", art.metadata.units["energy"])
    return RelaxResult(list(symbols), xr @ rot.T, np.asarray(cell, float).copy(), e_kj * to_model, -1, True,
                       float(np.linalg.norm(f, axis=1).max() * to_model), None,
                       {"engine": "openmm", "platform": platform, "cell": "fixed"})


__all__ = ["EV_PER_A3_TO_BAR", "minimize_openmm_periodic", "reduced_cell", "relax_lammps", "write_triclinic_data"]
