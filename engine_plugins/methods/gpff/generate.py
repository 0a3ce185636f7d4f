"""GPFF generation: molecules from noise (or from a partial structure) through the standalone
samplers, OpenMM or LAMMPS, with validity checks per structure.

Why this module exists: the samplers (``samplers.py``) and the engine relaxations
(``engines/relax.py``) work on one composition at a time; generating a data set's worth of
molecules needs (1) a prior that starts each molecule at the right size, (2) many molecules per
model call / per engine context, and (3) one place that turns a sampler choice into the same
update schedule in every engine, so the engines can be checked against the standalone sampler.

Prior (documented deviation from a plain ``N(0, sigma_max^2)`` start): the variance-exploding
marginal at noise ``sigma`` is the data convolved with ``N(0, sigma^2)``, so unknown atoms start
from an isotropic Gaussian around the known atoms' centroid (or the origin) with per-coordinate
variance ``sigma^2 + a * N^(2/3)`` (``a``: a fit of a molecule's own per-coordinate variance vs.
its atom count ``N`` on the training set, stored in the artifact as ``role_fields.prior``;
0.273 A^2 on the QM9-like set). The model still gets no time input.

Engine schedules: ``denoise`` is ``x <- x + step * F`` each step; ``ancestral`` with ``eta = 0``
(the deterministic, noise-free limit: an Euler step of the probability-flow ODE,
``x <- x + (1 - sigma_{k+1} / sigma_k) F``, last step ``x + F``) is a per-step coefficient that
OpenMM sets as a ``CustomIntegrator`` global and LAMMPS as the ``fix nve`` timestep of each
``run 1``. Stochastic ancestral (``eta > 0``) runs standalone and in OpenMM (the same ladder, plus
``s_up * gaussian`` per step from the CustomIntegrator's own random numbers: the same distribution,
not the same draws); ``heun`` and ``adaptive`` sampling are standalone only.
Many molecules share one engine context, placed on a grid far enough apart that no pair of
atoms from different molecules comes within the cutoff.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from engine_plugins.methods.gpff.samplers import (SAMPLERS, SamplerError, _Frame, CountedForce, ancestral_step,
                                                  sample, sigma_ladder)

ENGINES = ("standalone", "openmm", "lammps")
ENGINE_SAMPLERS = ("ancestral", "denoise")
#: per-coordinate variance of a clean molecule ~ PRIOR_COEFF * N^(2/3) A^2 (QM9-like training set fit)
PRIOR_COEFF_DEFAULT = 0.273


class GenerationError(ValueError):
    """A generation request that cannot run (the message names the problem and the fix)."""


@dataclass
class GenerationTask:
    """One structure to generate: its atoms, what is known, what is held, what it should become."""

    symbols: List[str]
    init: Optional[np.ndarray] = None  # [N, 3] A; NaN rows: unknown (from noise). None: all unknown
    fixed: Optional[np.ndarray] = None  # [N] bool, held exactly (need a position)
    source: Any = None  # Structure with SMILES/bonds (or a SMILES) for the formula/graph checks
    name: str = ""


@dataclass
class GenerationResult:
    """Generated positions per task, the exact NFE per molecule and the wall time of the run."""

    positions: List[np.ndarray]
    nfe: int
    engine: str
    sampler: str
    seconds: float
    info: Dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------------
# model, tasks and prior
# ------------------------------------------------------------------------------------------------
def load_gpff(model: Any):
    """The artifact (loaded once) of a non-periodic ``pseudo_force`` model, with clear errors."""
    from engine_plugins.export.artifact import Artifact, load_artifact

    art = model if isinstance(model, Artifact) else load_artifact(model)
    if art.metadata.role != "pseudo_force":
        raise GenerationError(f"model role is '{art.metadata.role}'; generation needs a 'pseudo_force' model")
    if art.metadata.periodicity == "periodic":
        raise GenerationError("this model is periodic (crystals); molecule generation needs a non-periodic "
                              "pseudo-force model. Fix: use a molecule model, or the crystal relaxation")
    return art


def prior_coeff(art: Any) -> float:
    """``a`` of the prior's size term (``role_fields.prior.coord_var_coeff``; the QM9-like fit otherwise)."""
    rf = getattr(getattr(art, "metadata", None), "role_fields", {}) or {}
    return float((rf.get("prior") or {}).get("coord_var_coeff", PRIOR_COEFF_DEFAULT))


def check_task(task: GenerationTask, type_names: Sequence[str], min_distance: float = 0.5) -> None:
    """Clear errors for an empty structure, unknown elements, bad shapes, inf, overlapping given atoms."""
    label = f"structure '{task.name}'" if task.name else "structure"
    if len(task.symbols) == 0:
        raise GenerationError(f"{label} is empty: give at least one atom (a formula or a structure file)")
    unknown = sorted({s for s in task.symbols if s not in type_names})
    if unknown:
        raise GenerationError(f"{label}: element(s) {', '.join(unknown)} not known to the model (it knows "
                              f"{', '.join(type_names)}). Fix: use a model trained on them")
    n = len(task.symbols)
    if task.init is not None:
        x = np.asarray(task.init, float)
        if x.shape != (n, 3):
            raise GenerationError(f"{label}: positions have shape {x.shape}, expected ({n}, 3)")
        if np.isinf(x).any():
            raise GenerationError(f"{label}: infinite coordinates; give finite positions (NaN rows = atoms to "
                                  "generate)")
        given = np.flatnonzero(np.isfinite(x).all(1))
        if len(given) > 1:
            d = np.linalg.norm(x[given, None] - x[None, given], axis=-1) + np.eye(len(given)) * 1e9
            if d.min() < min_distance:
                i, j = np.unravel_index(np.argmin(d), d.shape)
                raise GenerationError(
                    f"{label}: atoms {given[i]} ({task.symbols[given[i]]}) and {given[j]} ({task.symbols[given[j]]}) "
                    f"overlap ({d[i, j]:.3f} A < {min_distance} A). Fix: remove the duplicate or give them as "
                    "unknown (NaN) to be generated")
    if task.fixed is not None:
        fx = np.asarray(task.fixed, bool)
        if fx.shape != (n,):
            raise GenerationError(f"{label}: fixed mask has shape {fx.shape}, expected ({n},)")
        if fx.all():
            raise GenerationError(f"{label}: every atom is fixed; nothing to generate")
        if fx.any() and (task.init is None or not np.isfinite(np.asarray(task.init)[fx]).all()):
            raise GenerationError(f"{label}: fixed atoms need given (finite) positions")


def start_positions(task: GenerationTask, sigma0: float, coeff: float, rng: np.random.Generator) -> np.ndarray:
    """Start structure: given atoms where known, unknown atoms from the prior (module docstring)."""
    n = len(task.symbols)
    x = np.full((n, 3), np.nan) if task.init is None else np.array(task.init, float)
    unknown = ~np.isfinite(x).all(1)
    if unknown.any():
        centre = x[~unknown].mean(0) if (~unknown).any() else np.zeros(3)
        std = math.sqrt(sigma0 ** 2 + coeff * n ** (2.0 / 3.0))
        eps = rng.standard_normal((int(unknown.sum()), 3))
        if not (~unknown).any():
            eps -= eps.mean(0)
        x[unknown] = centre + std * eps
    return x


def formula_symbols(formula: str) -> List[str]:
    """``"C2H6O"`` -> ``['C', 'C', 'H', ..., 'O']`` (ASE's formula parser; clear error when it fails)."""
    from ase.formula import Formula

    try:
        counts = Formula(formula).count()
    except Exception as exc:
        raise GenerationError(f"cannot parse formula '{formula}': {exc}") from exc
    out: List[str] = []
    for el, k in counts.items():
        out += [el] * int(k)
    if not out:
        raise GenerationError(f"formula '{formula}' has no atoms")
    return out


# ------------------------------------------------------------------------------------------------
# schedules shared by the engines and the standalone sampler
# ------------------------------------------------------------------------------------------------
def sampler_settings(art: Any, sampler: Optional[str], nfe: Optional[int], sigma_min: Optional[float] = None,
                     schedule: Optional[str] = None, rho: Optional[float] = None,
                     step: Optional[float] = None) -> Dict[str, Any]:
    """Sampler defaults from the artifact metadata, overridden by the arguments."""
    rf = art.metadata.role_fields
    sch = rf.get("sampler_schedule", {})
    out = {"sampler": sampler or rf.get("default_sampler", "heun"),
           "nfe": int(nfe if nfe is not None else rf.get("default_nfe", 32)),
           "sigma_min": float(sigma_min if sigma_min is not None else rf.get("sigma_min", 0.05)),
           "sigma_max": float(rf.get("sigma_max", 3.0)),
           # the tested starting level of generation from noise (model card), else sigma_max
           "sigma_start": float((rf.get("generation") or {}).get("sigma_start", rf.get("sigma_max", 3.0))),
           "schedule": schedule or sch.get("kind", "karras"),
           "rho": float(rho if rho is not None else sch.get("rho", 7.0)),
           "step": float(step if step is not None else rf.get("denoise_step", 0.5))}
    if out["sampler"] not in SAMPLERS:
        raise GenerationError(f"sampler '{out['sampler']}': use one of {', '.join(SAMPLERS)}")
    if out["nfe"] < 1:
        raise GenerationError(f"nfe={out['nfe']}: need at least one function evaluation")
    return out


def engine_coefficients(sampler: str, nfe: int, sigma0: float, sigma_min: float, schedule: str = "karras",
                        rho: float = 7.0, step: float = 0.5) -> List[float]:
    """Per-step ``c_k`` of ``x <- x + c_k F`` (one evaluation each) for the engine samplers.

    ``denoise``: ``c_k = step``; ``ancestral`` (``eta = 0``): ``c_k = 1 - sigma_{k+1}/sigma_k`` on the
    same ladder as :func:`~engine_plugins.methods.gpff.samplers.sample` (last ``c = 1``)."""
    if sampler == "denoise":
        return [float(step)] * int(nfe)
    if sampler == "ancestral":
        sig = sigma_ladder(int(nfe), sigma0, min(sigma_min, sigma0), schedule, rho).tolist()
        return [ancestral_step(sig[k], sig[k + 1], 0.0)[0] for k in range(int(nfe))]  # = 1 - sigma_{k+1}/sigma_k
    raise GenerationError(f"sampler '{sampler}' does not run inside the engines; use one of "
                          f"{', '.join(ENGINE_SAMPLERS)} (ancestral with eta=0) or --engine standalone")


def engine_ancestral_noise(nfe: int, sigma0: float, sigma_min: float, eta: float, schedule: str = "karras",
                           rho: float = 7.0) -> Tuple[List[float], List[float]]:
    """``(c_k, s_up_k)`` of the stochastic ancestral step ``x <- x + c_k F + s_up_k z`` (``z`` ~ N(0, 1) per
    coordinate): the standalone sampler's ladder and step (:func:`~engine_plugins.methods.gpff.samplers.ancestral_step`)."""
    sig = sigma_ladder(int(nfe), sigma0, min(sigma_min, sigma0), schedule, rho).tolist()
    steps = [ancestral_step(sig[k], sig[k + 1], float(eta)) for k in range(int(nfe))]
    return [c for c, _ in steps], [u for _, u in steps]


def estimate_sigma(art: Any, tasks: Sequence[GenerationTask], starts: Sequence[np.ndarray]) -> float:
    """Noise level of complete start structures from one force evaluation (``|F|^2 / dof``)."""
    x, types, seg, fixed = _pack(art, tasks, starts)
    meta = art.metadata
    f = CountedForce(art.module, types, meta.cutoff, getattr(torch, meta.dtype), torch.device("cpu"), seg)
    fr = _Frame((~fixed).to(torch.float64), torch.Generator(), (1,) + tuple(x.shape), torch.float64,
                torch.device("cpu"), None, seg)
    F = f(x.unsqueeze(0))
    return float(fr.sigma_estimate(F, bool(meta.role_fields.get("noise", {}).get("align_target", True))).max())


# ------------------------------------------------------------------------------------------------
# running
# ------------------------------------------------------------------------------------------------
def _pack(art: Any, tasks: Sequence[GenerationTask], starts: Sequence[np.ndarray]):
    names = list(art.metadata.type_names)
    types = torch.tensor([names.index(s) for t in tasks for s in t.symbols], dtype=torch.long)
    seg = torch.cat([torch.full((len(t.symbols),), k, dtype=torch.long) for k, t in enumerate(tasks)])
    x = torch.tensor(np.concatenate(starts), dtype=torch.float64)
    fixed = torch.tensor(np.concatenate([np.zeros(len(t.symbols), bool) if t.fixed is None
                                         else np.asarray(t.fixed, bool) for t in tasks]))
    return x, types, seg, fixed


def _split(x: np.ndarray, tasks: Sequence[GenerationTask]) -> List[np.ndarray]:
    out, o = [], 0
    for t in tasks:
        out.append(np.array(x[o:o + len(t.symbols)], float))
        o += len(t.symbols)
    return out


def _grid_offsets(tasks: Sequence[GenerationTask], starts: Sequence[np.ndarray], cutoff: float) -> np.ndarray:
    """Centres on a cubic grid, spaced by the cutoff plus twice the largest start radius plus 10 A."""
    radius = max(float(np.linalg.norm(s - s.mean(0), axis=1).max()) for s in starts)
    spacing = cutoff + 2.0 * radius + 10.0
    m = len(tasks)
    side = max(1, math.ceil(m ** (1.0 / 3.0) - 1e-9))
    idx = np.array([(k % side, (k // side) % side, k // (side * side)) for k in range(m)], float)
    return idx * spacing - np.array([s.mean(0) for s in starts])


def run_standalone(art: Any, tasks: Sequence[GenerationTask], starts: Sequence[np.ndarray], settings: Dict[str, Any],
                   sigma0: Union[float, str], seed: int = 0, eta: float = 1.0, renoise: float = 0.0,
                   max_step: Optional[float] = None, batch_atoms: int = 4000,
                   device: Union[str, torch.device, None] = None) -> GenerationResult:
    """All tasks side by side through :func:`sample` (chunks of about ``batch_atoms`` atoms), on
    ``device`` (default: CUDA when available, else the CPU)."""
    dev = device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu")
    t0 = time.perf_counter()
    out: List[np.ndarray] = []
    nfe, info = 0, {}
    chunk: List[int] = []
    chunks: List[List[int]] = []
    for k, t in enumerate(tasks):
        if chunk and sum(len(tasks[j].symbols) for j in chunk) + len(t.symbols) > batch_atoms:
            chunks.append(chunk)
            chunk = []
        chunk.append(k)
    if chunk:
        chunks.append(chunk)
    for c, ids in enumerate(chunks):
        sub = [tasks[k] for k in ids]
        x, types, seg, fixed = _pack(art, sub, [starts[k] for k in ids])
        r = sample(art, types, init_positions=x, sampler=settings["sampler"], nfe=settings["nfe"],
                   seed=seed + c, fixed_mask=fixed if bool(fixed.any()) else None, sigma_start=sigma0,
                   sigma_min=settings["sigma_min"], sigma_max=max(settings["sigma_max"], float(sigma0)
                                                                  if not isinstance(sigma0, str) else 0.0),
                   schedule=settings["schedule"], rho=settings["rho"], eta=eta, step=settings["step"],
                   renoise=renoise, max_step=max_step, segments=seg, device=dev)
        out += _split(r.positions[0].numpy(), sub)
        nfe, info = r.nfe, r.info
    return GenerationResult(out, nfe, "standalone", settings["sampler"], time.perf_counter() - t0, dict(info))


def _packed(tasks: Sequence[GenerationTask], starts: Sequence[np.ndarray], cutoff: float
            ) -> Tuple[np.ndarray, np.ndarray, List[str], np.ndarray]:
    """Every molecule in one engine run: (offsets, positions on a grid beyond the cutoff, symbols, fixed mask)."""
    offsets = _grid_offsets(tasks, starts, cutoff)
    pos = np.concatenate([s + o for s, o in zip(starts, offsets)])
    types = [s for t in tasks for s in t.symbols]
    fixed = np.concatenate([np.zeros(len(t.symbols), bool) if t.fixed is None else np.asarray(t.fixed, bool)
                            for t in tasks])
    return offsets, pos, types, fixed


def run_openmm(art: Any, tasks: Sequence[GenerationTask], starts: Sequence[np.ndarray], coeffs: Sequence[float],
               sampler: str, platform: str = "Reference", noise: Optional[Sequence[float]] = None,
               seed: int = 0) -> GenerationResult:
    """One OpenMM context holds every molecule; a CustomIntegrator does ``x += c_k f`` per step, plus
    ``noise[k] * gaussian`` (Å; OpenMM's per-degree-of-freedom normal draws, ``setRandomNumberSeed(seed)``)
    for the stochastic ancestral schedule (``eta > 0``)."""
    import openmm as mm
    import openmm.unit as u

    from engine_plugins.engines.openmm_backend import create_pseudo_force
    from engine_plugins.units import OPENMM_UNITS, energy_factor, length_factor

    t0 = time.perf_counter()
    meta = art.metadata
    offsets, pos, types, fixed = _packed(tasks, starts, meta.cutoff)
    nm_to_model = length_factor(OPENMM_UNITS["length"], meta.units["length"])
    e_to_kj = energy_factor(meta.units["energy"], OPENMM_UNITS["energy"])
    unit = 1.0 / (e_to_kj * nm_to_model ** 2)  # c (model units) -> OpenMM's f (kJ/mol/nm) to nm
    system = mm.System()
    for _ in types:
        system.addParticle(1.0)
    system.addForce(create_pseudo_force(art, types=types, periodic=False))
    integ = mm.CustomIntegrator(0.0)
    integ.addGlobalVariable("c", 0.0)
    integ.addPerDofVariable("free", 1.0)
    if noise is not None:
        integ.addGlobalVariable("su", 0.0)
        integ.addComputePerDof("x", "x + c*f*free + su*gaussian*free")
        integ.setRandomNumberSeed(int(seed) + 1)  # 0 would mean "pick a seed"
    else:
        integ.addComputePerDof("x", "x + c*f*free")
    ctx = mm.Context(system, integ, mm.Platform.getPlatformByName(platform))
    ctx.setPositions(pos * 0.1)
    if fixed.any():
        integ.setPerDofVariableByName("free", [mm.Vec3(*([0.0] * 3 if f else [1.0] * 3)) for f in fixed])
    for k, c in enumerate(coeffs):
        integ.setGlobalVariableByName("c", float(c) * unit)
        if noise is not None:
            integ.setGlobalVariableByName("su", float(noise[k]) / nm_to_model)  # A -> nm
        integ.step(1)
    x = ctx.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(u.angstrom)
    x = np.asarray(x, float)
    out = [p - o for p, o in zip(_split(x, tasks), offsets)]
    return GenerationResult(out, len(coeffs), "openmm", sampler, time.perf_counter() - t0,
                            {"platform": platform, "stochastic": noise is not None})


def run_lammps(art: Any, tasks: Sequence[GenerationTask], starts: Sequence[np.ndarray], coeffs: Sequence[float],
               sampler: str, workdir: Optional[Union[str, os.PathLike]] = None) -> GenerationResult:
    """One LAMMPS run holds every molecule; each step is ``timestep dt_k`` + ``run 1`` of ``fix nve``
    from zero velocity (``x += dt_k^2 ftm2v / 2 f``, ``dt_k = sqrt(2 c_k / ftm2v)``), fixed atoms by
    ``fix setforce`` on a group (the recipe of ``engines/relax.py`` with a per-step timestep)."""
    import tempfile

    from engine_plugins.engines.lammps_backend import make_lammps
    from engine_plugins.engines.relax import LAMMPS_FTM2V, _lammps_setup

    t0 = time.perf_counter()
    meta = art.metadata
    offsets, pos, types, fixed = _packed(tasks, starts, meta.cutoff)
    with tempfile.TemporaryDirectory() as tmp:
        wd = Path(workdir or tmp)
        wd.mkdir(parents=True, exist_ok=True)
        lines, units = _lammps_setup(art, types, pos, fixed if fixed.any() else None, wd)
        lines = [ln.replace("boundary f f f", "boundary s s s") for ln in lines]
        lines += ["velocity all set 0.0 0.0 0.0", "fix dn all nve", "run 0"]
        ftm2v = LAMMPS_FTM2V[units]
        for c in coeffs:
            lines += [f"timestep {math.sqrt(2.0 * float(c) / ftm2v):.17g}", "run 1 pre no post no",
                      "velocity all set 0.0 0.0 0.0"]
        (wd / "in.generate").write_text("\n".join(lines) + "\n")
        lmp = make_lammps()
        try:
            for line in lines:
                lmp.command(line)
            natoms = int(lmp.get_natoms())
            if natoms != len(pos):
                raise GenerationError(f"LAMMPS lost atoms ({natoms} of {len(pos)}): a molecule blew up")
            x = np.ctypeslib.as_array(lmp.gather_atoms("x", 1, 3)).reshape(len(pos), 3).copy()
        finally:
            lmp.close()
    out = [p - o for p, o in zip(_split(x, tasks), offsets)]
    return GenerationResult(out, len(coeffs), "lammps", sampler, time.perf_counter() - t0, {})


def generate(model: Any, tasks: Sequence[GenerationTask], *, engine: str = "standalone",
             sampler: Optional[str] = None, nfe: Optional[int] = None, sigma_start: Union[float, str, None] = None,
             seed: int = 0, eta: Optional[float] = None, renoise: float = 0.0, step: Optional[float] = None,
             schedule: Optional[str] = None, rho: Optional[float] = None, sigma_min: Optional[float] = None,
             max_step: Optional[float] = None, workdir: Optional[str] = None,
             device: Union[str, torch.device, None] = None) -> GenerationResult:
    """Generate every task with one engine; positions in A, one array per task.

    ``sigma_start``: the starting noise level (default: the model's ``role_fields.generation.sigma_start``,
    else its ``sigma_max``, when any atom is unknown, else ``"auto"``, estimated from the force at the
    given structure). ``eta`` (ancestral): the model's ``generation.eta``, else 1 = stochastic
    (standalone) / 0 = deterministic (engines; OpenMM also takes eta > 0, LAMMPS only 0).
    ``device`` (standalone only): where the sampler runs; default CUDA when available, else the CPU.
    """
    if engine not in ENGINES:
        raise GenerationError(f"engine '{engine}': use one of {', '.join(ENGINES)}")
    art = load_gpff(model)
    if not tasks:
        raise GenerationError("nothing to generate: give at least one formula, molecule or structure")
    for t in tasks:
        check_task(t, art.metadata.type_names)
    st = sampler_settings(art, sampler, nfe, sigma_min, schedule, rho, step)
    if eta is None:  # the model's tested setting, else stochastic standalone / deterministic engines
        eta = (art.metadata.role_fields.get("generation") or {}).get("eta")
        eta = float(eta) if eta is not None else (1.0 if engine == "standalone" else 0.0)
    complete = all(t.init is not None and np.isfinite(np.asarray(t.init, float)).all() for t in tasks)
    if sigma_start is None:
        sigma_start = "auto" if complete else st["sigma_start"]
    if isinstance(sigma_start, str) and sigma_start != "auto":
        try:
            sigma_start = float(sigma_start)
        except ValueError as exc:
            raise GenerationError(f"sigma_start '{sigma_start}': give a number (A) or 'auto'") from exc
    if sigma_start == "auto" and not complete:
        raise GenerationError("sigma_start 'auto' needs every atom's position; give a number (A) for atoms "
                              "generated from noise")
    rng = np.random.default_rng(int(seed))
    s0_prior = st["sigma_max"] if isinstance(sigma_start, str) else float(sigma_start)
    if not s0_prior > 0:
        raise GenerationError(f"sigma_start={s0_prior}: must be positive")
    starts = [start_positions(t, s0_prior, prior_coeff(art), rng) for t in tasks]
    if engine == "standalone":
        res = run_standalone(art, tasks, starts, st, sigma_start, seed, eta, renoise, max_step, device=device)
    else:
        if st["sampler"] not in ENGINE_SAMPLERS:
            raise GenerationError(f"sampler '{st['sampler']}' does not run inside {engine}; use one of "
                                  f"{', '.join(ENGINE_SAMPLERS)} or --engine standalone")
        if st["sampler"] == "ancestral" and eta != 0 and engine != "openmm":
            raise GenerationError(f"ancestral with eta={eta} injects noise, which the {engine} schedule does not; "
                                  "use eta=0 (deterministic), --engine openmm or --engine standalone")
        if renoise:
            raise GenerationError(f"re-noising is standalone only; drop renoise for {engine}")
        extra = 0
        if sigma_start == "auto":
            s0 = min(max(estimate_sigma(art, tasks, starts), st["sigma_min"]), st["sigma_max"])
            extra = 1
        else:
            s0 = float(sigma_start)
        coeffs = engine_coefficients(st["sampler"], st["nfe"] - extra, s0, st["sigma_min"], st["schedule"],
                                     st["rho"], st["step"])
        noise = None
        if st["sampler"] == "ancestral" and eta != 0:  # OpenMM only (checked above)
            coeffs, noise = engine_ancestral_noise(st["nfe"] - extra, s0, st["sigma_min"], float(eta),
                                                   st["schedule"], st["rho"])
        if engine == "openmm":
            res = run_openmm(art, tasks, starts, coeffs, st["sampler"], noise=noise, seed=seed)
        else:
            res = run_lammps(art, tasks, starts, coeffs, st["sampler"], workdir)
        res.nfe += extra
        res.info["sigma_start"] = s0
    res.info.update({"nfe_requested": st["nfe"], "eta": eta, "schedule": st["schedule"]})
    for p in res.positions:
        if not np.isfinite(p).all():
            raise GenerationError("generation produced non-finite coordinates (the model blew up); try a smaller "
                                  "sigma_start or max_step")
    return res


# ------------------------------------------------------------------------------------------------
# validity and files
# ------------------------------------------------------------------------------------------------
def check_generated(tasks: Sequence[GenerationTask], positions: Sequence[np.ndarray]) -> Tuple[Dict[str, Any], list]:
    """RDKit validity of every generated structure (and formula/graph match to its source)."""
    from engine_plugins.analysis.validity import check_molecule, summarize_validity
    from engine_plugins.data.molecules import Structure

    results = []
    for t, p in zip(tasks, positions):
        s = Structure(list(t.symbols), p, name=t.name)
        results.append(check_molecule(s, t.source, name=t.name))
    return summarize_validity(results), results


def structures_out(tasks: Sequence[GenerationTask], positions: Sequence[np.ndarray], results: Sequence,
                   extra: Optional[Dict[str, Any]] = None):
    from engine_plugins.data.molecules import Structure

    out = []
    for t, p, r in zip(tasks, positions, results):
        info = {"valid": bool(r.valid), "checks_failed": ",".join(r.failed()) or "none",
                "perceived_smiles": r.smiles or ""}
        if r.source_smiles:
            info["source_smiles"] = r.source_smiles
        info.update(extra or {})
        out.append(Structure(list(t.symbols), p, name=t.name, smiles=r.smiles, info=info))
    return out


def write_generated(path: Union[str, Path], structures: Sequence[Any], results: Sequence) -> Path:
    """Write ``.xyz``/``.extxyz`` (ASE extended XYZ) or ``.sdf`` (RDKit, perceived bonds; one record each)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix.lower()
    if suffix in (".xyz", ".extxyz"):
        import ase.io

        ase.io.write(str(path), [s.to_ase() for s in structures], format="extxyz")
    elif suffix == ".sdf":
        from rdkit import Chem

        from engine_plugins.analysis.validity import perceive_bonds

        w = Chem.SDWriter(str(path))
        try:
            for s, r in zip(structures, results):
                mol = perceive_bonds(s.symbols, s.positions).mol
                mol.SetProp("_Name", s.name or s.formula)
                mol.SetProp("valid", str(bool(r.valid)))
                mol.SetProp("checks_failed", ",".join(r.failed()) or "none")
                w.write(mol)
        finally:
            w.close()
    else:
        raise GenerationError(f"output '{path}': use .xyz, .extxyz or .sdf")
    return path


__all__ = [
    "ENGINES", "ENGINE_SAMPLERS", "GenerationError", "GenerationResult", "GenerationTask", "check_generated",
    "check_task", "engine_ancestral_noise", "engine_coefficients", "estimate_sigma", "formula_symbols", "generate",
    "load_gpff",
    "prior_coeff", "run_lammps", "run_openmm", "run_standalone", "sampler_settings", "start_positions",
    "structures_out", "write_generated",
]
