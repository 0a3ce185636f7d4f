"""Measure an RM crystal model: repair of noisy crystals (standalone and in LAMMPS) and screening.

``engine-plugins evaluate-rm MODEL [--output DIR] [--levels 0.1:0.02 0.3:0.05 ...] [--engines standalone lammps]``

1. **Repair.** For every built-in prototype (a supercell at least ``min_width`` A thick), noisy copies
   (``perturb_crystal``: Gaussian displacements of ``sigma`` A per component and a random symmetric
   strain of scale ``s``; seeded) are relaxed on the learned pseudo-energy with the cell free:
   standalone (ASE FIRE + UnitCellFilter) and in LAMMPS (``minimize`` + ``fix box/relax tri 0.0``).
   Each result is compared with its reference prototype by pymatgen ``StructureMatcher``
   (``engine_plugins.analysis.validity.match_crystal``); the unrelaxed noisy copies are matched too,
   as the baseline the relaxation has to beat.
2. **Screening.** Pseudo-energy per atom of each equilibrium prototype vs its displaced copies
   (Spearman of ``E - E_eq`` with the displacement size, ``rank_correlation``) and vs decoys of the same
   composition (``fraction_ranked_correctly``): the same atoms at random positions in the reference
   cell, species permuted over the sites (compounds), and, for elements, the other cubic lattices
   (fcc/bcc/sc/diamond) at the reference volume per atom.
3. **Search for lower minima.** From each prototype, response matching's own generation recipe
   (relax -> kick -> relax, ``relax_with_kicks``, ``search_kicks`` kicks of ``kick_size`` A) looks for
   structures the learned pseudo-energy puts below the prototype; one that is lower by more than
   1 meV/atom and does not match the prototype is a spurious minimum (the screening premise fails
   there, and relaxations from noise can end in it). ``kicks`` > 0 also applies the recipe to
   every repair relaxation (default 0: one plain relaxation).

Writes ``rm_eval.json`` and ``rm_eval.md`` and prints the markdown.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

DEFAULT_LEVELS = ((0.1, 0.02), (0.3, 0.05), (0.5, 0.08))


def _pe_per_atom(calc, structure) -> float:
    atoms = structure.to_ase()
    atoms.calc = calc
    return float(atoms.get_potential_energy()) / len(atoms)


def decoys(structure, seed: int = 0) -> List[Tuple[str, Any]]:
    """Same-composition decoys of a reference crystal (see module doc)."""
    from engine_plugins.data.molecules import Structure

    rng = np.random.default_rng(seed)
    out: List[Tuple[str, Any]] = []
    n = structure.n_atoms
    frac = rng.random((n, 3))
    out.append(("random positions", structure.copy(positions=frac @ structure.cell)))
    if len(set(structure.symbols)) > 1:
        perm = rng.permutation(n)
        out.append(("species permuted", structure.copy(symbols=[structure.symbols[i] for i in perm])))
    else:
        from ase.build import bulk

        el = structure.symbols[0]
        vpa = abs(np.linalg.det(structure.cell)) / n
        proto = structure.info.get("prototype", "")
        for kind, atoms_per_cell in (("fcc", 4), ("bcc", 2), ("sc", 1), ("diamond", 8)):
            if kind == proto:
                continue
            a = (vpa * atoms_per_cell) ** (1.0 / 3.0)
            atoms = bulk(el, kind, a=a, cubic=True) if kind != "sc" else bulk(el, "sc", a=a)
            reps = max(1, int(math.ceil(7.0 / a)))
            atoms = atoms.repeat((reps, reps, reps))
            out.append((f"{kind} at the same volume/atom", Structure.from_ase(atoms)))
    return out


def evaluate_rm(model: str | Path, output: str | Path = "out/rm_eval", levels: Sequence[Tuple[float, float]] = DEFAULT_LEVELS,
                engines: Sequence[str] = ("standalone", "lammps"), names: Optional[Sequence[str]] = None,
                seeds: int = 1, min_width: float = 7.0, fmax: float = 0.01, max_steps: int = 1000,
                lammps_ftol: float = 1e-4, lammps_vmax: float = 0.01, screening_sizes: Sequence[float] = (0.05, 0.1, 0.2, 0.3, 0.5),
                progress: bool = True, first_seed: int = 0, kicks: int = 0, kick_size: float = 0.4,
                search_kicks: int = 4, lammps_atoms_first: bool = False, search_kick_strain: float = 0.0) -> Dict[str, Any]:
    """Run the measurements (see module doc); returns the report dict and writes JSON + markdown."""
    from tqdm.auto import tqdm

    from engine_plugins.analysis.validity import fraction_ranked_correctly, match_crystal, rank_correlation
    from engine_plugins.data.crystals import CRYSTAL_PROTOTYPES, build_crystal, perturb_crystal
    from engine_plugins.export.artifact import load_artifact
    from engine_plugins.methods.response_matching.relax import make_calculator, relax_structure, relax_with_kicks

    art = load_artifact(model)
    names = list(names or CRYSTAL_PROTOTYPES)
    bad = [e for e in engines if e not in ("standalone", "lammps")]
    if bad:
        raise ValueError(f"unknown engine(s) {bad}; use standalone and/or lammps")
    refs = {n: build_crystal(n, cutoff=0.5 * min_width, factor=2.0) for n in names}

    def relaxer(engine: str, symbols: Sequence[str]):
        """``relax(positions, cell)`` with the cell free, in ``engine`` (for ``relax_with_kicks``)."""
        if engine == "standalone":
            return lambda p, c: relax_structure(art, symbols, p, c, relax_cell=True, fmax=fmax, max_steps=max_steps)
        from engine_plugins.engines.relax_cell import relax_lammps

        return lambda p, c: relax_lammps(art, symbols, p, c, box_relax=True, ftol=lammps_ftol,
                                         max_iterations=max_steps, vmax=lammps_vmax, atoms_first=lammps_atoms_first)

    calc = make_calculator(art)
    e_ref = {n: _pe_per_atom(calc, refs[n]) for n in names}
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    rows: List[Dict[str, Any]] = []
    jobs = [(n, lv, seed) for lv in levels for n in names for seed in range(first_seed, first_seed + seeds)]
    bar = tqdm(jobs, desc="rm repair", disable=not progress, dynamic_ncols=True)
    for n, (sig, st), seed in bar:
        ref = refs[n]
        noisy = perturb_crystal(ref, displacement=sig, strain=st, seed=1000 + seed)
        row: Dict[str, Any] = {"crystal": n, "n_atoms": ref.n_atoms, "displacement": sig, "strain": st, "seed": seed,
                               "noisy_matched": match_crystal(noisy, ref, with_rms=False).matched}
        for engine in engines:
            t0 = time.perf_counter()
            try:
                r = relax_with_kicks(relaxer(engine, noisy.symbols), noisy.positions, noisy.cell, kicks=kicks,
                                     kick_size=kick_size, seed=seed)
                m = match_crystal(r.to_structure(n), ref)
                e_rel = float(r.energy) / ref.n_atoms
                row[engine] = {"matched": m.matched, "rms": m.rms, "volume_ratio": m.volume_ratio,
                               "E_per_atom": e_rel, "below_reference": e_rel < e_ref[n] - 1e-4,
                               "steps": r.steps, "converged": r.converged, "fmax": r.fmax,
                               "seconds": round(time.perf_counter() - t0, 2)}
                if kicks:
                    row[engine]["kicks_accepted"] = r.info["kicks_accepted"]
                    row[engine]["E_per_atom_each"] = [e / ref.n_atoms for e in r.info["energies"]]
            except Exception as exc:  # noqa: BLE001 - a failed relaxation counts as not matched, with the reason
                row[engine] = {"matched": False, "error": f"{type(exc).__name__}: {exc}"[:300],
                               "seconds": round(time.perf_counter() - t0, 2)}
        rows.append(row)
        (out / "rm_eval_rows.json").write_text(json.dumps(rows, indent=1))

    summary: Dict[str, Any] = {"per_level": []}
    for sig, st in levels:
        sel = [r for r in rows if r["displacement"] == sig and r["strain"] == st]
        entry = {"displacement": sig, "strain": st, "n": len(sel),
                 "noisy_unrelaxed_match": float(np.mean([r["noisy_matched"] for r in sel]))}
        for engine in engines:
            entry[f"{engine}_match"] = float(np.mean([r[engine]["matched"] for r in sel]))
            rms = [r[engine]["rms"] for r in sel if r[engine].get("rms") is not None]
            entry[f"{engine}_mean_rms"] = float(np.mean(rms)) if rms else None
            entry[f"{engine}_mean_seconds"] = float(np.mean([r[engine]["seconds"] for r in sel]))
        summary["per_level"].append(entry)
    for engine in engines:
        summary[f"{engine}_match_overall"] = float(np.mean([r[engine]["matched"] for r in rows])) if rows else None
    summary["noisy_unrelaxed_match_overall"] = float(np.mean([r["noisy_matched"] for r in rows])) if rows else None

    for engine in engines:  # the reference should be the learned minimum: how often a relaxation ends below it
        summary[f"{engine}_below_reference"] = float(np.mean([bool(r[engine].get("below_reference")) for r in rows])) if rows else None

    # screening
    rng_seed = 7
    e_eq, e_pert, e_dec, dec_rows = [], [], [], []
    for n in tqdm(names, desc="rm screening", disable=not progress, dynamic_ncols=True):
        ref = refs[n]
        e0 = _pe_per_atom(calc, ref)
        e_eq.append(e0)
        e_pert.append([_pe_per_atom(calc, perturb_crystal(ref, displacement=s, strain=0.0, seed=rng_seed))
                       for s in screening_sizes])
        ds = decoys(ref, seed=rng_seed)
        ed = [_pe_per_atom(calc, d) for _, d in ds]
        dec_rows.append({"crystal": n, "E_eq_per_atom": e0,
                         "decoys": [{"decoy": lbl, "E_per_atom": e, "above_eq": e > e0} for (lbl, _), e in zip(ds, ed)]})
        e_dec.append(ed)
    rc = rank_correlation(e_eq, e_pert, list(screening_sizes))
    pairs = [(e0, e) for e0, es in zip(e_eq, e_dec) for e in es]
    screening = {"perturbation_sizes": list(screening_sizes), "ranking_vs_displacement": rc.as_dict(),
                 "decoys_fraction_above_equilibrium": fraction_ranked_correctly([p[0] for p in pairs], [p[1] for p in pairs]),
                 "n_decoys": len(pairs), "per_crystal": dec_rows}

    # lower minima than the prototype, found by the method's relax -> kick -> relax from the prototype
    search_rows = []
    for n in tqdm(names if search_kicks > 0 else [], desc="rm minima search", disable=not progress, dynamic_ncols=True):
        ref = refs[n]
        r = relax_with_kicks(relaxer("standalone", ref.symbols), ref.positions, ref.cell, kicks=search_kicks,
                             kick_size=kick_size, seed=rng_seed, kick_strain=search_kick_strain)
        e_low = float(r.energy) / ref.n_atoms
        matched = match_crystal(r.to_structure(n), ref, with_rms=False).matched
        search_rows.append({"crystal": n, "E_ref_per_atom": e_ref[n], "E_lowest_found_per_atom": e_low,
                            "lowest_matches_reference": matched,
                            "spurious_minimum": bool(e_low < e_ref[n] - 1e-3 and not matched)})
    if search_rows:
        screening["minima_search"] = {
            "kicks": search_kicks, "kick_size": kick_size, "kick_strain": search_kick_strain,
            "fraction_reference_lowest": float(np.mean([not r["spurious_minimum"] for r in search_rows])),
            "spurious": [r["crystal"] for r in search_rows if r["spurious_minimum"]], "per_crystal": search_rows}

    meta = art.metadata
    report = {"model": str(model), "content_hash": meta.content_hash, "method": meta.method,
              "settings": {"levels": [list(lv) for lv in levels], "engines": list(engines), "seeds": seeds,
                           "first_seed": first_seed, "kicks": kicks, "kick_size": kick_size,
                           "search_kicks": search_kicks,
                           "min_width": min_width, "fmax": fmax, "max_steps": max_steps, "lammps_ftol": lammps_ftol,
                           "lammps_vmax": lammps_vmax, "lammps_atoms_first": lammps_atoms_first,
                           "crystals": names},
              "repair": summary, "screening": screening, "rows": rows}
    (out / "rm_eval.json").write_text(json.dumps(report, indent=1))
    md = markdown(report)
    (out / "rm_eval.md").write_text(md)
    return report


def _seed_range(settings: Dict[str, Any]) -> str:
    first = int(settings.get("first_seed", 0))
    last = first + int(settings["seeds"]) - 1
    return str(first) if last == first else f"{first}-{last}"


def markdown(report: Dict[str, Any]) -> str:
    """The report as markdown tables."""
    rep = report["repair"]
    engines = report["settings"]["engines"]
    lines = [f"# RM crystal model: repair and screening ({Path(report['model']).name})", "",
             f"{len(report['settings']['crystals'])} prototypes, supercells >= {report['settings']['min_width']} A, "
             f"{report['settings']['seeds']} noisy copy per level (noise seed {_seed_range(report['settings'])}); "
             "StructureMatcher (ltol 0.2, stol 0.3, angle 5 deg)."
             + (f" Each relaxation is relax -> kick -> relax with {report['settings']['kicks']} kick(s) of "
                f"{report['settings']['kick_size']:g} A (the lowest pseudo-energy kept)."
                if report["settings"].get("kicks") else " One plain relaxation each (no kicks).")
             + (f" LAMMPS: {'a `minimize` of the atoms in the noisy cell, then ' if report['settings'].get('lammps_atoms_first') else ''}"
                f"`minimize` (cg, ftol {report['settings']['lammps_ftol']:g}, at most "
                f"{report['settings']['max_steps']} iterations) with `fix box/relax tri 0.0 vmax "
                f"{report['settings'].get('lammps_vmax', 0.001):g}`." if "lammps" in engines else ""),
             "", "| displacement (A) | strain | n | unrelaxed match | "
             + " | ".join(f"{e} match | {e} mean rms | {e} s/relax" for e in engines) + " |",
             "|---|---|---|---|" + "---|---|---|" * len(engines)]
    for lv in rep["per_level"]:
        cells = [f"{lv['displacement']:g}", f"{lv['strain']:g}", str(lv["n"]), f"{100 * lv['noisy_unrelaxed_match']:.0f} %"]
        for e in engines:
            rms = lv.get(f"{e}_mean_rms")
            cells += [f"{100 * lv[f'{e}_match']:.0f} %", "-" if rms is None else f"{rms:.3f}",
                      f"{lv[f'{e}_mean_seconds']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    overall = ", ".join(f"{e} {100 * rep[f'{e}_match_overall']:.1f} %" for e in engines)
    lines += ["", f"Overall match after relaxation: {overall} (unrelaxed noisy copies: "
              f"{100 * rep['noisy_unrelaxed_match_overall']:.1f} %)."]
    below = [f"{e} {100 * rep[f'{e}_below_reference']:.1f} %" for e in engines if rep.get(f"{e}_below_reference") is not None]
    if below:
        lines += ["", "Relaxations that end below the reference's pseudo-energy (the reference is then not the learned "
                  f"minimum): {', '.join(below)}."]
    lines += [""]
    sc = report["screening"]
    r = sc["ranking_vs_displacement"]
    lines += ["## Screening", "",
              f"- Spearman(E - E_eq, displacement size {sc['perturbation_sizes']}) pooled: {r['spearman_pooled']:.3f}; "
              f"per structure (mean): {r['spearman_per_structure']:.3f}",
              f"- equilibrium below its displaced copies: {100 * r['fraction_correct']:.1f} % of {r['n_pairs']} pairs",
              f"- equilibrium below same-composition decoys: {100 * sc['decoys_fraction_above_equilibrium']:.1f} % of "
              f"{sc['n_decoys']} decoys"]
    ms = sc.get("minima_search")
    if ms:
        lines += [f"- search for lower minima from each prototype (relax -> kick -> relax, {ms['kicks']} kick(s) of "
                  f"{ms['kick_size']:g} A"
                  + (f" and cell strain {ms['kick_strain']:g}" if ms.get("kick_strain") else "")
                  + "): the prototype is the lowest structure found for "
                  f"{100 * ms['fraction_reference_lowest']:.0f} % of the prototypes"
                  + (f"; spurious lower minima: {', '.join(ms['spurious'])}" if ms["spurious"] else "")]
    lines += [""]
    failed = [row for row in report["rows"] if any(not row[e]["matched"] for e in engines)]
    if failed:
        lines += ["Not matched:", ""]
        for row in failed:
            bad = [e + (f" ({row[e]['error'][:80]})" if "error" in row[e] else "") for e in engines if not row[e]["matched"]]
            lines.append(f"- {row['crystal']} at {row['displacement']:g} A / {row['strain']:g}: {', '.join(bad)}")
        lines.append("")
    return "\n".join(lines)


def model_card(report: Dict[str, Any], command: str = "") -> str:
    """A markdown model card: the artifact's metadata (model, noise, training) and this report's figures."""
    from engine_plugins.export.artifact import read_metadata

    path = Path(report["model"])
    meta = read_metadata(path)
    prov, rf = meta.provenance, meta.role_fields
    tc = prov.get("train_config", {})
    mc = prov.get("rm_model_config", {})
    tr, nz = tc.get("train", {}), rf.get("noise", tc.get("noise", {}))
    lines = [f"# {path.name}: response-matching pseudo-force model for crystals (method `{meta.method}`)", "",
             "## What it is", "",
             f"- role `{meta.role}`, {len(meta.type_names)} types ({' '.join(meta.type_names)}), cutoff {meta.cutoff:g} A, "
             f"{meta.num_message_passing_layers} message-passing layers (halo {meta.ghost_cutoff:g} A), dtype {meta.dtype}, "
             f"{meta.periodicity}, {path.stat().st_size / 1024:.0f} KiB, content hash `{meta.content_hash[:23]}...`",
             f"- conservative NequIP pseudo-energy ({mc.get('num_features')} features, l_max {mc.get('l_max')}, "
             f"{mc.get('num_bessels')} Bessel functions, trained in {prov.get('train_dtype')}) + the analytic short-range "
             "repulsion; forces and the virial (stress) are derivatives of one energy, so LAMMPS `fix box/relax` and "
             "ASE cell filters work on it",
             f"- pseudo-energy: {json.dumps(rf.get('pseudo_energy', {}).get('form'))}; site displacements in fractional "
             "coordinates (reference cell metric), strain from the reference cell (see "
             "`engine_plugins/methods/response_matching/noise.py`)",
             f"- noise: displacement sigma {nz.get('distribution')} in [{nz.get('sigma_min')}, {nz.get('sigma_max')}] A, "
             f"symmetric strain scale log-uniform in [{nz.get('strain_min')}, {nz.get('strain_max')}], stress weight "
             f"{nz.get('stress_weight')}, force weight min(sigma^-2, {nz.get('weight_cap')})",
             f"- relaxation defaults (role_fields.relaxation): {json.dumps(rf.get('relaxation'))}", "",
             "## Data", "",
             f"- {prov.get('data_set')}",
             f"- training supercells at least {tc.get('data', {}).get('train_min_width')} A thick. RM restores the "
             f"structures it was trained on: the evaluation below uses fresh noise on the same {len(report['settings']['crystals'])} prototypes (in "
             f"supercells at least {report['settings']['min_width']} A thick), not unseen crystals.", "",
             "## Training", "",
             f"- {prov.get('steps')} steps" + (" (stopped by max_minutes)" if prov.get("stopped_early") else "")
             + f" in {prov.get('train_minutes')} min, batch {tr.get('batch_size')} crystals, AdamW lr {tr.get('lr')} "
             f"(warm-up + cosine to x{tr.get('lr_min_factor')}), grad clip {tr.get('grad_clip')}, EMA {tr.get('ema_decay')}, "
             f"seed {tc.get('seed')}; {tr.get('threads')} CPU thread(s)",
             f"- validation (fresh noise on the training crystals, strain {tr.get('val_strain')}): "
             + "; ".join(f"sigma {k} A: force rel. RMSE {v['force_rel_rmse']:.3f}, stress rel. error {v['stress_rel_err']:.3f}"
                         for k, v in (prov.get("metrics", {}).get("val") or {}).items()), ""]
    if command:
        lines += ["## Commands", "", "```bash", command.strip(), "```", ""]
    lines += ["## Evaluation (`engine-plugins evaluate-rm`)", ""]
    body = markdown(report).split("\n")
    lines += body[2:]
    return "\n".join(lines).rstrip() + "\n"


def _level(text: str) -> Tuple[float, float]:
    try:
        d, s = text.split(":")
        return float(d), float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"level '{text}': write DISPLACEMENT:STRAIN, e.g. 0.3:0.05") from None


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The command's options (shared by ``engine-plugins evaluate-rm`` and ``python -m``)."""
    p.add_argument("model")
    p.add_argument("--output", default="out/rm_eval")
    p.add_argument("--levels", type=_level, nargs="+", default=list(DEFAULT_LEVELS),
                   help="DISPLACEMENT:STRAIN pairs (A : strain scale); default 0.1:0.02 0.3:0.05 0.5:0.08")
    p.add_argument("--engines", nargs="+", default=["standalone", "lammps"], choices=["standalone", "lammps"])
    p.add_argument("--crystals", nargs="+", help="subset of the built-in prototypes")
    p.add_argument("--seeds", type=int, default=1, help="noisy copies per crystal and level")
    p.add_argument("--first-seed", type=int, default=0,
                   help="noise seeds FIRST..FIRST+SEEDS-1 (the card uses 0; choose models on other seeds)")
    p.add_argument("--min-width", type=float, default=7.0, help="supercell thickness, A")
    p.add_argument("--fmax", type=float, default=0.01, help="standalone FIRE stop, eV/A")
    p.add_argument("--max-steps", type=int, default=1000)
    p.add_argument("--lammps-ftol", type=float, default=1e-4, help="LAMMPS minimize ftol (eV/A)")
    p.add_argument("--lammps-vmax", type=float, default=0.01,
                   help="fix box/relax vmax: largest fractional volume change per iteration")
    p.add_argument("--lammps-atoms-first", action=argparse.BooleanOptionalAction, default=False,
                   help="LAMMPS: minimize the atoms in the noisy cell before the box/relax minimize")
    p.add_argument("--kicks", type=int, default=0,
                   help="relax -> kick -> relax: kicks after each repair relaxation, lowest pseudo-energy kept (default 0)")
    p.add_argument("--kick-size", type=float, default=0.4, help="kick: Gaussian displacement per component, A")
    p.add_argument("--search-kicks", type=int, default=4,
                   help="kicks in the search for minima below each prototype (0: skip the search)")
    p.add_argument("--search-kick-strain", type=float, default=0.0,
                   help="also strain the cell at each search kick (std. dev. per strain component; e.g. 0.05)")
    p.add_argument("--card", help="also write a model card (markdown) for the model to this path")
    p.add_argument("--card-command", default="", help="commands to quote in the card")
    p.add_argument("--no-progress", action="store_true")
    return p


def build_parser() -> argparse.ArgumentParser:
    return add_arguments(argparse.ArgumentParser(
        prog="engine-plugins evaluate-rm",
        description="repair of noisy crystals (standalone and LAMMPS box/relax) and screening ranks for an RM "
                    "crystal model; JSON + markdown"))


def run(args: argparse.Namespace) -> int:
    """Run the evaluation for parsed arguments, print the markdown."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        report = evaluate_rm(args.model, args.output, args.levels, args.engines, args.crystals, args.seeds,
                             args.min_width, args.fmax, args.max_steps, args.lammps_ftol, args.lammps_vmax,
                             progress=not args.no_progress, first_seed=args.first_seed, kicks=args.kicks,
                             kick_size=args.kick_size, search_kicks=args.search_kicks,
                             search_kick_strain=args.search_kick_strain,
                             lammps_atoms_first=args.lammps_atoms_first)
    finally:
        torch.set_num_threads(threads)
    print(markdown(report))
    if args.card:
        Path(args.card).write_text(model_card(report, args.card_command))
        print(f"wrote {args.card}")
    print(f"wrote {Path(args.output) / 'rm_eval.json'} and {Path(args.output) / 'rm_eval.md'}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
