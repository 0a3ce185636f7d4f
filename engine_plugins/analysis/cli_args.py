"""Argument definitions of the analysis commands, kept free of heavy imports so that
``engine-plugins --help`` stays fast (the commands import MDAnalysis, torch, ... when they run)."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of ``engine-plugins evaluate`` (handled by ``engine_plugins.analysis.evaluate.main``)."""
    p.add_argument("cases", nargs="+", help="reference case directories (case.json) or their parent/manifest")
    p.add_argument("--model", help="propagator artifact (role 'propagator')")
    p.add_argument("--corrector", help="corrector artifact applied after each jump (role 'corrector')")
    p.add_argument("--engine", nargs="+", choices=["standalone", "openmm", "lammps"], default=["standalone"],
                   help="one or more engines; with several, each writes OUTPUT/<engine>/ and engines.md compares them")
    p.add_argument("--output", default="out/evaluate")
    p.add_argument("--jumps", type=int, help="jumps per case (default: cover the reference duration)")
    p.add_argument("--duration-factor", type=float, default=1.0,
                   help="run this many times the reference duration (default 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--split", choices=["test", "val", "held-out"],
                   help="evaluate only these cases of the model's recorded training split (held-out = test + val)")
    p.add_argument("--rollouts", nargs="+", metavar="DIR",
                   help="evaluate rollouts already written under these folders (DIR/<case_id>/case.json, or an evaluate output with rollouts/<engine>/<case_id>); pool several runs by naming each; a case found twice is an error")
    p.add_argument("--r-max", type=float, default=6.0, help="RDF range, Å (at most half the cell)")
    p.add_argument("--nbins", type=int, default=60)
    p.add_argument("--fit-range", type=float, nargs=2, default=(0.2, 0.8), metavar=("LO", "HI"),
                   help="MSD fit window for D, fractions of t_ref")
    p.add_argument("--lag-fraction", type=float, default=1.0,
                   help="t_ref = this fraction of the reference duration (default 1: its longest lag)")
    p.add_argument("--flow-steps", type=int, help="override the model's number of flow steps")
    p.add_argument("--corrector-flow-steps", type=int,
                   help="override the corrector's number of flow steps (standalone and openmm engines)")
    p.add_argument("--ranks", type=int, default=1, help="MPI ranks (lammps engine)")
    p.add_argument("--platform", default=None, help="OpenMM platform (openmm engine)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="where the standalone engine runs (auto: CUDA when available)")
    p.add_argument("--prior-scale", nargs="+", metavar="TYPE=S",
                   help="override the propagator's prior scale of these types in every case (e.g. Li=6)")
    p.add_argument("--contact-rounds", type=int, metavar="N",
                   help="contact redraw rounds per jump (default: the propagator's role_fields.contact; "
                        "0 switches it off)")
    p.add_argument("--corrector-passes", type=int, metavar="N",
                   help="corrector passes per jump (default: the corrector's role_fields.passes, else 1)")
    p.add_argument("--adaptive-prior", type=float, metavar="PS",
                   help="per case, the model's adaptive prior pick measured on the first PS ps of the case's "
                        "reference run (a model trained with prior.adaptive)")
    p.add_argument("--append-card", help="append a section with the measured figures to this model card (.md)")
    p.add_argument("--no-progress", dest="progress", action="store_false")


def add_bench_propagate_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``engine-plugins bench propagate`` (engine_plugins.bench.propagate)."""
    g = p.add_argument_group("bench propagate (learned jumps vs reference MD)")
    g.add_argument("--systems", nargs="+", choices=["transport", "cg"], default=["transport", "cg"])
    g.add_argument("--engines", nargs="+", choices=["standalone", "openmm", "lammps"],
                   default=["standalone", "openmm", "lammps"])
    g.add_argument("--jumps", type=int, default=10, help="timed learned jumps per path (after 2 warm-up jumps)")
    g.add_argument("--md-steps", type=int, default=2000, help="timed reference MD steps")
    g.add_argument("--threads", type=int, default=1, help="CPU threads of every path")
    g.add_argument("--model-transport", help="propagator (default exported_models/propagator_transport.pt)")
    g.add_argument("--corrector-transport", help="corrector (default exported_models/corrector_transport.pt if present)")
    g.add_argument("--model-cg", help="propagator (default exported_models/propagator_cg_water.pt)")
    g.add_argument("--corrector-cg", help="corrector (default exported_models/corrector_cg_water.pt if present)")
    g.add_argument("--no-corrector", action="store_true", help="time the propagator alone")


def parse_type_values(items: list[str] | None, what: str = "--prior-scale", example: str = "Li=6",
                      value_name: str = "SCALE") -> dict[str, float] | None:
    """``["Li=6", "Fw=3.16"]`` -> ``{"Li": 6.0, "Fw": 3.16}`` (None stays None); ValueError naming the
    bad item and ``what`` it was given to."""
    if not items:
        return None
    out: dict[str, float] = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep or not name.strip():
            raise ValueError(f"{what} {item!r}: expected TYPE={value_name}, e.g. {example}")
    return out


def parse_prior_scale(items: list[str] | None) -> dict[str, float] | None:
    """``--prior-scale`` items -> {type: scale} (:func:`parse_type_values`)."""
    return parse_type_values(items, "--prior-scale", "Li=6")
