"""The learned-propagation step of ``make demo``: CG water propagated by the shipped propagator
(exported_models/propagator_cg_water.pt, with corrector_cg_water.pt when shipped) inside OpenMM and
LAMMPS, against a short all-atom OpenMM reference run made on the spot (no data set needed).

1. reference: all-atom TIP3P water in OpenMM (``simulate cg`` settings, a smaller box), mapped to
   molecule centres of mass (one bead per water);
2. from the reference's first frame, ``n_jumps`` learned jumps of Δτ in each engine
   (``engine_plugins.analysis.rollout``: OpenMM TorchForce + CustomIntegrator, LAMMPS ``fix ep/propagate``);
3. MSD and RDF of the beads (``engine_plugins.analysis.observables``), reference vs each engine:
   D from a line through each MSD, the MSD at the largest jump lag within half the reference, the
   RDF Jensen-Shannon divergence; OpenMM vs LAMMPS after the first jump (same seed: the same
   counter-based noise); simulated ps per wall second of each run.

Writes ``propagation.png`` (MSD and RDF) and returns the summary (``make demo`` adds it to summary.json).
"""

from __future__ import annotations

import math
import time
import warnings
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import numpy as np

from engine_plugins.analysis.evaluate import msd_at  # re-exported: the demo compares MSDs as evaluate does

REPO = Path(__file__).resolve().parents[3]
MODELS = REPO / "exported_models"


def _shipped(name: str) -> Optional[Path]:
    p = MODELS / name
    return p if p.is_file() else None


def compare_lag(delta_tau: float, n_jumps: int, reference_ps: float) -> float:
    """The lag (ps) where learned and reference MSDs are compared: the largest multiple of Δτ that
    is at most half the reference run (many time origins in both) and at most the rollout length."""
    k = min(n_jumps, int(math.floor(0.5 * reference_ps / delta_tau + 1e-9)))
    if k < 1:
        raise ValueError(f"the reference ({reference_ps:g} ps) is shorter than two jumps of {delta_tau:g} ps; "
                         "run a longer reference")
    return k * delta_tau


def run_propagation_demo(output: Path, model: Optional[Path] = None, corrector: Optional[Path] = None, *,
                         engines: Sequence[str] = ("openmm", "lammps"), temperature: float = 300.0,
                         box_nm: float = 2.0, equil_ps: float = 2.0, reference_ps: float = 20.0,
                         n_jumps: int = 20, seed: int = 0, threads: int = 2, use_corrector: bool = True,
                         plot: bool = True) -> Dict[str, Any]:
    """Reference run + learned rollouts + comparison (see the module doc); returns the summary."""
    from dataclasses import replace

    from engine_plugins.analysis.evaluate import observe
    from engine_plugins.analysis.observables import diffusivity, rdf_jsd
    from engine_plugins.analysis.rollout import read_reference, run
    from engine_plugins.data.simulate import CG_PRESETS, run_cg_case
    from engine_plugins.data.trajectories import TrajectoryCase
    from engine_plugins.export.artifact import read_metadata
    from engine_plugins.units import time_factor

    model = Path(model) if model else _shipped("propagator_cg_water.pt")
    if model is None:
        raise FileNotFoundError(f"no CG water propagator at {MODELS / 'propagator_cg_water.pt'}")
    if corrector is None and use_corrector:
        corrector = _shipped("corrector_cg_water.pt")
    meta = read_metadata(model)
    delta_tau = float(meta.role_fields["delta_tau"]) * time_factor(meta.units["time"], "ps")
    work = Path(output) / "propagation"
    work.mkdir(parents=True, exist_ok=True)

    base = CG_PRESETS["standard"]
    report_every = 50  # 0.1 ps frames
    steps = int(round(reference_ps / base.timestep / report_every)) * report_every
    settings = replace(base, box=box_nm, equil_steps=int(round(equil_ps / base.timestep)), steps=steps,
                       report_every=report_every, threads=threads, seed=seed + 1)
    print(f"\nLearned propagation: CG water (molecule centres of mass) with {model.name}"
          f"{' + ' + Path(corrector).name if corrector else ''}, Δτ = {delta_tau:g} ps, {temperature:g} K")
    t0 = time.perf_counter()
    case = run_cg_case("water", temperature, settings, work / "reference")
    ref_wall = time.perf_counter() - t0
    case_json = work / "reference" / "case.json"
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        ref = read_reference(TrajectoryCase.load(case_json))
    n_beads = ref.n_atoms
    ref_ps = float(ref.times[-1] - ref.times[0])
    t_cmp = compare_lag(delta_tau, n_jumps, ref_ps)
    obs_ref = observe(ref, r_max=6.0, nbins=60)
    d_ref = diffusivity(obs_ref["lagtimes"], obs_ref["msd"]["HOH"])
    summary: Dict[str, Any] = {
        "model": model.name, "corrector": Path(corrector).name if corrector else None, "delta_tau_ps": delta_tau,
        "temperature_K": temperature, "n_beads": n_beads, "n_atoms_all_atom": case["n_atoms"],
        "box_nm": box_nm, "n_jumps": n_jumps, "compare_lag_ps": t_cmp,
        "reference": {"ps": ref_ps, "wall_s": round(ref_wall, 2),
                      "ps_per_wall_s": (equil_ps + ref_ps) / float(case["wall_seconds"]),  # equilibration + production
                      "D_A2_per_ps": d_ref, "msd_at_compare_lag": msd_at(obs_ref["lagtimes"], obs_ref["msd"]["HOH"],
                                                                        t_cmp)},
        "engines": {}}
    print(f"  reference: all-atom OpenMM, {case['n_atoms']} atoms -> {n_beads} beads, {ref_ps:g} ps in "
          f"{ref_wall:.1f} s (with set-up), D = {d_ref:.3g} Å²/ps")
    learned: Dict[str, Any] = {}
    for engine in engines:
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            ro = run(engine, model, case_json, n_jumps, seed, corrector=corrector, out_dir=work / "rollouts",
                     progress=False, threads=threads)
            traj = ro.read()
        wall = time.perf_counter() - t0
        obs = observe(traj, r_max=6.0, nbins=60)
        learned[engine] = (traj, obs)
        msd_l = msd_at(obs["lagtimes"], obs["msd"]["HOH"], t_cmp)
        entry = {"wall_s": round(wall, 2), "ps": n_jumps * delta_tau,
                 "ps_per_wall_s": n_jumps * delta_tau / ro.wall_seconds,
                 "D_A2_per_ps": diffusivity(obs["lagtimes"], obs["msd"]["HOH"]),
                 "msd_at_compare_lag": msd_l,
                 "msd_relative_error": abs(msd_l - summary["reference"]["msd_at_compare_lag"])
                 / summary["reference"]["msd_at_compare_lag"],
                 "rdf_jsd": rdf_jsd(obs_ref["rdf_r"], obs_ref["rdf"]["HOH-HOH"], obs["rdf"]["HOH-HOH"]),
                 "finite": bool(np.isfinite(traj.positions).all()), "retries": ro.info.get("retries")}
        summary["engines"][engine] = entry
        print(f"  {engine:<7} {n_jumps} jumps ({entry['ps']:g} ps) in {wall:.1f} s: D = {entry['D_A2_per_ps']:.3g} "
              f"Å²/ps, MSD({t_cmp:g} ps) {msd_l:.3g} vs {summary['reference']['msd_at_compare_lag']:.3g} Å² "
              f"({100 * entry['msd_relative_error']:.0f} %), RDF JSD {entry['rdf_jsd']:.3g}")
    if "openmm" in learned and "lammps" in learned:
        a, b = learned["openmm"][0].positions[1], learned["lammps"][0].positions[1]
        box = np.asarray(learned["openmm"][0].boxes[1])
        d = (a - b) @ np.linalg.inv(box)
        d = (d - np.round(d)) @ box  # minimum image: the engines may unwrap a bead into different images
        summary["openmm_vs_lammps_first_jump_max_A"] = float(np.abs(d).max())
        print(f"  OpenMM vs LAMMPS after the first jump (same seed): max |Δx| = "
              f"{summary['openmm_vs_lammps_first_jump_max_A']:.2g} Å ({meta.dtype} model)")
    if plot:
        summary["figure"] = str(plot_propagation(work.parent / "propagation.png", obs_ref, learned, summary))
        print(f"  wrote {summary['figure']}")
    return summary


def plot_propagation(path: Path, obs_ref: Dict[str, Any], learned: Dict[str, Any], summary: Dict[str, Any]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    ax1.plot(obs_ref["lagtimes"][1:], obs_ref["msd"]["HOH"][1:], "-", color="k", lw=2,
             label=f"all-atom OpenMM reference (D {summary['reference']['D_A2_per_ps']:.2f} Å²/ps)")
    d = summary["reference"]["D_A2_per_ps"]
    t_max = max(float(obs["lagtimes"][-1]) for _, obs in learned.values()) if learned else obs_ref["lagtimes"][-1]
    tt = np.linspace(0.0, t_max, 50)
    ax1.plot(tt, 6 * d * tt, ":", color="gray", label="6 D_ref t")
    for k, (engine, (_, obs)) in enumerate(learned.items()):
        e = summary["engines"][engine]
        ax1.plot(obs["lagtimes"][1:], obs["msd"]["HOH"][1:], "os"[k % 2] + "--", color=f"C{k}", ms=5,
                 label=f"learned, {engine} (D {e['D_A2_per_ps']:.2f} Å²/ps)")
        ax2.plot(obs["rdf_r"], obs["rdf"]["HOH-HOH"], "--", color=f"C{k}", label=f"learned, {engine} "
                 f"(JSD {e['rdf_jsd']:.3f})")
    ax1.set_xlabel("lag time (ps)")
    ax1.set_ylabel("MSD of water centres of mass (Å²)")
    ax1.set_title(f"MSD: learned jumps of {summary['delta_tau_ps']:g} ps vs reference MD")
    ax1.legend(fontsize=8)
    ax2.plot(obs_ref["rdf_r"], obs_ref["rdf"]["HOH-HOH"], "-", color="k", lw=2, label="all-atom OpenMM reference")
    ax2.set_xlabel("r (Å)")
    ax2.set_ylabel("g(r), water centres of mass")
    ax2.set_title("RDF of the beads")
    ax2.legend(fontsize=8)
    fig.suptitle(f"CG water, {summary['n_beads']} beads, {summary['temperature_K']:g} K: learned propagation in "
                 "OpenMM and LAMMPS vs all-atom OpenMM")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
