"""The demo (``make demo``): the same NVE MD of built-in LJ argon in LAMMPS and OpenMM, side by side.

Six runs from one initial state (positions from an fcc start, seeded Maxwell-Boltzmann velocities),
velocity Verlet in both engines (LAMMPS ``fix nve``; an OpenMM CustomIntegrator with the same
update), float64 throughout:

* the engines' own force fields: LAMMPS ``lj/cut`` and OpenMM ``NonbondedForce``;
* ``exported_models/lj_argon.pt`` (LJ as a package model) through ``pair_style ep/torch`` and a TorchForce;
* ``exported_models/nequip_argon.pt`` (a small NequIP fitted to OpenMM LJ argon, eV/Å) in both.

Prints the potential energies side by side, writes ``energies.csv``, ``summary.json`` and a PNG plot.

With exported_models/propagator_cg_water.pt present, a learned-propagation step follows
(``engine_plugins.methods.propagator.demo_step``): a short all-atom OpenMM water reference, the shipped
CG propagator (+ corrector) in OpenMM and LAMMPS from its first frame, MSD/RDF vs the reference in
``propagation.png`` and ``summary.json`` (``learned_propagation``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from engine_plugins.data.lammps_data import write_lammps_data
from engine_plugins.data.reference_md import lj_openmm_system
from engine_plugins.data.systems import NOBLE_GAS_LJ, ExampleSystem, fcc_lattice

REPO = Path(__file__).resolve().parent.parent
MODELS = REPO / "exported_models"
KB_KCAL = 0.0019872042586408316  # kcal/mol/K (LAMMPS real)
TIMESTEP_FS = 4.0
THERMO_EVERY = 10


def initial_state(seed: int = 7, temperature: float = 120.0) -> tuple[ExampleSystem, np.ndarray]:
    """256 argon atoms and Maxwell-Boltzmann velocities in Å/fs with zero total momentum."""
    sysdef = fcc_lattice(4, a=5.6, jitter=0.05, seed=seed, type_names=("Ar",))
    mass = NOBLE_GAS_LJ["Ar"][2]
    rng = np.random.default_rng(seed)
    # sqrt(kT/m) in Å/fs: kcal/mol / (g/mol) = 4184 J/kg -> (m/s)^2; 1 m/s = 1e-5 Å/fs
    sigma_v = np.sqrt(KB_KCAL * temperature / mass * 4184.0) * 1e-5
    vel = rng.normal(0.0, sigma_v, (sysdef.n_atoms, 3))
    vel -= vel.mean(0)
    return sysdef, vel


def run_lammps(sysdef: ExampleSystem, vel_A_fs: np.ndarray, steps: int, workdir: Path, pair: str) -> np.ndarray:
    """NVE in LAMMPS; ``pair`` is 'lj/cut', or a model path for ep/torch. Returns PE (kcal/mol) per thermo step."""
    from engine_plugins.engines.lammps_backend import make_lammps

    model = None if pair == "lj/cut" else Path(pair)
    units = "real"
    if model is not None:
        from engine_plugins.export.artifact import read_metadata

        units = "metal" if read_metadata(model).units["energy"] == "eV" else "real"
    # velocities: Å/fs (real) or Å/ps (metal)
    vel = vel_A_fs if units == "real" else vel_A_fs * 1000.0
    data = write_lammps_data(workdir / f"argon_{units}.data", sysdef, vel)
    dt = TIMESTEP_FS if units == "real" else TIMESTEP_FS / 1000.0
    eps, sig, _ = NOBLE_GAS_LJ["Ar"]
    lines = [f"units {units}", "atom_style atomic", "boundary p p p", "atom_modify map array",
             f"read_data {data}"]
    if model is None:
        lines += ["pair_style lj/cut 8.5", "pair_modify shift no", f"pair_coeff 1 1 {eps} {sig}"]
    else:
        lines += [f"pair_style ep/torch {model}", "pair_coeff * * Ar"]
    lines += ["neighbor 2.0 bin", "neigh_modify every 1 delay 0 check yes", "fix nve all nve",
              f"timestep {dt}", f"thermo {THERMO_EVERY}", "thermo_style custom step pe ke etotal",
              "variable pe equal pe", "run 0 post no"]
    lmp = make_lammps()
    try:
        for line in lines:
            lmp.command(line)
        pes = [lmp.extract_variable("pe")]
        for _ in range(steps // THERMO_EVERY):
            lmp.command(f"run {THERMO_EVERY} pre no post no")
            pes.append(lmp.extract_variable("pe"))
    finally:
        lmp.close()
    to_kcal = 1.0 if units == "real" else 23.060547830619026  # eV -> kcal/mol
    return np.array(pes) * to_kcal


def run_openmm(sysdef: ExampleSystem, vel_A_fs: np.ndarray, steps: int, model: Path | None) -> np.ndarray:
    """NVE in OpenMM (Reference platform, velocity Verlet like LAMMPS fix nve). PE in kcal/mol."""
    import openmm as mm
    import openmm.unit as u

    if model is None:
        system = lj_openmm_system(sysdef)
    else:
        from engine_plugins.engines.openmm_backend import create_pseudo_force

        system = sysdef.openmm_system()
        system.addForce(create_pseudo_force(model, types=sysdef.atom_type_names, periodic=True))
    integ = mm.CustomIntegrator(TIMESTEP_FS * 1e-3)
    integ.addComputePerDof("v", "v+0.5*dt*f/m")
    integ.addComputePerDof("x", "x+dt*v")
    integ.addComputePerDof("v", "v+0.5*dt*f/m")
    ctx = mm.Context(system, integ, mm.Platform.getPlatformByName("Reference"))
    ctx.setPositions(sysdef.positions * 0.1)
    ctx.setVelocities(vel_A_fs * 100.0)  # Å/fs -> nm/ps
    pes = []
    for k in range(steps // THERMO_EVERY + 1):
        if k:
            integ.step(THERMO_EVERY)
        pes.append(ctx.getState(getEnergy=True).getPotentialEnergy().value_in_unit(u.kilocalorie_per_mole))
    return np.array(pes)


def run_demo(output: Path, steps: int = 200) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    output.mkdir(parents=True, exist_ok=True)
    sysdef, vel = initial_state()
    lj_model, nequip_model = MODELS / "lj_argon.pt", MODELS / "nequip_argon.pt"
    runs = {
        "LAMMPS lj/cut": lambda: run_lammps(sysdef, vel, steps, output, "lj/cut"),
        "OpenMM NonbondedForce": lambda: run_openmm(sysdef, vel, steps, None),
        "LAMMPS ep/torch lj_argon": lambda: run_lammps(sysdef, vel, steps, output, str(lj_model)),
        "OpenMM TorchForce lj_argon": lambda: run_openmm(sysdef, vel, steps, lj_model),
        "LAMMPS ep/torch nequip_argon": lambda: run_lammps(sysdef, vel, steps, output, str(nequip_model)),
        "OpenMM TorchForce nequip_argon": lambda: run_openmm(sysdef, vel, steps, nequip_model),
    }
    print(f"engine_plugins demo: NVE MD of {sysdef.n_atoms} LJ argon atoms, {steps} steps of {TIMESTEP_FS} fs, "
          "in LAMMPS and OpenMM (float64)")
    pe: dict[str, np.ndarray] = {}
    wall: dict[str, float] = {}
    for name, fn in runs.items():
        t0 = time.perf_counter()
        pe[name] = fn()
        wall[name] = time.perf_counter() - t0
        print(f"  {name:<32} {wall[name]:6.1f} s")
    steps_axis = np.arange(len(next(iter(pe.values())))) * THERMO_EVERY
    names = list(pe)
    header = f"{'step':>5} " + " ".join(f"{n.replace('LAMMPS ', 'L:').replace('OpenMM ', 'O:')[:22]:>23}" for n in names)
    print("\nPotential energy (kcal/mol)")
    print(header)
    table = np.column_stack([steps_axis] + [pe[n] for n in names])
    for row in table[:: max(1, len(table) // 10)]:
        print(f"{int(row[0]):>5} " + " ".join(f"{v:>23.6f}" for v in row[1:]))
    pairs = [("LAMMPS lj/cut", "OpenMM NonbondedForce"), ("LAMMPS ep/torch lj_argon", "LAMMPS lj/cut"),
             ("OpenMM TorchForce lj_argon", "OpenMM NonbondedForce"),
             ("LAMMPS ep/torch nequip_argon", "OpenMM TorchForce nequip_argon"),
             ("LAMMPS ep/torch nequip_argon", "LAMMPS lj/cut")]
    summary = {"n_atoms": sysdef.n_atoms, "steps": steps, "timestep_fs": TIMESTEP_FS, "wall_s": wall,
               "max_abs_pe_difference_kcal_mol": {f"{a} vs {b}": float(np.abs(pe[a] - pe[b]).max()) for a, b in pairs},
               "initial_pe_kcal_mol": {n: float(pe[n][0]) for n in names}}
    print("\nLargest |difference| over the run (kcal/mol):")
    for k, v in summary["max_abs_pe_difference_kcal_mol"].items():
        print(f"  {k:<62} {v:.3e}")
    np.savetxt(output / "energies.csv", table, delimiter=",", header="step," + ",".join(names), comments="")
    (output / "summary.json").write_text(json.dumps(summary, indent=2))
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    t_ps = steps_axis * TIMESTEP_FS / 1000
    for n, style in zip(names, ["-", "--", "-", "--", "-", "--"]):
        ax = axes[0] if "nequip" not in n else axes[1]
        ax.plot(t_ps, pe[n], style, label=n, lw=1.5)
    axes[1].plot(t_ps, pe["LAMMPS lj/cut"], ":", color="gray", label="LAMMPS lj/cut (reference)")
    for ax, title in zip(axes, ["Lennard-Jones: engines' own vs exported model", "NequIP demo model in both engines"]):
        ax.set_xlabel("time (ps)")
        ax.set_ylabel("potential energy (kcal/mol)")
        ax.set_title(title)
        ax.legend(fontsize=8)
    fig.suptitle(f"NVE MD of {sysdef.n_atoms} argon atoms: LAMMPS vs OpenMM, same start")
    fig.tight_layout()
    fig.savefig(output / "energies.png", dpi=120)
    print(f"\nwrote {output / 'energies.png'}, {output / 'energies.csv'}, {output / 'summary.json'}")
    if (MODELS / "gpff_qm9like.pt").is_file():  # GPFF: molecules from noise inside OpenMM and LAMMPS
        from engine_plugins.methods.gpff.demo_step import run_gpff_demo

        summary["gpff"] = run_gpff_demo(output, MODELS / "gpff_qm9like.pt")
        (output / "summary.json").write_text(json.dumps(summary, indent=2))
    if (MODELS / "propagator_cg_water.pt").is_file():  # learned propagation of CG water in OpenMM and LAMMPS
        from engine_plugins.methods.propagator.demo_step import run_propagation_demo

        summary["learned_propagation"] = run_propagation_demo(output)
        (output / "summary.json").write_text(json.dumps(summary, indent=2))
    return 0
