"""Argument definitions of ``engine-plugins generate``, ``evaluate-gpff`` and ``bench generate``,
free of heavy imports so that ``engine-plugins --help`` stays fast (handlers live in
``engine_plugins.methods.gpff.commands`` and ``engine_plugins.bench.generate``)."""

from __future__ import annotations

import argparse

SAMPLERS = ("ancestral", "heun", "denoise", "adaptive")  # = engine_plugins.methods.gpff.samplers.SAMPLERS
ENGINES = ("standalone", "openmm", "lammps")
ENGINE_SAMPLERS = ("ancestral", "denoise")
NFE_LADDER = (6, 16, 32, 64, 128, 256)


def add_generate_arguments(s: argparse.ArgumentParser) -> None:
    s.add_argument("model", help="GPFF pseudo_force artifact (.pt), e.g. exported_models/gpff_qm9like.pt")
    src = s.add_argument_group("what to generate")
    src.add_argument("--formula", nargs="+", help="molecular formulas, each from noise (e.g. C2H6O C6H6)")
    src.add_argument("--dataset", help="a molecule set built by `engine-plugins data molecules` (its formulas; "
                                       "graphs are compared with the source molecules)")
    src.add_argument("--split", default="test", help="split of --dataset (default: test, held out)")
    src.add_argument("--limit", type=int, help="at most this many molecules of --dataset (seeded subset)")
    src.add_argument("--structure", help="a user structure file (xyz, extxyz, pdb, sdf, LAMMPS data): refined, or "
                                         "completed with --add")
    src.add_argument("--fixed", help="atoms of --structure held exactly: 0-based indices/ranges (0,2,5-7) or 'given'")
    src.add_argument("--add", help="formula of atoms to generate around --structure (a scaffold plus new atoms)")
    src.add_argument("--n-samples", type=int, default=1, help="structures per formula / molecule / structure")
    smp = s.add_argument_group("sampling")
    smp.add_argument("--engine", choices=ENGINES, default="standalone")
    smp.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                     help="where the standalone sampler runs (auto: CUDA when available)")
    smp.add_argument("--sampler", choices=SAMPLERS, help="default: the model's (metadata)")
    smp.add_argument("--nfe", type=int, help="function evaluations (default: the model's)")
    smp.add_argument("--sigma-start", help="starting noise level in Å, or 'auto' (from the force of a complete "
                                           "structure); default: the model's generation.sigma_start (else "
                                           "sigma_max) from noise, auto for a structure")
    smp.add_argument("--eta", type=float, help="ancestral noise (default: the model's generation.eta, else 1 "
                                               "standalone / 0 engines; OpenMM takes eta > 0, LAMMPS only 0)")
    smp.add_argument("--step", type=float, help="denoise step (x += step*F; default from the model)")
    smp.add_argument("--renoise", type=float, default=0.0, help="denoise: re-noise fraction (standalone)")
    smp.add_argument("--schedule", choices=["karras", "geometric"])
    smp.add_argument("--max-step", type=float, help="trust region (Å) on each update (standalone)")
    smp.add_argument("--seed", type=int, default=0)
    s.add_argument("--output", "-o", default="out/generated.xyz", help=".xyz/.extxyz or .sdf")
    s.add_argument("--json", help="also write the validity summary and per-structure checks as JSON")
    s.add_argument("--quiet", action="store_true", help="no per-structure lines")



def add_evaluate_arguments(s: argparse.ArgumentParser) -> None:
    s.add_argument("model")
    s.add_argument("--data", default="out/molecules", help="molecule set (engine-plugins data molecules OUT)")
    s.add_argument("--split", default="test")
    s.add_argument("--limit", type=int, default=40, help="held-out molecules (seeded subset)")
    s.add_argument("--samplers", nargs="+", choices=SAMPLERS, default=list(SAMPLERS))
    s.add_argument("--nfe", type=int, nargs="+", default=list(NFE_LADDER))
    s.add_argument("--engines", nargs="+", choices=ENGINES, default=["standalone"],
                   help="engines besides standalone run ancestral (eta=0; OpenMM: --engine-eta) or denoise")
    s.add_argument("--engine-samplers", nargs="+", choices=ENGINE_SAMPLERS, default=["ancestral"])
    s.add_argument("--engine-nfe", type=int, nargs="+", help="NFE list for the engines (default: --nfe)")
    s.add_argument("--sigma-start", type=float, help="starting noise (Å; default: the model's "
                   "generation.sigma_start, else sigma_max)")
    s.add_argument("--eta", type=float, default=None, help="standalone ancestral eta (default: the model's "
                   "generation.eta, else 1)")
    s.add_argument("--engine-eta", type=float, default=0.0, help="ancestral eta inside OpenMM (noise from the "
                   "CustomIntegrator; default 0 = deterministic); LAMMPS always runs eta 0")
    s.add_argument("--step", type=float, help="denoise step in every engine (x += step*F; default: the model's "
                   "denoise_step, else 0.5)")
    s.add_argument("--renoise", type=float, default=0.0, help="denoise: re-noise fraction between steps "
                   "(x += renoise * sigma_k * noise; standalone rows only, the engines do not re-noise)")
    s.add_argument("--start", choices=("noise", "reference"), default="noise",
                   help="noise: generate from noise (default). reference: start every sampler at the held-out "
                   "molecule itself (sigma_start defaults to the model's sigma_min) and report the RMSD it moves: "
                   "an upper bound on validity, since the learned minimum must be the molecule")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--output", default="out/gpff_eval")


def add_bench_generate_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``engine-plugins bench generate`` (engine_plugins.bench.generate); ``--model`` and
    ``--output`` are the bench command's own."""
    g = p.add_argument_group("bench generate (GPFF molecules per second: standalone vs OpenMM vs LAMMPS)")
    g.add_argument("--data", default="out/molecules", help="molecule set whose held-out formulas are generated")
    g.add_argument("--molecules", type=int, default=16, help="molecules generated per engine")
    g.add_argument("--nfe", type=int, default=32, help="function evaluations per molecule")
    g.add_argument("--sampler", choices=ENGINE_SAMPLERS, default="ancestral",
                   help="deterministic engine schedule (ancestral = eta 0), the same in all three paths")
    g.add_argument("--sigma-start", type=float, help="starting noise (Å; default: the model's "
                   "generation.sigma_start, else sigma_max)")
    g.add_argument("--step", type=float, help="denoise step (x += step*F; default: the model's denoise_step)")
