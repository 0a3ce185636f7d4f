"""Command-line front ends of GPFF generation: ``engine-plugins generate`` and
``engine-plugins evaluate-gpff`` (validity vs. function evaluations, PNG + JSON + markdown).

Kept out of ``cli.py`` so that file only registers the commands (it is shared by every method).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from engine_plugins.methods.gpff.generate import (
    ENGINE_SAMPLERS,
    ENGINES,
    GenerationError,
    GenerationTask,
    check_generated,
    formula_symbols,
    generate,
    load_gpff,
    sampler_settings,
    structures_out,
    write_generated,
)
from engine_plugins.methods.gpff.noise import rmsd
from engine_plugins.methods.gpff.samplers import SAMPLERS, SamplerError

NFE_LADDER = (6, 16, 32, 64, 128, 256)
#: where evaluate-gpff starts each sampler: from noise (generation) or at the held-out molecule itself
START_MODES = ("noise", "reference")


# ------------------------------------------------------------------------------------------------
# tasks from the command line
# ------------------------------------------------------------------------------------------------
def parse_indices(spec: str, n: int) -> np.ndarray:
    """``"0,2,5-7"`` (0-based, inclusive ranges) -> a bool mask of length ``n``."""
    mask = np.zeros(n, bool)
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            if "-" in part:
                a, b = (int(v) for v in part.split("-", 1))
                ids = range(a, b + 1)
            else:
                ids = [int(part)]
        except ValueError as exc:
            raise GenerationError(f"--fixed '{spec}': use 0-based indices and ranges like 0,2,5-7, or 'given'") from exc
        for i in ids:
            if not 0 <= i < n:
                raise GenerationError(f"--fixed: atom index {i} is out of range (the structure has {n} atoms)")
            mask[i] = True
    return mask


def dataset_tasks(data_dir: str, split: str = "test", limit: Optional[int] = None, seed: int = 0,
                  n_samples: int = 1) -> List[GenerationTask]:
    """One task per molecule (a seeded subset of ``limit`` when given) of a built molecule set."""
    from engine_plugins.data.molecules import load_molecule_dataset

    mols = load_molecule_dataset(data_dir, split)
    order = np.arange(len(mols)) if limit is None or limit >= len(mols) else \
        np.sort(np.random.default_rng(seed).permutation(len(mols))[:limit])
    return [GenerationTask(list(mols[i].symbols), source=mols[i], name=f"{mols[i].name or i}#{k}")
            for i in order for k in range(n_samples)]


def cli_tasks(args: argparse.Namespace, type_names: Sequence[str]) -> List[GenerationTask]:
    from engine_plugins.data.molecules import StructureError, read_structures

    tasks: List[GenerationTask] = []
    for f in args.formula or []:
        sym = formula_symbols(f)
        tasks += [GenerationTask(sym, name=f"{f}#{k}") for k in range(args.n_samples)]
    if args.dataset:
        tasks += dataset_tasks(args.dataset, args.split, args.limit, args.seed, args.n_samples)
    if args.structure:
        try:
            structs = read_structures(args.structure, min_distance=0.0)
        except StructureError as exc:
            raise GenerationError(str(exc)) from exc
        if not structs:
            raise GenerationError(f"structure file '{args.structure}' holds no structure (empty structure)")
        for s in structs:
            label = s.name or Path(args.structure).name
            if s.periodic or s.cell is not None and np.abs(s.cell).sum() > 0 and any(s.pbc):
                raise GenerationError(f"'{label}' has a periodic cell but the model is non-periodic (molecules in "
                                      "vacuum). Fix: remove the cell / set pbc to False, or use a periodic model")
            if s.n_atoms == 0:
                raise GenerationError(f"'{label}' is empty: it has no atoms")
            if not np.isfinite(s.positions).all():
                raise GenerationError(f"'{label}' has NaN/inf coordinates. Fix: give finite positions (Å); to "
                                      "generate atoms, leave them out and use --add")
            symbols, init = list(s.symbols), np.array(s.positions, float)
            fixed = None
            if args.fixed:
                fixed = (np.ones(len(symbols), bool) if args.fixed == "given"
                         else parse_indices(args.fixed, len(symbols)))
            if args.add:
                extra = formula_symbols(args.add)
                symbols += extra
                init = np.concatenate([init, np.full((len(extra), 3), np.nan)])
                if fixed is not None:
                    fixed = np.concatenate([fixed, np.zeros(len(extra), bool)])
            tasks += [GenerationTask(list(symbols), init.copy(), None if fixed is None else fixed.copy(),
                                     source=s if (s.smiles or s.bonds) and not args.add else None,
                                     name=f"{label}#{k}") for k in range(args.n_samples)]
    elif args.add or args.fixed:
        raise GenerationError("--add and --fixed need --structure FILE (the given atoms)")
    if not tasks:
        raise GenerationError("nothing to generate: give --formula, --dataset or --structure")
    return tasks


# ------------------------------------------------------------------------------------------------
# engine-plugins generate
# ------------------------------------------------------------------------------------------------
def _sigma_arg(v: Optional[str]):
    if v is None or v == "auto":
        return v
    try:
        return float(v)
    except ValueError as exc:
        raise GenerationError(f"--sigma-start '{v}': give a number (Å) or 'auto'") from exc


def print_summary(summary: Dict[str, Any], header: str, file=None) -> None:
    from engine_plugins.analysis.validity import MOLECULE_CHECKS

    file = file or sys.stdout
    print(header, file=file)
    print(f"  valid (sanitizes, neutral, no radicals, one fragment): {summary.get('valid', 0):.1%} of "
          f"{summary['n']}", file=file)
    for c in MOLECULE_CHECKS:
        v = summary.get(c)
        print(f"  {c:<14} {'n/a (no source)' if v is None else f'{v:.1%}'}", file=file)
    if summary.get("valid_and_same_graph") is not None:
        print(f"  valid and same graph as the source: {summary['valid_and_same_graph']:.1%}", file=file)


def generate_main(args: argparse.Namespace) -> int:
    try:
        art = load_gpff(args.model)
        tasks = cli_tasks(args, art.metadata.type_names)
        res = generate(art, tasks, engine=args.engine, sampler=args.sampler, nfe=args.nfe,
                       sigma_start=_sigma_arg(args.sigma_start), seed=args.seed, eta=args.eta, renoise=args.renoise,
                       step=args.step, schedule=args.schedule, max_step=args.max_step,
                       device=None if getattr(args, "device", "auto") == "auto" else args.device)
    except (GenerationError, SamplerError) as exc:
        print(f"engine-plugins generate: error: {exc}", file=sys.stderr)
        return 2
    summary, results = check_generated(tasks, res.positions)
    structs = structures_out(tasks, res.positions, results, {"engine": res.engine, "sampler": res.sampler,
                                                             "nfe": res.nfe})
    try:
        path = write_generated(args.output, structs, results)
    except GenerationError as exc:
        print(f"engine-plugins generate: error: {exc}", file=sys.stderr)
        return 2
    if not args.quiet:
        for t, r in zip(tasks, results):
            print(f"{t.name}: {r.summary()}" + (f"; smiles {r.smiles}" if r.smiles else ""))
    print_summary(summary, f"{len(tasks)} structures, engine {res.engine}, sampler {res.sampler}, NFE {res.nfe}, "
                           f"{res.seconds:.2f} s ({len(tasks) / res.seconds:.2f} molecules/s) -> {path}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"summary": summary, "engine": res.engine, "sampler": res.sampler,
                                               "nfe": res.nfe, "seconds": res.seconds, "info": res.info,
                                               "structures": [r.as_dict() for r in results]}, indent=1, default=str))
    return 0


# ------------------------------------------------------------------------------------------------
# engine-plugins evaluate-gpff
# ------------------------------------------------------------------------------------------------
def evaluate_validity(model: Any, tasks: Sequence[GenerationTask], samplers: Sequence[str], nfes: Sequence[int],
                      engines: Sequence[str] = ("standalone",), engine_samplers: Sequence[str] = ("ancestral",),
                      engine_nfes: Optional[Sequence[int]] = None, sigma_start: Optional[float] = None,
                      eta: Optional[float] = None, seed: int = 0, engine_eta: float = 0.0,
                      step: Optional[float] = None, renoise: float = 0.0,
                      start: str = "noise") -> List[Dict[str, Any]]:
    """Validity per (engine, sampler, NFE) on ``tasks``: rows of summaries, timings and the exact NFE.
    ``engine_eta``: ancestral noise inside OpenMM (LAMMPS always runs eta 0). ``step``: the denoise step
    (default: the model's). ``renoise``: the standalone denoise sampler's re-noise fraction.

    ``start="reference"`` runs every sampler from each source molecule's own structure instead of from
    noise (``sigma_start`` defaults to the model's ``sigma_min`` then) and adds each row's RMSD from
    that structure. Why: a sampler that finds the right basin keeps the molecule only if the learned
    field's minimum is the molecule, so this validity bounds generation's from above and the RMSD shows
    how far the learned minima sit from the training structures."""
    from tqdm.auto import tqdm

    art = load_gpff(model)
    if start not in START_MODES:
        raise GenerationError(f"start '{start}': use one of {', '.join(START_MODES)}")
    reference = None
    if start == "reference":
        tasks, reference = reference_tasks(tasks)
        sigma_start = starting_sigma(art, start, sigma_start)
    jobs = [("standalone", s, n) for s in samplers for n in nfes] if "standalone" in engines else []
    for e in engines:
        if e != "standalone":
            jobs += [(e, s, n) for s in engine_samplers for n in (engine_nfes or nfes)]
    rows = []
    for engine, smp, nfe in tqdm(jobs, desc="evaluate-gpff", unit="run"):
        e_eta = eta if engine == "standalone" else (float(engine_eta) if engine == "openmm" else 0.0)
        res = generate(art, tasks, engine=engine, sampler=smp, nfe=nfe, sigma_start=sigma_start, seed=seed,
                       eta=e_eta, step=step,
                       renoise=renoise if engine == "standalone" and smp == "denoise" else 0.0)
        summary, _ = check_generated(tasks, res.positions)
        row = {"engine": engine, "sampler": smp + ("" if engine == "standalone" or smp != "ancestral"
                                                   else f" (eta={e_eta:g})"),
               "nfe_requested": nfe, "nfe": res.nfe, "seconds": round(res.seconds, 3),
               "molecules_per_s": round(len(tasks) / res.seconds, 4), "start": start, **summary}
        if reference is not None:
            d = np.array([float(rmsd(torch.as_tensor(p), torch.as_tensor(x))) for p, x in zip(res.positions, reference)])
            row.update(rmsd_from_reference_median=round(float(np.median(d)), 5),
                       rmsd_from_reference_max=round(float(d.max()), 5))
        rows.append(row)
    return rows


def starting_sigma(art: Any, start: str, sigma_start: Optional[float]) -> float:
    """The σ a run starts at: the given one, else the model's ``sigma_min`` when starting at the
    molecules, else its ``generation.sigma_start`` (else ``sigma_max``), as :func:`generate` defaults."""
    if sigma_start is not None:
        return float(sigma_start)
    st = sampler_settings(art, None, 1)
    return st["sigma_min"] if start == "reference" else st["sigma_start"]


def reference_tasks(tasks: Sequence[GenerationTask]) -> Tuple[List[GenerationTask], List[np.ndarray]]:
    """The tasks started at their source molecules' own coordinates (every atom given, none fixed)."""
    out, ref = [], []
    for t in tasks:
        pos = getattr(t.source, "positions", None)
        if pos is None or np.asarray(pos).shape != (len(t.symbols), 3):
            raise GenerationError(f"structure '{t.name}': starting from the reference needs its source molecule's "
                                  "coordinates (a molecule set or structure file), not only a formula or SMILES")
        x = np.array(pos, float)
        out.append(GenerationTask(list(t.symbols), init=x.copy(), source=t.source, name=t.name))
        ref.append(x)
    return out, ref


def plot_validity(rows: Sequence[Dict[str, Any]], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    keys = sorted({(r["engine"], r["sampler"]) for r in rows})
    for eng, smp in keys:
        rr = sorted((r for r in rows if r["engine"] == eng and r["sampler"] == smp), key=lambda r: r["nfe"])
        ax.plot([r["nfe"] for r in rr], [100 * r["valid"] for r in rr], marker="o" if eng == "standalone" else "s",
                ls="-" if eng == "standalone" else "--", label=f"{smp} ({eng})")
    ax.axhline(50, color="grey", lw=0.8, ls=":")
    ax.axhline(99, color="grey", lw=0.8, ls=":")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("function evaluations (NFE)")
    ax.set_ylabel("valid molecules (%)")
    ax.set_ylim(-2, 102)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def markdown_table(rows: Sequence[Dict[str, Any]]) -> str:
    nfes = sorted({r["nfe_requested"] for r in rows})
    keys = sorted({(r["engine"], r["sampler"]) for r in rows}, key=lambda k: (k[0] != "standalone", k))
    lines = ["| engine | sampler | " + " | ".join(f"NFE {n}" for n in nfes) + " |",
             "|---|---|" + "---|" * len(nfes)]
    for eng, smp in keys:
        cells = []
        for n in nfes:
            r = [x for x in rows if x["engine"] == eng and x["sampler"] == smp and x["nfe_requested"] == n]
            same = 100 * (r[0]["valid_and_same_graph"] or 0) if r else 0
            cells.append("" if not r else f"{100 * r[0]['valid']:.0f} % ({same:.0f} %)")
        lines.append(f"| {eng} | {smp} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def reference_lines(rows: Sequence[Dict[str, Any]]) -> List[str]:
    """Markdown lines for a run started at the molecules: how far each row moved from them."""
    out = ["Every sampler started at the held-out molecule's own structure (an upper bound on generation: the "
           "learned minimum must be the molecule). RMSD from it after the run (Å, Kabsch):", ""]
    for r in rows:
        out.append(f"- {r['engine']} {r['sampler']} NFE {r['nfe_requested']}: median "
                   f"{r['rmsd_from_reference_median']:.3f}, max {r['rmsd_from_reference_max']:.3f}")
    return out + [""]


def evaluate_main(args: argparse.Namespace) -> int:
    try:
        art = load_gpff(args.model)
        tasks = dataset_tasks(args.data, args.split, args.limit, args.seed)
        t0 = time.time()
        rows = evaluate_validity(art, tasks, args.samplers, args.nfe, args.engines, args.engine_samplers,
                                 args.engine_nfe, args.sigma_start, args.eta, args.seed,
                                 getattr(args, "engine_eta", 0.0), getattr(args, "step", None),
                                 getattr(args, "renoise", 0.0), getattr(args, "start", "noise"))
    except (GenerationError, SamplerError) as exc:
        print(f"engine-plugins evaluate-gpff: error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    rf = art.metadata.role_fields
    gen = rf.get("generation") or {}
    start = getattr(args, "start", "noise")
    s0 = starting_sigma(art, start, args.sigma_start)
    title = (f"{Path(args.model).name}: {len(tasks)} held-out molecules ({args.split}), sigma_start {s0} Å"
             + (", started at the molecules themselves" if start == "reference" else ""))
    plot_validity(rows, out / "validity_vs_nfe.png", title)
    meta = {"model": str(args.model), "data": args.data, "split": args.split, "n_molecules": len(tasks),
            "sigma_start": s0, "seed": args.seed,
            "eta_standalone": args.eta if args.eta is not None else (float(gen["eta"]) if gen.get("eta") is not None
                                                                     else 1.0),
            "eta_openmm": getattr(args, "engine_eta", 0.0), "eta_lammps": 0.0,
            "denoise_step": sampler_settings(art, "denoise", 1, step=getattr(args, "step", None))["step"],
            "denoise_renoise_standalone": getattr(args, "renoise", 0.0), "start": start,
            "wall_s": round(time.time() - t0, 1),
            "validity": "RDKit bond perception from 3D, sanitizes, neutral, no radicals, one fragment; "
                        "in parentheses: valid and the same molecular graph as the source molecule",
            "command": "engine-plugins evaluate-gpff " + " ".join(sys.argv[2:]) if len(sys.argv) > 2 else ""}
    (out / "validity.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    md = [f"# GPFF validity vs function evaluations", "", f"{title}.", "",
          "Cells: valid % (valid and same graph as the source %).", "", markdown_table(rows), "",
          *(reference_lines(rows) if start == "reference" else []),
          f"Wall time {meta['wall_s']} s. Molecules per second per run are in validity.json."]
    (out / "validity.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    print(f"wrote {out / 'validity_vs_nfe.png'}, {out / 'validity.json'}, {out / 'validity.md'}")
    return 0


__all__ = ["NFE_LADDER", "START_MODES", "cli_tasks", "dataset_tasks",
           "evaluate_main", "evaluate_validity", "generate_main", "markdown_table", "parse_indices", "plot_validity",
           "reference_lines", "reference_tasks", "starting_sigma"]
