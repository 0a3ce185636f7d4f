"""``engine-plugins evaluate``: learned rollouts against held-out reference MD.

For each reference case (a directory written by ``engine-plugins simulate transport|cg``, or any
``case.json``), a rollout of the propagator (and corrector) starts from the reference's first frame
in the chosen engine and runs as many jumps of Δτ as cover the reference duration (times
``--duration-factor``), or ``--jumps``. Rollouts written elsewhere (any tool, same atoms/beads as the
reference) can be evaluated instead with ``--rollouts DIR [DIR ...]`` (``DIR/<case_id>/case.json``; several folders pool runs).

Compared per case (``engine_plugins.analysis.observables``; atoms, or CG beads when the case names a
``cg_mapping``):

* MSD of every species about the system's centre of mass, all time origins; the figure of merit is
  the MSD at the reference's longest lag t_ref (``--lag-fraction`` x its duration; the learned curve is
  read at its largest lag <= t_ref, the reference curve interpolated there), and the diffusivity
  D = slope / 6 of a line through the MSD over ``fit_range`` x t_ref (default 0.2 .. 0.8);
* RDF of every species pair, ``nbins`` bins up to ``r_max`` (default 6 Å, at most half the cell):
  Jensen-Shannon divergence with each g(r) r^2 normalised to a probability over the bins up to r_max,
  natural log (0 .. ln 2); the case's figure is the mean over pairs (each pair is listed);
* radius of gyration of CG chains (only when beads of one molecule are bonded into chains);
* closest approach of every species pair: the fraction of learned frames (after the start) in which
  some pair is closer than the reference ever comes in any of its frames, and the shortest learned
  and reference distances (an RDF normalised up to r_max hardly sees a few overlapping atoms);
* centre-of-mass drift (max |COM(t) - COM(0)|, mass-weighted, unwrapped), non-finite coordinates,
  lost atoms (atom count of every frame vs the reference), jumps made.

Across cases, for each mobile species (``mobile_species`` of the cases): the Spearman rank correlation
of log MSD(t_ref) learned vs reference, and the median relative error |MSD_l - MSD_r| / MSD_r.
As a noise floor the same figures are computed between the two halves of each reference.

Writes ``evaluation.json``, ``summary.md`` and PNGs (``msd_curves.png``, ``msd_parity.png``,
``rdf_overlays.png``) to ``--output``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from engine_plugins.analysis.observables import (ClosestApproach, ObservableError, RadiusOfGyration, SpeciesMSD, SpeciesRDF,
                                                 chains_from_bonds, diffusivity, mean_abs_log10_ratio, median_relative_error,
                                                 rdf_jsd, spearman, trajectory_universe)
from engine_plugins.data.trajectories import TrajectoryCase, UnwrappedTrajectory, load_cases

#: Targets of issue 3, part 7.
TARGETS = {"spearman_log_msd": 0.8, "median_relative_msd_error": 0.25, "rdf_jsd": 0.02}


class EvaluationError(ValueError):
    """The evaluation cannot run as asked (the message names the problem and the fix)."""


# ------------------------------------------------------------------------------------ per case
def _subset(traj: UnwrappedTrajectory, sl: slice) -> UnwrappedTrajectory:
    return UnwrappedTrajectory(traj.positions[sl], None if traj.boxes is None else traj.boxes[sl], traj.times[sl],
                               traj.species, traj.masses, traj.unwrap, traj.frames[sl] if len(traj.frames) else
                               traj.frames)


def _half_width(traj: UnwrappedTrajectory) -> float:
    box = traj.boxes[0]
    vol = abs(np.linalg.det(box))
    return 0.5 * min(vol / np.linalg.norm(np.cross(box[(k + 1) % 3], box[(k + 2) % 3])) for k in range(3))


def observe(traj: UnwrappedTrajectory, *, r_max: float, nbins: int, rdf_frames: int = 100,
            chains: list[np.ndarray] | None = None) -> dict[str, Any]:
    """MSD (about the COM), RDF and (with chains) Rg of one trajectory."""
    u = trajectory_universe(traj)
    msd = SpeciesMSD(u.atoms, remove_com=True).run()
    out: dict[str, Any] = {"lagtimes": msd.results.lagtimes, "msd": msd.results.msd,
                           "com_drift": float(msd.results.com_drift.max()), "n_atoms": msd.results.n_atoms}
    if traj.boxes is not None:
        step = max(1, int(math.ceil(traj.n_frames / rdf_frames)))
        rdf = SpeciesRDF(u.atoms, r_max=r_max, nbins=nbins).run(step=step)
        out["rdf_r"] = rdf.results.bins
        out["rdf"] = rdf.results.rdf
    out["closest"] = ClosestApproach(u.atoms, cutoff=r_max).run().results.min_distance
    if chains:
        rg = RadiusOfGyration(u.atoms, chains=chains).run()
        out["rg"] = {"mean": rg.results.mean, "std": rg.results.std, "n_chains": len(chains)}
    return out


def msd_at(lagtimes: np.ndarray, msd: np.ndarray, t: float) -> float:
    """MSD interpolated at lag ``t`` (ps); NaN outside the curve (never a clamped end value)."""
    lagtimes, msd = np.asarray(lagtimes, float), np.asarray(msd, float)
    if t < lagtimes[0] or t > lagtimes[-1] * (1 + 1e-9):
        return float("nan")
    return float(np.interp(t, lagtimes, msd))


def _log_points(n: int, k: int = 120) -> np.ndarray:
    """About ``k`` log-spaced indices in 1..n-1 (for plots and JSON curves)."""
    if n <= 2:
        return np.arange(1, n)
    return np.unique(np.geomspace(1, n - 1, k).astype(int))


def closest_approach(ref: dict[str, np.ndarray], learned: dict[str, np.ndarray]) -> dict[str, Any]:
    """Per species pair: the reference's shortest distance over all its frames, the learned one over
    the frames after the start (frame 0 is the reference's own), and the fraction of those learned
    frames with the pair closer than the reference's shortest; ``frames_below_reference`` is the
    fraction of learned frames where any pair is (the case's figure)."""
    pairs: dict[str, Any] = {}
    below_any = None
    for name, dr in ref.items():
        dl = np.asarray(learned[name], float)[1:]
        rmin = float(np.min(dr))
        below = dl < rmin
        below_any = below if below_any is None else below_any | below
        pairs[name] = {"ref_min": rmin, "ref_median": float(np.median(dr)),
                       "learned_min": float(np.min(dl)) if len(dl) else float("nan"),
                       "learned_median": float(np.median(dl)) if len(dl) else float("nan"),
                       "frames_below_reference": float(below.mean()) if len(dl) else float("nan")}
    frac = float(below_any.mean()) if below_any is not None and len(below_any) else float("nan")
    return {"pairs": pairs, "frames_below_reference": frac}


def compare(ref: UnwrappedTrajectory, learned: UnwrappedTrajectory, *, mobile: Sequence[str], r_max: float = 6.0,
            nbins: int = 60, fit_range: tuple[float, float] = (0.2, 0.8), lag_fraction: float = 1.0,
            chains: list[np.ndarray] | None = None, rdf_frames: int = 100) -> dict[str, Any]:
    """Figures of one case: learned trajectory vs reference (see the module doc)."""
    if ref.n_atoms != learned.n_atoms or list(ref.species) != list(learned.species):
        raise EvaluationError(f"the learned trajectory has {learned.n_atoms} atoms/beads of species "
                              f"{sorted(set(learned.species))}, the reference {ref.n_atoms} of "
                              f"{sorted(set(ref.species))} (lost atoms or a different system)")
    finite = np.isfinite(learned.positions).all(axis=(1, 2))
    n_bad_frames = int((~finite).sum())
    first_bad = int(np.argmin(finite)) if n_bad_frames else None
    good = learned if not n_bad_frames else _subset(learned, slice(0, max(first_bad, 2)))
    if ref.boxes is not None:
        r_max = min(r_max, _half_width(ref))
    obs_ref = observe(ref, r_max=r_max, nbins=nbins, chains=chains, rdf_frames=rdf_frames)
    obs_l = observe(good, r_max=r_max, nbins=nbins, chains=chains, rdf_frames=rdf_frames)
    t_ref_full = float(obs_ref["lagtimes"][-1])
    t_ref = lag_fraction * t_ref_full
    lag_l = obs_l["lagtimes"]
    within = np.flatnonzero(lag_l <= t_ref * (1 + 1e-6))
    if len(within) < 2:
        raise EvaluationError(f"the learned trajectory ({lag_l[-1]:g} ps) has fewer than two frames within the "
                              f"reference lag {t_ref:g} ps; run more jumps")
    k_cmp = int(within[-1])
    t_cmp = float(lag_l[k_cmp])
    species: dict[str, Any] = {}
    for s in obs_ref["msd"]:
        mr, ml = obs_ref["msd"][s], obs_l["msd"][s]
        sel_r = obs_ref["lagtimes"] <= t_ref * (1 + 1e-6)
        entry = {"msd_ref": msd_at(obs_ref["lagtimes"], mr, t_cmp), "msd_learned": float(ml[k_cmp]),
                 "n": obs_ref["n_atoms"][s], "mobile": s in mobile}
        entry["relative_error"] = abs(entry["msd_learned"] - entry["msd_ref"]) / abs(entry["msd_ref"]) \
            if entry["msd_ref"] else float("nan")
        for key, (t, m) in {"D_ref": (obs_ref["lagtimes"][sel_r], mr[sel_r]),
                            "D_learned": (lag_l[: k_cmp + 1], ml[: k_cmp + 1])}.items():
            try:
                entry[key] = diffusivity(t, m, fit_range)
            except ObservableError:
                entry[key] = float("nan")
        ir, il = _log_points(int(sel_r.sum())), np.arange(1, k_cmp + 1)
        entry["curve_ref"] = [obs_ref["lagtimes"][ir].tolist(), mr[ir].tolist()]
        entry["curve_learned"] = [lag_l[il].tolist(), ml[il].tolist()]
        species[s] = entry
    out: dict[str, Any] = {"t_ref": t_ref, "t_compare": t_cmp, "species": species,
                           "com_drift_learned": obs_l["com_drift"], "com_drift_ref": obs_ref["com_drift"],
                           "nonfinite_frames": n_bad_frames, "first_nonfinite_frame": first_bad,
                           "frames_learned": learned.n_frames, "frames_ref": ref.n_frames,
                           "lost_atoms": int(ref.n_atoms - learned.n_atoms)}
    if "rdf" in obs_ref:
        pairs = {}
        for name, g in obs_ref["rdf"].items():
            try:
                jsd = rdf_jsd(obs_ref["rdf_r"], g, obs_l["rdf"][name])
            except ObservableError:
                jsd = float("nan")
            pairs[name] = {"jsd": jsd, "g_ref": g.tolist(), "g_learned": obs_l["rdf"][name].tolist()}
        out["rdf"] = {"r": obs_ref["rdf_r"].tolist(), "r_max": r_max, "nbins": nbins, "pairs": pairs,
                      "jsd_mean": float(np.nanmean([p["jsd"] for p in pairs.values()])),
                      "jsd_max": float(np.nanmax([p["jsd"] for p in pairs.values()]))}
    out["closest_approach"] = closest_approach(obs_ref["closest"], obs_l["closest"])
    if chains:
        out["rg"] = {"ref": obs_ref["rg"], "learned": obs_l.get("rg")}
    return out


def noise_floor(ref: UnwrappedTrajectory, *, mobile: Sequence[str], r_max: float, nbins: int,
                fit_range: tuple[float, float], lag_fraction: float = 1.0) -> dict[str, Any]:
    """The same figures between the first and second half of a reference (what chance alone gives).

    The MSD is compared at the lag the evaluation uses (``lag_fraction`` of the whole reference),
    or at the half's longest lag when that is shorter: a floor read at another lag would not be
    the floor of the figure it stands beside."""
    h = ref.n_frames // 2
    if h < 3:
        return {}
    a, b = _subset(ref, slice(0, h + 1)), _subset(ref, slice(h, 2 * h + 1))
    c = compare(a, b, mobile=mobile, r_max=r_max, nbins=nbins, fit_range=fit_range,
                lag_fraction=min(1.0, lag_fraction * (ref.n_frames - 1) / h))
    return {"t_compare": c["t_compare"],
            "relative_msd_difference": {s: v["relative_error"] for s, v in c["species"].items()},
            "rdf_jsd_mean": c.get("rdf", {}).get("jsd_mean", float("nan")),
            "frames_below_reference_closest": c["closest_approach"]["frames_below_reference"]}


def bead_chains(case: TrajectoryCase) -> list[np.ndarray]:
    """Chains of CG beads: beads joined by at least one atom-atom bond (empty for atoms, or for
    molecules that are one bead each, like water)."""
    from engine_plugins.analysis.rollout import case_mapping
    from engine_plugins.data.cg_mapping import resolve_mapping

    name = case_mapping(case)
    if name is None:
        return []
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        u = case.universe()
    if not hasattr(u.atoms, "bonds") or len(u.bonds) == 0:
        return []
    cg = resolve_mapping(name, u)
    a2b = cg.atom_to_bead
    pairs = {(int(min(a2b[i], a2b[j])), int(max(a2b[i], a2b[j]))) for i, j in u.bonds.indices
             if a2b[i] >= 0 and a2b[j] >= 0 and a2b[i] != a2b[j]}
    return chains_from_bonds(cg.n_beads, sorted(pairs)) if pairs else []


def _floor_line(nf: dict[str, Any]) -> str:
    """The noise-floor line of the summaries: what the reference's two halves give at the compared lag."""
    lag = nf.get("t_compare")
    at = f" (MSD at {_fmt(lag[0])}–{_fmt(lag[1])} ps)" if lag and lag[0] != lag[1] else \
        (f" (MSD at {_fmt(lag[0])} ps)" if lag else "")
    return (f"- noise floor (reference first half vs second half): RDF JSD {_fmt(nf['rdf_jsd_mean'])}; median "
            "relative MSD difference " + ", ".join(f"{s} {_fmt(v, '.1%')}"
                                                  for s, v in nf["median_relative_msd_difference"].items()) + at)


# ------------------------------------------------------------------------------------ across cases
def aggregate(results: dict[str, dict[str, Any]], mobile: Sequence[str]) -> dict[str, Any]:
    """Cross-case figures for each mobile species, and the worst per-case checks."""
    out: dict[str, Any] = {"per_species": {}}
    for s in mobile:
        rows = [r["species"][s] for r in results.values() if s in r["species"]]
        if not rows:
            continue
        ref = np.array([r["msd_ref"] for r in rows])
        lrn = np.array([r["msd_learned"] for r in rows])
        with np.errstate(divide="ignore", invalid="ignore"):
            out["per_species"][s] = {
                "cases": len(rows),
                "spearman_log_msd": spearman(np.log(ref), np.log(lrn)),
                "median_relative_msd_error": median_relative_error(lrn, ref),
                "mean_abs_log10_msd_ratio": mean_abs_log10_ratio(lrn, ref),
                "spearman_D": spearman([r["D_ref"] for r in rows], [r["D_learned"] for r in rows]),
                "median_relative_D_error": median_relative_error([r["D_learned"] for r in rows],
                                                                 [r["D_ref"] for r in rows]),
            }
    jsd = [r["rdf"]["jsd_mean"] for r in results.values() if "rdf" in r]
    out["rdf_jsd_mean"] = float(np.nanmean(jsd)) if jsd else float("nan")
    out["rdf_jsd_max"] = float(np.nanmax([r["rdf"]["jsd_max"] for r in results.values() if "rdf" in r])) \
        if jsd else float("nan")
    close = [r["closest_approach"]["frames_below_reference"] for r in results.values() if "closest_approach" in r]
    out["frames_below_reference_closest_mean"] = float(np.nanmean(close)) if close else float("nan")
    out["frames_below_reference_closest_max"] = float(np.nanmax(close)) if close else float("nan")
    out["com_drift_max"] = float(max(r["com_drift_learned"] for r in results.values()))
    out["nonfinite_frames"] = int(sum(r["nonfinite_frames"] for r in results.values()))
    out["lost_atoms"] = int(sum(r["lost_atoms"] for r in results.values()))
    out["jumps"] = int(sum(r.get("rollout", {}).get("n_jumps", r["frames_learned"] - 1) for r in results.values()))
    floors = [r["noise_floor"] for r in results.values() if r.get("noise_floor")]
    if floors:
        out["noise_floor"] = {
            "rdf_jsd_mean": float(np.nanmean([f["rdf_jsd_mean"] for f in floors])),
            "frames_below_reference_closest_mean": float(np.nanmean(
                [f.get("frames_below_reference_closest", np.nan) for f in floors])),
            "median_relative_msd_difference": {s: median_relative_error(
                [1.0 + f["relative_msd_difference"].get(s, np.nan) for f in floors], [1.0] * len(floors))
                for s in mobile},
            "t_compare": [float(min(f["t_compare"] for f in floors)), float(max(f["t_compare"] for f in floors))]}
    first = next(iter(out["per_species"].values()), {})
    out["targets"] = {
        "spearman_log_msd >= 0.8": bool(first.get("spearman_log_msd", -1) >= TARGETS["spearman_log_msd"]),
        "median_relative_msd_error <= 0.25": bool(first.get("median_relative_msd_error", 9)
                                                  <= TARGETS["median_relative_msd_error"]),
        "rdf_jsd <= 0.02": bool(out["rdf_jsd_mean"] <= TARGETS["rdf_jsd"]),
        "no NaN, no lost atoms": out["nonfinite_frames"] == 0 and out["lost_atoms"] == 0,
    }
    return out


# ------------------------------------------------------------------------------------ reports
def _grid(n: int, ncols: int = 4):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ncols = min(ncols, n)
    nrows = int(math.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.6 * ncols, 3.0 * nrows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    return plt, fig, axes.flat


def _save(plt, fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_msd_curves(results: dict[str, dict[str, Any]], path: Path, label: str) -> Path:
    plt, fig, axes = _grid(len(results))
    for ax, (cid, r) in zip(axes, results.items()):
        for k, (s, e) in enumerate(r["species"].items()):
            color = f"C{k}"
            ax.loglog(*e["curve_ref"], "-", color=color, label=f"{s} reference")
            ax.loglog(*e["curve_learned"], "o--", ms=3, color=color, label=f"{s} {label}")
        ax.axvline(r["t_compare"], color="0.6", lw=0.8)
        ax.set_title(cid, fontsize=9)
        ax.set_xlabel("lag (ps)")
        ax.set_ylabel("MSD (Å²)")
        ax.legend(fontsize=6)
    return _save(plt, fig, path)


def plot_parity(results: dict[str, dict[str, Any]], mobile: Sequence[str], agg: dict[str, Any], path: Path,
                label: str) -> Path:
    plt, fig, axes = _grid(1, 1)
    ax = axes[0]
    temps = [r["temperature"] for r in results.values()]
    lo, hi = math.inf, -math.inf
    for k, s in enumerate(mobile):
        pts = [(r["species"][s]["msd_ref"], r["species"][s]["msd_learned"], r["temperature"])
               for r in results.values() if s in r["species"]]
        if not pts:
            continue
        x, y, t = map(np.array, zip(*pts))
        ok = (x > 0) & (y > 0)
        sc = ax.scatter(x[ok], y[ok], c=t[ok], cmap="viridis", marker="os^v"[k % 4], vmin=min(temps), vmax=max(temps),
                        label=f"{s}: Spearman {agg['per_species'].get(s, {}).get('spearman_log_msd', float('nan')):.2f}")
        if ok.any():
            lo, hi = min(lo, x[ok].min(), y[ok].min()), max(hi, x[ok].max(), y[ok].max())
    if math.isfinite(lo):
        ax.loglog([lo / 1.5, hi * 1.5], [lo / 1.5, hi * 1.5], "k--", lw=0.8)
        fig.colorbar(sc, ax=ax, label="T (K)")
    ax.set_xlabel("reference MSD at t_ref (Å²)")
    ax.set_ylabel(f"{label} MSD at t_ref (Å²)")
    ax.legend(fontsize=7)
    return _save(plt, fig, path)


def plot_rdfs(results: dict[str, dict[str, Any]], path: Path, label: str) -> Path | None:
    with_rdf = {k: r for k, r in results.items() if "rdf" in r}
    if not with_rdf:
        return None
    plt, fig, axes = _grid(len(with_rdf))
    for ax, (cid, r) in zip(axes, with_rdf.items()):
        rr = r["rdf"]["r"]
        for k, (name, p) in enumerate(r["rdf"]["pairs"].items()):
            ax.plot(rr, p["g_ref"], "-", color=f"C{k}", label=f"{name} ref")
            ax.plot(rr, p["g_learned"], "--", color=f"C{k}", label=f"{name} {label} (JSD {p['jsd']:.3g})")
        ax.set_title(cid, fontsize=9)
        ax.set_xlabel("r (Å)")
        ax.set_ylabel("g(r)")
        ax.legend(fontsize=6)
    return _save(plt, fig, path)


def _fmt(v: Any, spec: str = ".3g") -> str:
    try:
        return format(float(v), spec) if v is not None and math.isfinite(float(v)) else "n/a"
    except (TypeError, ValueError):
        return str(v)


def _prior_lines(report: dict[str, Any]) -> list[str]:
    """The prior scales the rollouts ran with, when they were not the model's own."""
    picks = {cid: r.get("rollout", {}).get("prior_scale") for cid, r in report["cases"].items()}
    picks = {cid: p for cid, p in picks.items() if p}
    if not picks:
        return []
    ps = report["settings"].get("adaptive_prior_ps")
    how = (f"the model's adaptive pick, measured on the first {_fmt(ps)} ps of each case's reference run"
           if ps is not None else "set by --prior-scale")
    return [f"- prior scale ({how}): " + "; ".join(
        f"{cid} " + ", ".join(f"{t} {_fmt(v)}" for t, v in p.items()) for cid, p in picks.items())]


def _rollouts_with(report: dict[str, Any], key: str) -> dict[str, dict[str, Any]]:
    """{case: rollout record} of the cases whose rollout recorded ``key``."""
    rows = {cid: r.get("rollout", {}) for cid, r in report["cases"].items()}
    return {cid: ro for cid, ro in rows.items() if key in ro}


def _contact_lines(report: dict[str, Any]) -> list[str]:
    """The contact redraw's counts, when the rollouts ran with one."""
    rows = _rollouts_with(report, "contact_rounds")
    if not rows:
        return []
    jumps = sum(int(ro.get("n_jumps", 0)) for ro in rows.values())
    rounds = sum(int(ro["contact_rounds"]) for ro in rows.values())
    left = sum(int(ro.get("contact_left", 0)) for ro in rows.values())
    return [f"- contact redraw: {rounds} rounds in {jumps} jumps ({_fmt(rounds / max(jumps, 1))} per jump); "
            f"{left} jumps accepted with a contact left after the last round"]


def _retry_lines(report: dict[str, Any]) -> list[str]:
    """Redraws of the rollouts (a jump that gave NaN or too long a displacement, drawn again)."""
    rows = _rollouts_with(report, "retries")
    if not rows:
        return []
    jumps = sum(int(ro.get("n_jumps", 0)) for ro in rows.values())
    total = sum(int(ro["retries"]) for ro in rows.values())
    worst = max(rows.items(), key=lambda kv: int(kv[1]["retries"]))
    return [f"- redraws (NaN or a displacement over the model's bound, drawn again): {total} in {jumps} jumps"
            + (f"; most in {worst[0]} ({int(worst[1]['retries'])})" if total else "")]


def _closest_pair_table(report: dict[str, Any]) -> list[str]:
    """Shortest distance of each species pair, reference vs learned, per case: the overlaps an RDF
    normalised up to r_max hardly shows."""
    rows = []
    for cid, r in report["cases"].items():
        for pair, c in (r.get("closest_approach") or {}).get("pairs", {}).items():
            rows.append(f"| {cid} | {pair} | {_fmt(c.get('ref_min'), '.3f')} | {_fmt(c.get('learned_min'), '.3f')} | "
                        f"{_fmt(c.get('ref_median'), '.3f')} | {_fmt(c.get('learned_median'), '.3f')} | "
                        f"{_fmt(c.get('frames_below_reference'), '.1%')} |")
    if not rows:
        return []
    return ["", "## Shortest distance per species pair (Å)", "",
            "Over the reference's frames and the learned frames after the start; the median is that of each "
            "frame's shortest distance.", "",
            "| case | pair | ref. min | learned min | ref. median | learned median | learned frames below ref. min |",
            "|---|---|---|---|---|---|---|"] + rows


def _rdf_pair_table(report: dict[str, Any]) -> list[str]:
    """RDF JSD of each species pair per case: which pair a case's mean comes from."""
    names = list(dict.fromkeys(p for r in report["cases"].values() for p in (r.get("rdf") or {}).get("pairs", {})))
    if not names:
        return []
    rows = [f"| {cid} | {r['temperature']:g} | " + " | ".join(
        _fmt((r.get("rdf") or {}).get("pairs", {}).get(p, {}).get("jsd"), ".4f") for p in names) + " |"
        for cid, r in report["cases"].items()]
    return ["", "## RDF JSD per species pair", "",
            "| case | T (K) | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)] + rows


def _closest_line(agg: dict[str, Any]) -> str:
    floor = (agg.get("noise_floor") or {}).get("frames_below_reference_closest_mean")
    return (f"- closest approach: learned frames with some species pair closer than the reference ever comes: "
            f"mean over cases {_fmt(agg.get('frames_below_reference_closest_mean'), '.1%')}, worst case "
            f"{_fmt(agg.get('frames_below_reference_closest_max'), '.1%')}"
            + (f" (reference second half vs first half: {_fmt(floor, '.1%')})" if floor is not None else ""))


def markdown_summary(report: dict[str, Any]) -> str:
    agg, res = report["aggregate"], report["cases"]
    lines = [f"# Evaluation: {report['label']}", "",
             f"Command: `{report['command']}`", "",
             f"Model: `{report.get('model')}`" + (f", corrector `{report['corrector']}`" if report.get("corrector") else "")
             + f"; engine **{report['engine']}**; Δτ = {_fmt(report.get('delta_tau'))} ps; "
             f"{agg['jumps']} jumps in total; {len(res)} case(s).", "",
             "| case | T (K) | species | MSD ref (Å²) | MSD learned (Å²) | rel. err. | D ref | D learned | "
             "RDF JSD | frames closer than ref. | COM drift (Å) | NaN frames |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for cid, r in res.items():
        for s, e in r["species"].items():
            lines.append(f"| {cid} | {r['temperature']:g} | {s}{' (mobile)' if e['mobile'] else ''} | "
                         f"{_fmt(e['msd_ref'])} | {_fmt(e['msd_learned'])} | {_fmt(e['relative_error'], '.1%')} | "
                         f"{_fmt(e['D_ref'])} | {_fmt(e['D_learned'])} | {_fmt(r.get('rdf', {}).get('jsd_mean'))} | "
                         f"{_fmt(r.get('closest_approach', {}).get('frames_below_reference'), '.1%')} | "
                         f"{_fmt(r['com_drift_learned'])} | {r['nonfinite_frames']} |")
    for cid, why in report.get("failed", {}).items():
        lines.append(f"| {cid} | | rollout failed: {why} | | | | | | | | | |")
    lines += ["", "## Across cases", ""]
    for s, a in agg["per_species"].items():
        lines.append(f"- **{s}** ({a['cases']} cases): Spearman rank correlation of log MSD(t_ref) = "
                     f"{_fmt(a['spearman_log_msd'])} (target ≥ 0.8); median relative MSD error = "
                     f"{_fmt(a['median_relative_msd_error'], '.1%')} (target ≤ 25 %), mean |log10(learned/ref)| = "
                     f"{_fmt(a.get('mean_abs_log10_msd_ratio'), '.3f')}; Spearman of D = "
                     f"{_fmt(a['spearman_D'])}, median relative D error = {_fmt(a['median_relative_D_error'], '.1%')}")
    lines += [f"- RDF Jensen-Shannon divergence: mean over cases (of the mean over pairs) {_fmt(agg['rdf_jsd_mean'])}, "
              f"worst pair {_fmt(agg['rdf_jsd_max'])} (target ≤ 0.02)",
              _closest_line(agg),
              f"- centre-of-mass drift: at most {_fmt(agg['com_drift_max'])} Å; non-finite frames: "
              f"{agg['nonfinite_frames']}; lost atoms: {agg['lost_atoms']}"]
    lines += _prior_lines(report) + _contact_lines(report) + _retry_lines(report)
    if agg.get("noise_floor"):
        nf = agg["noise_floor"]
        lines.append(_floor_line(nf))
    lines += _rdf_pair_table(report) + _closest_pair_table(report)
    lines += ["", "## Definitions", "",
              "- MSD about the system's centre of mass, averaged over atoms of the species and all time origins; "
              "t_ref = the reference's longest lag (× lag fraction); the learned curve is read at its largest lag "
              "≤ t_ref, the reference curve interpolated there.",
              f"- D = slope/6 of a straight line through the MSD over {report['settings']['fit_range']} × t_ref.",
              "- RDF JSD: each g(r) of a species pair becomes p_k = g(r_k) r_k² / Σ_j g(r_j) r_j² over the "
              f"{report['settings']['nbins']} bins up to r_max = {report['settings']['r_max']} Å (or half the cell); "
              "JSD = ½ KL(p‖m) + ½ KL(q‖m), m = (p+q)/2, natural log (0 … ln 2 = 0.693).",
              "", "Plots: `msd_curves.png`, `msd_parity.png`, `rdf_overlays.png`."]
    return "\n".join(lines) + "\n"


def card_section(report: dict[str, Any], title: str | None = None) -> str:
    """A model-card section with the measured figures of one evaluation and the command."""
    agg = report["aggregate"]
    cases = report["cases"]
    lines = [f"## {title or 'Evaluation on held-out cases (' + report['label'] + ')'}", "",
             f"Measured with `{report['command'] or 'engine_plugins.analysis.evaluate.evaluate(...)'}` "
             f"({len(cases)} case(s): {', '.join(cases)}; seed {report.get('seed')}; Δτ = {_fmt(report.get('delta_tau'))} ps; "
             f"{agg['jumps']} jumps in total).", "",
             "| case | species | MSD(t_ref) reference (Å²) | MSD(t_ref) learned (Å²) | rel. error | D ref (Å²/ps) | "
             "D learned (Å²/ps) | RDF JSD |", "|---|---|---|---|---|---|---|---|"]
    for cid, r in cases.items():
        for s, e in r["species"].items():
            if e["mobile"]:
                lines.append(f"| {cid} | {s} | {_fmt(e['msd_ref'])} | {_fmt(e['msd_learned'])} | "
                             f"{_fmt(e['relative_error'], '.1%')} | {_fmt(e['D_ref'])} | {_fmt(e['D_learned'])} | "
                             f"{_fmt(r.get('rdf', {}).get('jsd_mean'))} |")
    lines.append("")
    for s, a in agg["per_species"].items():
        lines.append(f"- {s}: Spearman rank correlation of log MSD = {_fmt(a['spearman_log_msd'])} (target ≥ 0.8); "
                     f"median relative MSD error = {_fmt(a['median_relative_msd_error'], '.1%')} (target ≤ 25 %)")
    lines.append(f"- RDF Jensen-Shannon divergence (g r² normalised over bins up to r_max = "
                 f"{report['settings']['r_max']} Å, natural log): mean {_fmt(agg['rdf_jsd_mean'])}, worst pair "
                 f"{_fmt(agg['rdf_jsd_max'])} (target ≤ 0.02)")
    lines.append(_closest_line(agg))
    lines.append(f"- centre-of-mass drift ≤ {_fmt(agg['com_drift_max'])} Å; non-finite frames {agg['nonfinite_frames']}; "
                 f"lost atoms {agg['lost_atoms']}")
    lines += _prior_lines(report) + _contact_lines(report)
    if agg.get("noise_floor"):
        nf = agg["noise_floor"]
        lines.append(_floor_line(nf))
    return "\n".join(lines) + "\n"


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        return float(obj) if math.isfinite(float(obj)) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def write_report(report: dict[str, Any], output: Path) -> dict[str, Path]:
    output.mkdir(parents=True, exist_ok=True)
    label = report["engine"]
    paths = {"json": output / "evaluation.json", "markdown": output / "summary.md"}
    paths["json"].write_text(json.dumps(_jsonable(report), indent=1))
    paths["markdown"].write_text(markdown_summary(report))
    paths["msd_curves"] = plot_msd_curves(report["cases"], output / "msd_curves.png", label)
    paths["msd_parity"] = plot_parity(report["cases"], report["mobile_species"], report["aggregate"],
                                      output / "msd_parity.png", label)
    rdf = plot_rdfs(report["cases"], output / "rdf_overlays.png", label)
    if rdf is not None:
        paths["rdf_overlays"] = rdf
    return paths


# ------------------------------------------------------------------------------------ driver
def _rollout_case_for(rollouts: Sequence[Path], case_id: str) -> Path:
    """The one written rollout of ``case_id`` under the folders ``rollouts``.

    In each folder: ``DIR/<case_id>/case.json`` or ``DIR/case.json`` if there is one, else any
    ``case.json`` below it that names the case (so an ``evaluate`` output folder, with its
    ``rollouts/<engine>/<case_id>``, works too). A case found in more than one place is an error:
    picking one would silently evaluate another engine's or seed's run."""
    found: list[Path] = []
    for d in rollouts:
        direct = [c for c in (d / case_id / "case.json", d / "case.json")
                  if c.is_file() and (c.parent.name == case_id or json.loads(c.read_text()).get("case_id") == case_id)]
        found += direct[:1] or [c for c in sorted(d.glob("**/case.json"))
                                if json.loads(c.read_text()).get("case_id") == case_id]
    if not found:
        where = ", ".join(str(d) for d in rollouts)
        raise EvaluationError(f"no rollout for case {case_id} under {where} (expected DIR/{case_id}/case.json). "
                              "Fix: add the folder of the run that has it to --rollouts")
    if len(found) > 1:
        raise EvaluationError(f"case {case_id} has {len(found)} rollouts: " + ", ".join(str(c.parent) for c in found)
                              + ". Fix: pass folders that hold one rollout of each case, e.g. OUT/rollouts/standalone "
                              "of one evaluate run per set")
    return found[0]


SPLITS = {"test": ("test",), "val": ("val",), "held-out": ("test", "val"), "train": ("train",)}


def cases_of_split(case_list: list[TrajectoryCase], model: str | None, split: str) -> list[TrajectoryCase]:
    """The cases of ``split`` (test, val, held-out = test + val, or train) recorded in the model's
    ``provenance.split`` (written by ``engine-plugins train propagator``), in that order."""
    from engine_plugins.export.artifact import read_metadata

    if split not in SPLITS:
        raise EvaluationError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    if model is None:
        raise EvaluationError("--split needs --model (the split is read from its provenance)")
    rec = read_metadata(model).provenance.get("split")
    if not isinstance(rec, dict):
        raise EvaluationError(f"{model} records no provenance.split. Fix: pass the held-out case directories "
                              "explicitly instead of --split")
    ids = [i for part in SPLITS[split] for i in rec.get(part, [])]
    if not ids:
        raise EvaluationError(f"the {split} split of {model} is empty")
    by_id = {c.case_id: c for c in case_list}
    missing = [i for i in ids if i not in by_id]
    if missing:
        raise EvaluationError(f"case(s) {missing} of the model's {split} split are not among the given cases "
                              f"({', '.join(by_id) or 'none'}). Fix: pass the data directory the model was trained "
                              f"on ({read_metadata(model).provenance.get('data_set', '?')})")
    return [by_id[i] for i in ids]


def evaluate(cases: Sequence[str | os.PathLike], *, model: str | None = None, corrector: str | None = None,
             engine: str = "standalone", output: str | os.PathLike = "out/evaluate", jumps: int | None = None,
             duration_factor: float = 1.0, seed: int = 0,
             rollouts: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
             r_max: float = 6.0, nbins: int = 60, fit_range: tuple[float, float] = (0.2, 0.8),
             lag_fraction: float = 1.0, progress: bool = True, command: str = "", engine_options: dict | None = None,
             split: str | None = None, adaptive_prior: float | None = None) -> dict[str, Any]:
    """Run (or read) learned rollouts for every reference case and compare them; returns the report
    (also written to ``output``). ``adaptive_prior`` (ps): set each case's prior scale to the
    model's adaptive pick, measured on that many ps at the start of the case's reference run."""
    from tqdm.auto import tqdm

    from engine_plugins.analysis.rollout import (Rollout, RolloutError, check_roles, measure_case_prior, n_jumps_for,
                                                 read_reference, run)

    if not cases:
        raise EvaluationError("no reference cases given. Fix: pass case directories written by "
                              "`engine-plugins simulate` (or their parent directory)")
    for c in cases:
        if not Path(c).exists():
            raise FileNotFoundError(f"reference case {c} does not exist. Fix: pass a directory written by "
                                    "`engine-plugins simulate transport|cg` (it holds case.json)")
    case_list = load_cases(list(cases))
    if split is not None:
        case_list = cases_of_split(case_list, model, split)
    if model is None and rollouts is None:
        raise EvaluationError("give --model (to run rollouts) or --rollouts DIR (to evaluate written ones)")
    rollout_dirs = [Path(rollouts)] if isinstance(rollouts, (str, os.PathLike)) else \
        [Path(d) for d in rollouts or []]
    if rollouts is not None and not rollout_dirs:
        raise EvaluationError("rollouts names no folder. Fix: pass the folder(s) the rollouts were written to")
    for d in rollout_dirs:
        if not d.is_dir():
            raise EvaluationError(f"--rollouts folder {d} does not exist. Fix: pass the folder(s) the rollouts were "
                                  "written to (OUT/rollouts/ENGINE of an evaluate run)")
    if rollouts is not None and (adaptive_prior is not None or (engine_options or {}).get("prior_scale")):
        raise EvaluationError("--adaptive-prior/--prior-scale set the prior of new rollouts; rollouts read from "
                              "--rollouts ran with whatever prior they ran with. Fix: drop one of them")
    if not 0 < lag_fraction <= 1:
        raise EvaluationError(f"lag_fraction must be in (0, 1], got {lag_fraction}")
    delta_tau = None
    if model is not None:
        from engine_plugins.export.artifact import read_metadata

        check_roles(model, corrector)
        delta_tau = float(read_metadata(model).role_fields["delta_tau"])
    out = Path(output)
    mobile = list(dict.fromkeys(s for c in case_list for s in c.mobile_species))
    results: dict[str, dict[str, Any]] = {}
    failed: dict[str, str] = {}
    bar = tqdm(case_list, desc=f"evaluate ({engine if rollouts is None else 'rollouts'})", unit="case",
               disable=not progress)
    for case in bar:
        bar.set_postfix_str(case.case_id)
        ref = read_reference(case)
        mob = list(case.mobile_species) or list(dict.fromkeys(ref.species))
        for s in mob:
            if s not in mobile:
                mobile.append(s)
        if rollouts is None:
            n = jumps or n_jumps_for(float(ref.times[-1] - ref.times[0]), delta_tau, duration_factor)
            options = dict(engine_options or {})
            if adaptive_prior is not None:
                options["prior_scale"] = {**measure_case_prior(model, case, adaptive_prior, ref),
                                          **(options.get("prior_scale") or {})}
            try:
                ro: Rollout = run(engine, model, case, n, seed, corrector=corrector, out_dir=out / "rollouts",
                                  progress=progress, reference=ref, **options)
            except RolloutError:
                raise
            except RuntimeError as exc:  # a jump failed all redraws, or the engine stopped with an error
                # RolloutFailedError says first how far the run got and where its frames are kept
                failed[case.case_id] = f"{type(exc).__name__}: {str(exc)[:900]}"
                continue
            learned, ro_info = ro.read(), ro.to_json()
            if options.get("prior_scale"):
                ro_info["prior_scale"] = dict(options["prior_scale"])
        else:
            rc = TrajectoryCase.load(_rollout_case_for(rollout_dirs, case.case_id))
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", category=DeprecationWarning)
                learned = rc.read(unwrap=rc.meta.get("unwrap", "auto"),
                                  mapping=rc.meta.get("cg_mapping") if rc.meta.get("family") != "rollout" else None)
            ro_info = {"case_json": str(rc.topology.parent / "case.json"), "n_jumps": learned.n_frames - 1,
                       "wall_seconds": rc.meta.get("wall_seconds")}
        chains = bead_chains(case)
        r = compare(ref, learned, mobile=mob, r_max=r_max, nbins=nbins, fit_range=fit_range,
                    lag_fraction=lag_fraction, chains=chains or None)
        r.update({"temperature": case.temperature, "composition": case.composition, "rollout": ro_info,
                  "noise_floor": noise_floor(ref, mobile=mob, r_max=r_max, nbins=nbins, fit_range=fit_range,
                                                lag_fraction=lag_fraction)})
        if not chains:
            r["rg"] = "no chains (atoms, or one bead per molecule)"
        results[case.case_id] = r
    bar.close()
    report = {"schema": "engine_plugins.evaluation/1", "label": f"{engine} rollouts" if rollouts is None else
              "rollouts from " + ", ".join(str(d) for d in rollout_dirs), "engine": engine if rollouts is None else "rollouts",
              "command": command, "model": str(model) if model else None,
              "corrector": str(corrector) if corrector else None, "delta_tau": delta_tau, "seed": seed,
              "mobile_species": mobile, "settings": {"r_max": r_max, "nbins": nbins, "fit_range": list(fit_range),
                                                     "lag_fraction": lag_fraction, "duration_factor": duration_factor,
                                                     "jumps": jumps, "adaptive_prior_ps": adaptive_prior,
                                                     "prior_scale": (engine_options or {}).get("prior_scale"),
                                                     "contact_rounds": (engine_options or {}).get("contact_rounds"),
                                                     "corrector_passes": (engine_options or {}).get("corrector_passes")},
              "targets": TARGETS, "cases": results, "failed": failed}
    if not results:
        raise EvaluationError("every rollout failed: " + "; ".join(f"{k}: {v}" for k, v in failed.items()))
    report["aggregate"] = aggregate(results, mobile)
    report["files"] = {k: str(v) for k, v in write_report(report, out).items()}
    (out / "evaluation.json").write_text(json.dumps(_jsonable(report), indent=1))
    return report


def compare_engines(reports: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Pairwise agreement of the rollouts of different engines (same model, cases and seed): per
    case the relative MSD(t_ref) difference of each species and the RDF JSD between the engines'
    RDFs; medians (and the largest MSD difference, which a median over a few cases can hide) and means
    over cases. Compare with the reference noise floor (two halves of one MD run):
    differences of that size are what independent samples of the same dynamics give."""
    names = list(reports)
    out: dict[str, Any] = {}
    for a_i, a in enumerate(names):
        for b in names[a_i + 1:]:
            ra, rb = reports[a]["cases"], reports[b]["cases"]
            common = [c for c in ra if c in rb]
            rows: dict[str, Any] = {}
            for cid in common:
                ca, cb = ra[cid], rb[cid]
                row = {"relative_msd_difference": {
                    sp: abs(ca["species"][sp]["msd_learned"] - cb["species"][sp]["msd_learned"]) /
                    abs(cb["species"][sp]["msd_learned"]) if cb["species"][sp]["msd_learned"] else float("nan")
                    for sp in ca["species"]}}
                if "rdf" in ca and "rdf" in cb:
                    r = np.asarray(ca["rdf"]["r"])
                    vals = []
                    for pair, pa in ca["rdf"]["pairs"].items():
                        try:
                            vals.append(rdf_jsd(r, np.asarray(pa["g_learned"]),
                                                np.asarray(cb["rdf"]["pairs"][pair]["g_learned"])))
                        except ObservableError:
                            vals.append(float("nan"))
                    row["rdf_jsd_mean"] = float(np.nanmean(vals))
                rows[cid] = row
            species = sorted({sp for r in rows.values() for sp in r["relative_msd_difference"]})
            out[f"{a} vs {b}"] = {
                "cases": rows,
                "median_relative_msd_difference": {sp: float(np.nanmedian(
                    [r["relative_msd_difference"][sp] for r in rows.values()])) for sp in species},
                "max_relative_msd_difference": {sp: float(np.nanmax(
                    [r["relative_msd_difference"][sp] for r in rows.values()])) for sp in species},
                "rdf_jsd_mean": float(np.nanmean([r.get("rdf_jsd_mean", np.nan) for r in rows.values()]))
                if rows else float("nan")}
    return out


def main(args: argparse.Namespace) -> int:
    from engine_plugins.analysis.cli_args import parse_prior_scale
    from engine_plugins.analysis.rollout import RolloutError

    try:
        prior_scale = parse_prior_scale(getattr(args, "prior_scale", None))
    except ValueError as exc:
        print(f"engine-plugins evaluate: error: {exc}", file=sys.stderr)
        return 2
    opts = {k: v for k, v in {"flow_steps": args.flow_steps,
                              "corrector_flow_steps": getattr(args, "corrector_flow_steps", None), "ranks": args.ranks if args.ranks != 1 else None,
                              "platform": args.platform,
                              "device": None if getattr(args, "device", "auto") == "auto" else args.device,
                              "prior_scale": prior_scale,
                              "contact_rounds": getattr(args, "contact_rounds", None),
                              "corrector_passes": getattr(args, "corrector_passes", None),
                              }.items() if v is not None}
    t0 = time.perf_counter()
    engines = list(dict.fromkeys(args.engine))
    command = "engine-plugins evaluate " + " ".join(sys.argv[2:]) if sys.argv[1:2] == ["evaluate"] else ""
    reports: dict[str, dict[str, Any]] = {}
    try:
        for engine in engines if args.rollouts is None else engines[:1]:
            out = Path(args.output) / engine if len(engines) > 1 and args.rollouts is None else Path(args.output)
            reports[engine] = evaluate(
                args.cases, model=args.model, corrector=args.corrector, engine=engine, output=out, jumps=args.jumps,
                duration_factor=args.duration_factor, seed=args.seed, rollouts=args.rollouts, r_max=args.r_max,
                nbins=args.nbins, fit_range=tuple(args.fit_range), lag_fraction=args.lag_fraction,
                progress=args.progress, command=command, engine_options=opts, split=args.split,
                adaptive_prior=getattr(args, "adaptive_prior", None))
    except (EvaluationError, RolloutError, ObservableError, ValueError) as exc:
        print(f"engine-plugins evaluate: error: {exc}", file=sys.stderr)
        return 2
    if args.append_card:
        card = Path(args.append_card)
        if not card.is_file():
            print(f"engine-plugins evaluate: error: model card {card} does not exist", file=sys.stderr)
            return 2
        with open(card, "a") as f:
            for report in reports.values():
                f.write("\n" + card_section(report))
        print(f"appended the figures to {card}")
    for engine, report in reports.items():
        agg = report["aggregate"]
        print(f"[{report['engine']}]")
        for sp, a in agg["per_species"].items():
            print(f"  {sp}: Spearman log MSD {_fmt(a['spearman_log_msd'])}, median relative MSD error "
                  f"{_fmt(a['median_relative_msd_error'], '.1%')}, mean |log10 ratio| "
                  f"{_fmt(a.get('mean_abs_log10_msd_ratio'), '.3f')} over {a['cases']} case(s)")
        print(f"  RDF JSD mean {_fmt(agg['rdf_jsd_mean'])} (max {_fmt(agg['rdf_jsd_max'])}); COM drift max "
              f"{_fmt(agg['com_drift_max'])} Å; non-finite frames {agg['nonfinite_frames']}; lost atoms "
              f"{agg['lost_atoms']}; {agg['jumps']} jumps")
        print(f"  closest approach: {_fmt(agg.get('frames_below_reference_closest_mean'), '.1%')} of learned frames "
              f"(worst case {_fmt(agg.get('frames_below_reference_closest_max'), '.1%')}) have a pair closer than "
              f"the reference ever comes")
    if len(reports) > 1:
        agreement = compare_engines(reports)
        (Path(args.output) / "engines.json").write_text(json.dumps(_jsonable(agreement), indent=1))
        lines = ["# Engine agreement (same model, cases and seed)", "", f"Command: `{command}`", ""]
        for pair, a in agreement.items():
            lines.append(f"- {pair}: median (max) relative MSD(t_ref) difference over cases " + ", ".join(
                f"{sp} {_fmt(v, '.1%')} ({_fmt(a['max_relative_msd_difference'][sp], '.1%')})"
                for sp, v in a["median_relative_msd_difference"].items()) +
                f"; RDF JSD between the engines' RDFs {_fmt(a['rdf_jsd_mean'])}")
            print(lines[-1][2:])
        nf = next(iter(reports.values()))["aggregate"].get("noise_floor")
        if nf:
            lines.append(_floor_line(nf))
        (Path(args.output) / "engines.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {args.output} (evaluation.json, summary.md, PNGs{', engines.json/md' if len(reports) > 1 else ''}; "
          f"{time.perf_counter() - t0:.1f} s)")
    return 0
