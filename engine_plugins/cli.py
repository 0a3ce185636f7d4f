"""Command line: ``engine-plugins <command>``.

Commands import their heavy dependencies lazily so ``--help`` and ``plugins`` stay fast.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path
from typing import Sequence


def _cmd_plugins(args: argparse.Namespace) -> int:
    from engine_plugins.plugins import get_plugin_manager

    pm = get_plugin_manager()
    if args.json:
        out = {kind: {name: {"source": reg.source, "description": reg.spec.description,
                             **({"role": reg.spec.role} if hasattr(reg.spec, "role") else {}),
                             **({"roles": list(reg.spec.roles)} if hasattr(reg.spec, "roles") else {})}
                      for name, reg in entries.items()}
               for kind, entries in pm.registry.items()}
        print(json.dumps(out, indent=2))
    else:
        print(pm.describe())
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    from engine_plugins.export.artifact import load_artifact, read_metadata

    meta = load_artifact(args.model).metadata if args.verify else read_metadata(args.model)
    if args.json:
        print(meta.to_json())
    else:
        print(meta.describe(header={"model": str(args.model)}))
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from engine_plugins.export.artifact import export_artifact
    from engine_plugins.plugins import get_plugin_manager

    spec = get_plugin_manager().get_method(args.method)
    config = json.loads(Path(args.config).read_text()) if args.config else {}
    if spec.build_metadata is None:
        raise SystemExit(f"engine-plugins: method '{args.method}' registers no metadata builder, so it cannot "
                         "be exported from the command line")
    model = spec.build_model(**config)
    if spec.script is not None:
        model = spec.script(model)
    path = export_artifact(model, spec.build_metadata(**config), args.output)
    print(f"wrote {path}")
    return 0


#: ``engine-plugins train METHOD CONFIG ...``: the module whose ``main(argv)`` trains each method.
TRAINERS = {"gpff": "engine_plugins.train.gpff", "propagator": "engine_plugins.train.propagator",
            "corrector": "engine_plugins.train.corrector", "rm": "engine_plugins.train.response_matching"}


def _cmd_train(args: argparse.Namespace) -> int:
    import importlib

    if args.method not in TRAINERS:
        raise SystemExit(f"engine-plugins train: no trainer for '{args.method}'; known: {', '.join(sorted(TRAINERS))}")
    return int(importlib.import_module(TRAINERS[args.method]).main([args.config, *args.options]) or 0)


def _cmd_bench(args: argparse.Namespace) -> int:
    if args.what == "engines":
        from engine_plugins.bench.engines import main as bench_engines

        return bench_engines(sizes=args.sizes, repeats=args.repeats, model=args.model, ranks=args.ranks,
                             output=args.output, rounds=args.rounds)
    if args.what == "propagate":
        from engine_plugins.bench.propagate import main as bench_propagate

        return bench_propagate(args.systems, engines=args.engines, jumps=args.jumps, md_steps=args.md_steps,
                               threads=args.threads, model_transport=args.model_transport,
                               corrector_transport=args.corrector_transport, model_cg=args.model_cg,
                               corrector_cg=args.corrector_cg,
                               no_corrector=args.no_corrector, output=args.output)
    if args.what == "generate":
        from engine_plugins.bench.generate import main as bench_generate

        return bench_generate(model=args.model, data=args.data, molecules=args.molecules, nfe=args.nfe,
                              sampler=args.sampler, sigma_start=args.sigma_start, rounds=args.rounds,
                              output=args.output, step=args.step)
    if args.what == "device":
        from engine_plugins.bench.device import TASKS, main as bench_device

        return bench_device(args.tasks or TASKS, replicas=args.replicas, jumps=args.jumps, md_steps=args.md_steps,
                            molecules=args.molecules, nfe=args.nfe, train_steps=args.train_steps,
                            molecules_dir=args.data, transport=args.transport, output=args.output)
    raise SystemExit(f"unknown benchmark '{args.what}'")


def _cmd_demo(args: argparse.Namespace) -> int:
    from engine_plugins.demo import run_demo

    return run_demo(Path(args.output), steps=args.steps)


def _cmd_simulate(args: argparse.Namespace) -> int:
    from engine_plugins.data.simulate import run_simulate_command

    return run_simulate_command(args)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from engine_plugins.analysis.evaluate import main as evaluate_main

    return evaluate_main(args)


def _cmd_adaptive_prior(args: argparse.Namespace) -> int:
    from engine_plugins.analysis.rollout import RolloutError, measure_case_prior, read_reference
    from engine_plugins.data.trajectories import load_cases

    try:
        for case in load_cases(list(args.cases)):
            ref = read_reference(case)
            picks = measure_case_prior(args.model, case, args.reference_ps, ref)
            values = measure_case_prior(args.model, case, args.reference_ps, ref, continuous=True)
            line = " ".join(f"prior_scale {t} {v:g}" for t, v in picks.items())
            rounded = f" (the rule's value before rounding to a choice: {values})" if values != picks else ""
            print(f"{case.case_id} ({case.temperature:g} K): {picks}{rounded}\n"
                  f"  LAMMPS:  fix ... ep/propagate ... {line}\n"
                  f"  OpenMM:  create_learned_integrator(..., prior_scale={picks})\n"
                  f"  evaluate: --prior-scale {' '.join(f'{t}={v:g}' for t, v in picks.items())}")
    except (RolloutError, OSError, ValueError) as exc:
        print(f"engine-plugins adaptive-prior: error: {exc}", file=sys.stderr)
        return 2
    return 0


def _cmd_contact(args: argparse.Namespace) -> int:
    from engine_plugins.analysis.evaluate import EvaluationError, cases_of_split
    from engine_plugins.data.trajectories import load_cases
    from engine_plugins.methods.propagator.contact import ContactError, measure_min_distances, write_with_contact

    try:
        cases = load_cases(list(args.cases))
        if args.split != "all":
            cases = cases_of_split(cases, args.model, args.split)
        table = measure_min_distances(cases, every=args.every)
        if args.fraction != 1.0:
            table = {k: round(v * args.fraction, 3) for k, v in table.items()}
        what = (f"{args.fraction:g} x the shortest distance per pair in every {args.every}th frame of "
                f"{len(cases)} {args.split if args.split != 'all' else 'given'} case(s)")
        write_with_contact(args.model, args.output, table, args.rounds, what)
    except (ContactError, EvaluationError, OSError, ValueError) as exc:
        print(f"engine-plugins contact: error: {exc}", file=sys.stderr)
        return 2
    print(f"{args.output}: role_fields.contact = min_distance {table} (angstrom), rounds {args.rounds}; "
          f"measured on {what}")
    return 0


def _cmd_corrector_noise(args: argparse.Namespace) -> int:
    from engine_plugins.analysis.cli_args import parse_type_values
    from engine_plugins.export.artifact import ArtifactError, load_artifact
    from engine_plugins.methods.propagator.sampler import SamplerError, write_corrector_noise_level

    try:
        if len(args.levels) == 1 and "=" not in args.levels[0]:
            level: object = float(args.levels[0])
        else:
            level = parse_type_values(args.levels, "corrector-noise level", "Li=0.5", "LEVEL")
        art = load_artifact(args.model)
        table = write_corrector_noise_level(art, args.output, level)
    except (ArtifactError, SamplerError, OSError, ValueError) as exc:
        print(f"engine-plugins corrector-noise: error: {exc}", file=sys.stderr)
        return 2
    print(f"{args.output}: role_fields.noise_level = {table} (angstrom; the level the corrector is told its input "
          "carries, in every engine)")
    return 0


def _cmd_adaptive_rule(args: argparse.Namespace) -> int:
    from engine_plugins.export.artifact import ArtifactError, copy_with_role_fields, load_artifact
    from engine_plugins.methods.propagator.prior import adaptive_width_rule, with_adaptive_rule

    try:
        art = load_artifact(args.model)
        if art.metadata.role != "propagator":
            raise ValueError(f"{args.model} has role '{art.metadata.role}', which has no adaptive prior. Fix: pass a "
                             "'propagator' artifact")
        if args.continuous is None and args.width_factor is None and args.width_exponent is None:
            raise ValueError("nothing to change. Fix: give --continuous on|off, --width-factor and/or --width-exponent")
        continuous = None if args.continuous is None else args.continuous == "on"
        prior = with_adaptive_rule(art.metadata.role_fields.get("prior") or {}, continuous, args.width_factor,
                                   args.width_exponent)
        copy_with_role_fields(art, args.output, {"prior": prior}, role="propagator")
    except (ArtifactError, OSError, ValueError) as exc:
        print(f"engine-plugins adaptive-rule: error: {exc}", file=sys.stderr)
        return 2
    adaptive = prior["adaptive"]
    factor, exponent = adaptive_width_rule(adaptive)
    print(f"{args.output}: role_fields.prior.adaptive.continuous = {adaptive.get('continuous', False)}, width_factor = "
          f"{factor:g}, width_exponent = {exponent:g} (every adaptive pick: {adaptive['rule']})")
    return 0


def _cmd_corrector_passes(args: argparse.Namespace) -> int:
    from engine_plugins.export.artifact import ArtifactError, copy_with_role_fields, load_artifact
    from engine_plugins.methods.propagator.sampler import SamplerError, passes_of

    try:
        art = load_artifact(args.model)
        passes_of(art, "corrector", args.passes)  # checks the number
        copy_with_role_fields(art, args.output, {"passes": int(args.passes)}, role="corrector")
    except (ArtifactError, SamplerError, OSError) as exc:
        print(f"engine-plugins corrector-passes: error: {exc}", file=sys.stderr)
        return 2
    print(f"{args.output}: role_fields.passes = {args.passes} (the corrector runs {args.passes} time(s) per jump "
          "in every engine unless corrector_passes says otherwise)")
    return 0


def _cmd_generate(args: argparse.Namespace) -> int:
    from engine_plugins.methods.gpff.commands import generate_main

    return generate_main(args)


def _cmd_evaluate_gpff(args: argparse.Namespace) -> int:
    from engine_plugins.methods.gpff.commands import evaluate_main

    return evaluate_main(args)


def _cmd_evaluate_rm(args: argparse.Namespace) -> int:
    from engine_plugins.methods.response_matching.evaluate import run as evaluate_rm_run

    return evaluate_rm_run(args)


def _cmd_data(args: argparse.Namespace) -> int:
    if args.family == "molecules":
        from engine_plugins.data.molecules import main as build
    else:
        from engine_plugins.data.crystals import main as build
    return build(args.rest)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="engine-plugins", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("plugins", help="list registered methods, backbones, engines and CG mappings, with sources")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=_cmd_plugins)

    s = sub.add_parser("inspect", help="print an artifact's metadata")
    s.add_argument("model")
    s.add_argument("--json", action="store_true", help="print the raw metadata JSON")
    s.add_argument("--no-verify", dest="verify", action="store_false",
                   help="read the metadata only (skip loading TorchScript and checking the content hash)")
    s.set_defaults(func=_cmd_inspect)

    s = sub.add_parser("export", help="build a registered method's model from a JSON config and export it")
    s.add_argument("method")
    s.add_argument("-c", "--config", help="JSON file with the method's settings")
    s.add_argument("-o", "--output", required=True)
    s.set_defaults(func=_cmd_export)

    s = sub.add_parser("train", help="train a method from a JSON/YAML config (checkpoints, resume) and export it",
                       description="train a method from a config file; options after CONFIG go to the method's "
                                   "trainer (e.g. --steps N --output-dir D --fresh; see `train METHOD CONFIG -h`)")
    s.add_argument("method", help=f"one of: {', '.join(sorted(TRAINERS))}")
    s.add_argument("config")
    s.add_argument("options", nargs=argparse.REMAINDER)
    s.set_defaults(func=_cmd_train)

    s = sub.add_parser("bench", help="benchmarks that print figures")
    s.add_argument("what", choices=["engines", "propagate", "generate", "device"])
    s.add_argument("--sizes", type=int, nargs="+", default=[256, 1024, 4000])
    s.add_argument("--repeats", type=int, default=5, help="evaluations per path per round")
    s.add_argument("--rounds", type=int, default=5, help="interleaved rounds (the median is reported)")
    s.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    s.add_argument("--model", default=None, help="pseudo_force artifact (default: the shipped NequIP demo model)")
    s.add_argument("--output", default=None, help="also write the figures as JSON here")
    from engine_plugins.analysis.cli_args import add_bench_propagate_arguments

    add_bench_propagate_arguments(s)
    from engine_plugins.methods.gpff.cli_args import add_bench_generate_arguments

    add_bench_generate_arguments(s)
    from engine_plugins.bench.device import TASKS

    g = s.add_argument_group("bench device (every standalone path and training loop on the CPU and on CUDA)")
    g.add_argument("--tasks", nargs="+", choices=TASKS, help="default: all")
    g.add_argument("--replicas", type=int, nargs="+", default=[1, 3], help="tile the propagated systems r x r x r")
    g.add_argument("--train-steps", type=int, default=20, help="timed optimizer steps (after 5 warm-up steps)")
    g.add_argument("--transport", help="transport trajectories (engine-plugins simulate transport) for train-propagator")
    s.set_defaults(func=_cmd_bench)

    s = sub.add_parser("demo", help="reference MD of a built-in system in LAMMPS and OpenMM with a shipped model")
    s.add_argument("--output", default="out/demo")
    s.add_argument("--steps", type=int, default=200)
    s.set_defaults(func=_cmd_demo)
    s = sub.add_parser("simulate", help="reference MD of the built-in example families (trajectories + case.json)")
    fam = s.add_subparsers(dest="family", required=True)
    t = fam.add_parser("transport", help="LAMMPS: mobile Li through an fcc framework, materials x temperatures")
    t.add_argument("--output", default="out/transport")
    t.add_argument("--preset", choices=["tiny", "standard", "large"], default="standard")
    t.add_argument("--materials", nargs="+",
                   help="built-in names, a set (standard [default], extra, wide = both, grid) "
                        "or a JSON file of {name, loading, sigma_mf[, eps_mf]}")
    t.add_argument("--temperatures", type=float, nargs="+", help="K (default 600 800 1000 1200)")
    t.add_argument("--n-cells", type=int)
    t.add_argument("--equil-steps", type=int)
    t.add_argument("--steps", type=int, help="production MD steps")
    t.add_argument("--dump-every", type=int)
    t.add_argument("--timestep", type=float, help="ps")
    t.add_argument("--ensemble", choices=["nvt", "nve"])
    t.add_argument("--seed", type=int)
    t.add_argument("--ranks", type=int, help="MPI ranks per case")
    t.add_argument("--jobs", type=int, default=1, help="cases run at the same time")
    t.add_argument("--unwrapped-reference", action="store_true", help="also dump LAMMPS's xu yu zu")
    t.add_argument("--no-progress", dest="progress", action="store_false")
    c = fam.add_parser("cg", help="OpenMM: all-atom TIP3P water, mapped to molecule centres of mass")
    c.add_argument("--system", choices=["water"], default="water")
    c.add_argument("--output", default="out/cg")
    c.add_argument("--preset", choices=["tiny", "standard", "large"], default="standard")
    c.add_argument("--temperatures", type=float, nargs="+", help="K (default 300)")
    c.add_argument("--box", type=float, help="cubic box edge, nm")
    c.add_argument("--equil-steps", type=int)
    c.add_argument("--steps", type=int, help="production MD steps")
    c.add_argument("--report-every", type=int)
    c.add_argument("--timestep", type=float, help="ps")
    c.add_argument("--platform", help="OpenMM platform (CPU, CUDA, ...)")
    c.add_argument("--threads", type=int, help="CPU platform threads")
    c.add_argument("--seed", type=int)
    c.add_argument("--no-progress", dest="progress", action="store_false")
    s.set_defaults(func=_cmd_simulate)

    s = sub.add_parser("evaluate", help="learned rollouts vs held-out reference MD: MSD, D, RDF JSD, drift; "
                       "JSON, markdown, PNGs")
    from engine_plugins.analysis.cli_args import add_arguments as _evaluate_arguments

    _evaluate_arguments(s)
    s.set_defaults(func=_cmd_evaluate)
    s = sub.add_parser("adaptive-prior", help="a propagator's adaptive prior pick for a material, measured on the "
                       "start of a reference run (prints the LAMMPS and OpenMM settings)")
    s.add_argument("model", help="propagator artifact trained with prior.adaptive")
    s.add_argument("cases", nargs="+", help="reference case directories (case.json) or their parent/manifest")
    s.add_argument("--reference-ps", type=float, default=10.0,
                   help="ps at the start of each reference run to measure on (default 10)")
    s.set_defaults(func=_cmd_adaptive_prior)
    s = sub.add_parser("adaptive-rule", help="write a copy of a propagator with its adaptive rule changed: the "
                       "unrounded value (--continuous on) or the nearest choice (off), the rule's width factor and "
                       "exponent; same weights")
    s.add_argument("model", help="propagator artifact trained with prior.adaptive")
    s.add_argument("--continuous", choices=("on", "off"), help="pick the rule's value itself (on) or the nearest "
                   "choice (off); default: as the model has it")
    s.add_argument("--width-factor", type=float, help="the rule's width_factor (pick = width_factor x r^width_exponent)")
    s.add_argument("--width-exponent", type=float, help="the rule's width_exponent")
    s.add_argument("--output", required=True, help="the new artifact (.pt)")
    s.set_defaults(func=_cmd_adaptive_rule)
    s = sub.add_parser("contact", help="a propagator's contact redraw: measure the shortest distance of every "
                       "species pair in its training MD and write a copy of the artifact that carries it")
    s.add_argument("model", help="propagator artifact")
    s.add_argument("cases", nargs="+", help="reference case directories (case.json) or their parent/manifest")
    s.add_argument("--output", required=True, help="the new artifact (.pt)")
    s.add_argument("--rounds", type=int, default=3, help="contact rounds per jump (default 3, the transport "
                   "model's pick on its validation materials; 0 stores the distances with the redraw off)")
    s.add_argument("--split", default="train", help="measure on the cases of this split of the model's "
                   "provenance.split (default train), or 'all' given cases")
    s.add_argument("--every", type=int, default=10, help="every n-th frame (default 10)")
    s.add_argument("--fraction", type=float, default=1.0, help="bound = this fraction of the measured distance")
    s.set_defaults(func=_cmd_contact)
    s = sub.add_parser("corrector-passes", help="write a copy of a corrector artifact that runs N passes per jump "
                       "(role_fields.passes; same weights)")
    s.add_argument("model", help="corrector artifact")
    s.add_argument("passes", type=int, help="passes per jump (1..16)")
    s.add_argument("--output", required=True, help="the new artifact (.pt)")
    s.set_defaults(func=_cmd_corrector_passes)
    s = sub.add_parser("corrector-noise", help="write a copy of a noise-conditioned corrector that assumes its input "
                       "carries another noise level (role_fields.noise_level; same weights)")
    s.add_argument("model", help="noise-conditioned corrector artifact (trained with model.noise_conditioning)")
    s.add_argument("levels", nargs="+", metavar="LEVEL",
                   help="one level in angstrom for every type, or TYPE=LEVEL for each type (e.g. Fw=0.05 Li=0.2)")
    s.add_argument("--output", required=True, help="the new artifact (.pt)")
    s.set_defaults(func=_cmd_corrector_noise)

    from engine_plugins.methods.gpff import cli_args as gpff_args

    s = sub.add_parser("generate", help="GPFF: molecules from noise or a partial structure (standalone, OpenMM, "
                                        "LAMMPS), written as xyz/extxyz/sdf with validity per check")
    gpff_args.add_generate_arguments(s)
    s.set_defaults(func=_cmd_generate)
    s = sub.add_parser("evaluate-gpff", help="GPFF validity vs function evaluations per sampler/engine on "
                                             "held-out molecules (PNG + JSON + markdown)")
    gpff_args.add_evaluate_arguments(s)
    s.set_defaults(func=_cmd_evaluate_gpff)

    s = sub.add_parser("evaluate-rm", help="RM crystal model: repair of noisy crystals (standalone, LAMMPS box/relax) "
                       "and screening ranks; JSON + markdown")
    from engine_plugins.methods.response_matching.evaluate import add_arguments as _evaluate_rm_arguments

    _evaluate_rm_arguments(s)
    s.set_defaults(func=_cmd_evaluate_rm)

    s = sub.add_parser("data", help="build the built-in structure sets: molecules (QM9-like) or crystals (prototypes)")
    s.add_argument("family", choices=["molecules", "crystals"])
    s.add_argument("rest", nargs=argparse.REMAINDER, help="OUT_DIR and options (see `engine-plugins data FAMILY -h`)")
    s.set_defaults(func=_cmd_data)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from engine_plugins.export.artifact import ArtifactError
    from engine_plugins.plugins.manager import DuplicatePluginError, UnknownPluginError

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        try:
            return int(args.func(args) or 0)
        except (ArtifactError, UnknownPluginError, DuplicatePluginError, FileNotFoundError) as exc:
            print(f"engine-plugins: error: {exc}", file=sys.stderr)
            return 2


if __name__ == "__main__":
    sys.exit(main())
