"""Build the shipped argon models from real OpenMM reference MD (``python -m engine_plugins.train.argon_example``).

* ``lj_argon.pt``: Lennard-Jones argon as a package model (exact reference; kcal/mol, Å: LAMMPS
  ``units real``).
* ``nequip_argon.pt``: a small NequIP potential (2 message-passing layers) fitted to energies and
  forces of OpenMM LJ argon MD frames, exported in eV and Å (LAMMPS ``units metal``), so the demo
  exercises unit conversion in both engines.

Writes the models, their model cards and the training DCD into ``exported_models/``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from engine_plugins.data.reference_md import run_lj_reference_md
from engine_plugins.data.systems import NOBLE_GAS_LJ, fcc_lattice
from engine_plugins.export import export_artifact, load_artifact
from engine_plugins.methods.lennard_jones import LennardJones, lennard_jones_metadata
from engine_plugins.train.force_matching import evaluate, fit_energy_forces
from engine_plugins.units import energy_factor

LJ_CUTOFF = 8.5
NEQUIP = dict(type_names=["Ar"], r_max=6.0, num_layers=2, l_max=1, num_features=16, num_bessels=8,
              radial_mlp_width=32, seed=0)
SYSTEM = dict(n_cells=4, a=5.6)  # 256 atoms, 22.4 Å box, liquid-like at 120 K
MD = dict(temperature=120.0, timestep_fs=4.0, stride=50)


def build_lj(out: Path) -> Path:
    eps, sig, _ = NOBLE_GAS_LJ["Ar"]
    meta = lennard_jones_metadata(["Ar"], LJ_CUTOFF, units={"length": "angstrom", "energy": "kcal/mol", "time": "fs"},
                                  periodicity="any")
    meta.provenance = {"dataset": "analytic (no training)", "parameters": {"epsilon_kcal_mol": eps, "sigma_A": sig}}
    path = export_artifact(LennardJones([eps], [sig], LJ_CUTOFF), meta, out / "lj_argon.pt")
    (out / "lj_argon.md").write_text(f"""# lj_argon.pt: Lennard-Jones argon (exact reference)

- Role `pseudo_force`, method `lennard_jones`, type names `Ar`.
- epsilon = {eps} kcal/mol, sigma = {sig} Å, truncated (not shifted) at {LJ_CUTOFF} Å, one layer.
- Units: Å, kcal/mol, fs (LAMMPS `units real`; OpenMM converts to nm and kJ/mol).
- No training: the analytic potential, written as a package model and exported through the same
  exporter as learned models. It equals OpenMM's NonbondedForce and LAMMPS's `lj/cut` to 1e-10
  (tests/test_openmm_backend.py, tests/test_lammps_pair.py).
- Rebuild: `python -m engine_plugins.train.argon_example`.
""")
    return path


def build_nequip(out: Path, n_frames: int, steps: int) -> tuple[Path, dict]:
    from engine_plugins.nn.nequip_backbone import (average_num_neighbors, build_nequip_pseudo_force,
                                                   nequip_pseudo_force_metadata, script_nequip_model)

    t0 = time.time()
    sysdef = fcc_lattice(SYSTEM["n_cells"], a=SYSTEM["a"], type_names=("Ar",))
    frames = run_lj_reference_md(sysdef, n_frames + 8, MD["stride"], MD["temperature"], MD["timestep_fs"], seed=0,
                                 dcd=out / "argon_reference.dcd")
    train, test = _split(frames, n_frames)
    t_md = time.time() - t0
    ev = energy_factor("kcal/mol", "eV")
    avg = average_num_neighbors(torch.tensor(frames.positions[0]), NEQUIP["r_max"], torch.tensor(frames.box))
    model = build_nequip_pseudo_force(avg_num_neighbors=avg, **NEQUIP)
    # per-atom energy offset of the reference, so the network learns only the variation
    shift = float(np.mean(train.energies)) / sysdef.n_atoms * ev
    with torch.no_grad():
        model.backbone.per_type_energy_scale_shift.shifts.fill_(shift)
    t1 = time.time()
    fit = fit_energy_forces(model, train, NEQUIP["r_max"], steps=steps, energy_scale=ev, lr=1e-2)
    t_fit = time.time() - t1
    res = evaluate(model, test, NEQUIP["r_max"], energy_scale=ev)
    metrics = {"test_energy_mae_kcal_mol_per_atom": res.energy_mae_per_atom, "test_force_mae_kcal_mol_A": res.force_mae,
               "test_force_rmse_kcal_mol_A": res.force_rmse,
               "reference_force_rms_kcal_mol_A": float(np.sqrt(np.mean(test.forces ** 2))),
               "train_force_mae_kcal_mol_A": fit.force_mae, "fit_steps": steps,
               "train_frames": len(train.energies), "test_frames": len(test.energies)}
    meta = nequip_pseudo_force_metadata(model, units={"length": "angstrom", "energy": "eV", "time": "ps"},
                                        periodicity="periodic",
                                        provenance={"dataset": "OpenMM LJ argon NVT MD (exported_models/argon_reference.dcd)",
                                                    "metrics": metrics})
    path = export_artifact(script_nequip_model(model), meta, out / "nequip_argon.pt")
    load_artifact(path)
    (out / "nequip_argon.md").write_text(f"""# nequip_argon.pt: small NequIP potential for liquid argon

- Role `pseudo_force`, method `nequip_pseudo_force` (conservative: forces = -dE/dx), type names `Ar`.
- NequIP backbone: {NEQUIP['num_layers']} message-passing layers, l_max {NEQUIP['l_max']}, {NEQUIP['num_features']} features,
  cutoff {NEQUIP['r_max']} Å (LAMMPS ghost halo {NEQUIP['num_layers'] * NEQUIP['r_max']} Å), float64.
- Units: Å, eV, ps (LAMMPS `units metal`; OpenMM converts to nm and kJ/mol).
- Data: {n_frames + 8} frames of OpenMM Langevin MD of 256 LJ argon atoms (fcc start, a = {SYSTEM['a']} Å,
  {MD['temperature']} K, {MD['timestep_fs']} fs, every {MD['stride']} steps), OpenMM's own NonbondedForce
  (epsilon 0.238 kcal/mol, sigma 3.405 Å, cutoff 8.5 Å); the last 8 frames held out. The trajectory
  is `argon_reference.dcd`.
- Training: Adam (lr 1e-2, cosine), {steps} steps of one frame, loss = per-atom energy MSE + 10 x force MSE.
  MD {t_md:.0f} s, fit {t_fit:.0f} s on 2 CPU cores.
- Held-out metrics: force MAE {res.force_mae:.4f} kcal/mol/Å (reference force RMS
  {metrics['reference_force_rms_kcal_mol_A']:.3f}), energy MAE {res.energy_mae_per_atom:.5f} kcal/mol/atom.
  Its cutoff (6 Å) is shorter than the reference's (8.5 Å), so it is a demo potential, not an exact one.
- Rebuild: `python -m engine_plugins.train.argon_example` (seeded; same numbers on the same machine).
""")
    return path, metrics


def _split(frames, n_train):
    from dataclasses import replace

    tr = replace(frames, positions=frames.positions[:n_train], energies=frames.energies[:n_train],
                 forces=frames.forces[:n_train])
    te = replace(frames, positions=frames.positions[n_train:], energies=frames.energies[n_train:],
                 forces=frames.forces[n_train:])
    return tr, te


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--output", default="exported_models")
    p.add_argument("--frames", type=int, default=60)
    p.add_argument("--steps", type=int, default=1500)
    args = p.parse_args(argv)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    print("wrote", build_lj(out))
    path, metrics = build_nequip(out, args.frames, args.steps)
    print("wrote", path)
    print(json.dumps(metrics, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
