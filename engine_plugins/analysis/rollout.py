"""Learned rollouts in any engine, written as cases that MDAnalysis (and the evaluation) reads.

One interface for every engine::

    rollout = run(engine, model, case, n_jumps, seed, corrector=None, out_dir=..., progress=True)
    rollout.case_json      # a case.json beside the trajectory (TrajectoryCase.load reads it)
    rollout.read()         # UnwrappedTrajectory, one frame per jump (frame 0 = the start)

``engine`` is ``standalone`` (the package's sampler, ``engine_plugins.methods.propagator.sampler``),
``openmm`` (``engine_plugins.engines.openmm_propagate``: TorchForce + CustomIntegrator) or
``lammps`` (``fix ep/propagate`` of the LAMMPS plugin). Each adapter starts from the first frame of
the reference case (atoms, or CG beads when the case names a ``cg_mapping``), at the case's
temperature, makes ``n_jumps`` jumps of the model's Δτ and writes every jump. The rollout directory
holds a LAMMPS data file of the start (types = the model's type names) and the trajectory (DCD of
unwrapped positions, or the engine's own LAMMPS dump with image flags), and a ``case.json`` with
``frame_interval = Δτ`` and the unwrap mode to read it with.

Adapters of engines whose code is not in this tree raise :class:`RolloutError` naming the module.
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from engine_plugins.data.trajectories import TrajectoryCase, UnwrappedTrajectory

ENGINES = ("standalone", "openmm", "lammps")


class RolloutError(RuntimeError):
    """A rollout cannot be run as asked (the message names the problem and the fix)."""


class RolloutFailedError(RuntimeError):
    """A rollout stopped early: a jump failed every redraw, or the engine stopped with an error.

    Why a type of its own: nothing that ran is lost. The frames made before the failure are
    written as a readable rollout case (``directory``/case.json, frames 0..``completed_jumps``), so a
    run of 10^4 jumps that fails at jump 9000 can be inspected and continued from its last frame.
    """

    def __init__(self, engine: str, case_id: str, completed_jumps: int, n_jumps: int, reason: str,
                 directory: Path) -> None:
        self.engine, self.case_id, self.reason, self.directory = engine, case_id, reason, Path(directory)
        self.completed_jumps, self.n_jumps = int(completed_jumps), int(n_jumps)
        super().__init__(f"the {engine} rollout of {case_id} stopped after {completed_jumps} of {n_jumps} jumps; "
                         f"frames 0..{completed_jumps} are kept in {directory} (case.json). Reason: {reason}")


@dataclass
class RolloutStart:
    """What every engine needs to start a rollout from a reference case."""

    case_id: str
    positions: np.ndarray        # [N, 3] Å, unwrapped frame of the reference
    box: np.ndarray              # [3, 3] Å, rows = cell vectors
    species: list[str]           # per atom/bead
    masses: np.ndarray           # [N] g/mol
    temperature: float           # K
    type_names: list[str]        # the model's type order
    types: np.ndarray            # [N] int64 indices into type_names
    mapping: str | None = None   # CG mapping applied to the reference (None: atoms)

    @property
    def n_atoms(self) -> int:
        return len(self.positions)

    def wrapped(self) -> np.ndarray:
        from engine_plugins.data.trajectories import wrap_positions

        return wrap_positions(self.positions, self.box)


@dataclass
class Rollout:
    """A finished rollout: where it is and how it went."""

    engine: str
    case_id: str
    directory: Path
    case_json: Path
    n_jumps: int
    delta_tau: float
    seed: int
    wall_seconds: float
    unwrap: str = "none"
    info: dict[str, Any] = field(default_factory=dict)

    def read(self) -> UnwrappedTrajectory:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            return TrajectoryCase.load(self.case_json).read(unwrap=self.unwrap)

    def to_json(self) -> dict[str, Any]:
        return {"engine": self.engine, "case_id": self.case_id, "directory": str(self.directory),
                "case_json": str(self.case_json), "n_jumps": self.n_jumps, "delta_tau": self.delta_tau,
                "seed": self.seed, "wall_seconds": self.wall_seconds, "unwrap": self.unwrap, **self.info}


# ------------------------------------------------------------------------------------ start frames
def case_mapping(case: TrajectoryCase) -> str | None:
    """The CG mapping a case asks for (``cg_mapping`` in its case.json), else None (atoms)."""
    m = case.meta.get("cg_mapping")
    return str(m) if m else None


def read_reference(case: TrajectoryCase, **kwargs: Any) -> UnwrappedTrajectory:
    """The reference trajectory of a case, mapped to beads when the case names a CG mapping."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        return case.read(mapping=case_mapping(case), **kwargs)


def rollout_start(case: TrajectoryCase, type_names: list[str], frame: int = 0,
                  reference: UnwrappedTrajectory | None = None) -> RolloutStart:
    """The start of a rollout: frame ``frame`` of the case (atoms or beads), typed by the model."""
    ref = reference if reference is not None else read_reference(case, start=frame, stop=frame + 1)
    k = frame if reference is not None else 0
    if ref.boxes is None:
        raise RolloutError(f"case {case.case_id}: the reference has no periodic cell; learned propagation here "
                           "needs a periodic box")
    missing = sorted(set(ref.species) - set(type_names))
    if missing:
        raise RolloutError(f"case {case.case_id}: species/bead type(s) {missing} are not among the model's type "
                           f"names {type_names}. Fix: evaluate a model trained on this system (or map the case "
                           "to the model's types)")
    index = {t: i for i, t in enumerate(type_names)}
    types = np.array([index[s] for s in ref.species], dtype=np.int64)
    return RolloutStart(case.case_id, ref.positions[k].copy(), ref.boxes[k].copy(), list(ref.species),
                        np.asarray(ref.masses, float), float(case.temperature), list(type_names), types,
                        case_mapping(case))


# ------------------------------------------------------------------------------------ writing
def write_topology(path: Path, start: RolloutStart) -> Path:
    """LAMMPS data file of the start frame (wrapped), types numbered as the model's type names."""
    from engine_plugins.data.lammps_data import write_lammps_data
    from engine_plugins.data.systems import ExampleSystem

    if np.abs(start.box - np.diag(np.diag(start.box))).max() > 1e-9:
        raise RolloutError(f"case {start.case_id}: triclinic cells are not supported by the rollout writer yet")
    type_mass = {}
    for t, m in zip(start.types, start.masses):
        type_mass.setdefault(int(t), float(m))
    masses = [type_mass.get(i, 1.0) for i in range(len(start.type_names))]
    return write_lammps_data(path, ExampleSystem(start.wrapped(), start.box, start.types, start.type_names, masses))


def write_case(directory: Path, start: RolloutStart, trajectory: str, *, delta_tau: float, unwrap: str,
               universe_kwargs: dict[str, Any], extra: dict[str, Any]) -> Path:
    """case.json of a rollout (read by TrajectoryCase.load; per-atom masses kept for CG beads)."""
    np.save(directory / "atom_masses.npy", np.asarray(start.masses, float))
    case = {"schema": "engine_plugins.case/1", "case_id": start.case_id, "family": "rollout",
            "temperature": start.temperature, "topology": "start.data", "trajectory": trajectory,
            "universe_kwargs": universe_kwargs,
            "type_map": {str(i + 1): n for i, n in enumerate(start.type_names)},
            "atom_masses": "atom_masses.npy", "frame_interval": float(delta_tau), "unwrap": unwrap,
            "units": {"length": "angstrom", "time": "ps"}, **extra}
    path = directory / "case.json"
    path.write_text(json.dumps(case, indent=1))
    return path


def write_dcd(path: Path, positions: np.ndarray, box: np.ndarray, dt: float) -> Path:
    """DCD of [F, N, 3] positions (Å; unwrapped stays unwrapped) with a constant cell."""
    import MDAnalysis as mda
    from MDAnalysis.lib.mdamath import triclinic_box

    dims = np.asarray(triclinic_box(*box), dtype=np.float32)
    pos = np.asarray(positions, dtype=np.float32)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        u = mda.Universe.empty(pos.shape[1], trajectory=True)
        with mda.Writer(str(path), pos.shape[1], dt=dt) as w:
            for frame in pos:
                u.atoms.positions = frame
                u.dimensions = dims
                w.write(u.atoms)
    return path


def save_positions_rollout(directory: Path, start: RolloutStart, positions: np.ndarray, *, engine: str,
                           delta_tau: float, seed: int, wall: float, info: dict[str, Any]) -> Rollout:
    """Write an in-memory rollout ([F, N, 3] unwrapped positions) as start.data + traj.dcd + case.json."""
    directory.mkdir(parents=True, exist_ok=True)
    write_topology(directory / "start.data", start)
    write_dcd(directory / "traj.dcd", positions, start.box, delta_tau)
    case_json = write_case(directory, start, "traj.dcd", delta_tau=delta_tau, unwrap="none",
                           universe_kwargs={"topology_format": "DATA", "format": "DCD", "atom_style": "id type x y z"},
                           extra={"engine": engine, "seed": seed, "wall_seconds": wall, **info})
    return Rollout(engine, start.case_id, directory, case_json, len(positions) - 1, delta_tau, seed, wall, "none", info)


# ------------------------------------------------------------------------------------ engines
#: engine name -> adapter(model, start, n_jumps, seed, corrector, directory, progress, options) -> Rollout
ADAPTERS: dict[str, Callable[..., Rollout]] = {}


def adapter(name: str) -> Callable[[Callable[..., Rollout]], Callable[..., Rollout]]:
    def deco(fn: Callable[..., Rollout]) -> Callable[..., Rollout]:
        ADAPTERS[name] = fn
        return fn
    return deco


def _need(module: str, what: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise RolloutError(f"{what} is not available in this tree ({module}: {exc}). Fix: use another --engine, "
                           "or update to a version that ships it") from exc


def run(engine: str, model: str | os.PathLike, case: TrajectoryCase | str | os.PathLike, n_jumps: int, seed: int = 0, *,
        corrector: str | os.PathLike | None = None, out_dir: str | os.PathLike = "out/rollouts", frame: int = 0,
        progress: bool = True, reference: UnwrappedTrajectory | None = None, **options: Any) -> Rollout:
    """Run ``n_jumps`` learned jumps of ``model`` from frame ``frame`` of ``case`` in ``engine``;
    return the written :class:`Rollout` (directory ``out_dir/<engine>/<case_id>``)."""
    from engine_plugins.export.artifact import read_metadata

    if engine not in ENGINES:
        raise RolloutError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    if n_jumps < 1:
        raise RolloutError(f"n_jumps must be >= 1, got {n_jumps}")
    if not isinstance(case, TrajectoryCase):
        case = TrajectoryCase.load(case)
    meta = read_metadata(model)
    check_roles(model, corrector)
    start = rollout_start(case, list(meta.type_names), frame, reference)
    lo, hi = (meta.role_fields.get("temperature_range") or [start.temperature, start.temperature])[:2]
    if not float(lo) - 1e-9 <= start.temperature <= float(hi) + 1e-9:
        warnings.warn(f"case {case.case_id}: temperature {start.temperature:g} K is outside the model's training "
                      f"range [{lo}, {hi}] K (extrapolation)", stacklevel=2)
    directory = Path(out_dir) / engine / case.case_id
    directory.mkdir(parents=True, exist_ok=True)
    fn = ADAPTERS.get(engine)
    if fn is None:
        raise RolloutError(f"the {engine} rollout adapter is not wired in this tree yet. Fix: use another --engine")
    return fn(Path(model), start, int(n_jumps), int(seed), Path(corrector) if corrector else None, directory,
              progress, dict(options))


def measure_case_prior(model: str | os.PathLike, case: TrajectoryCase | str | os.PathLike, reference_ps: float,
                       reference: UnwrappedTrajectory | None = None,
                       continuous: bool | None = None) -> dict[str, float]:
    """The adaptive prior's pick ({type: scale}) for the material of ``case``, measured on the first
    ``reference_ps`` ps of its reference run (:func:`prior.measure_adaptive_scale`: rms
    displacement per component over the model's Δτ). Pass it to any engine as ``prior_scale``.
    ``continuous``: override the model's rule (True: the rule's unrounded value)."""
    from engine_plugins.export.artifact import read_metadata
    from engine_plugins.methods.propagator.prior import adaptive_choices, measure_adaptive_scale
    from engine_plugins.units import time_factor

    meta = read_metadata(model)
    rf = meta.role_fields
    try:
        if meta.role != "propagator":
            raise ValueError(f"role '{meta.role}' has no adaptive prior. Fix: pass a 'propagator' artifact")
        adaptive_choices(rf.get("prior") or {})
    except ValueError as exc:
        raise RolloutError(f"{model}: {exc}") from exc
    if not isinstance(case, TrajectoryCase):
        case = TrajectoryCase.load(case)
    dtau = float(rf["delta_tau"]) * time_factor(meta.units["time"], "ps")
    ref = reference if reference is not None else read_reference(case)
    if ref.n_frames < 2:
        raise RolloutError(f"case {case.case_id}: the reference has {ref.n_frames} frame(s); measuring the adaptive "
                           "prior needs a run of at least one delta_tau")
    dt = float(ref.times[1] - ref.times[0])
    lag = int(round(dtau / dt))
    if lag < 1 or abs(lag * dt - dtau) > 1e-6 * dtau:
        raise RolloutError(f"case {case.case_id}: the model's delta_tau {dtau:g} ps is not a multiple of the reference's "
                           f"frame interval {dt:g} ps. Fix: write reference frames every delta_tau/k")
    n = int(round(float(reference_ps) / dt)) + 1
    if n <= lag:
        raise RolloutError(f"case {case.case_id}: --adaptive-prior {reference_ps:g} ps is not longer than delta_tau "
                           f"({dtau:g} ps). Fix: measure over a few delta_tau (e.g. {5 * dtau:g} ps)")
    if n > ref.n_frames:
        raise RolloutError(f"case {case.case_id}: the reference covers {float(ref.times[-1] - ref.times[0]):g} ps, "
                           f"less than the {reference_ps:g} ps asked to measure the adaptive prior on")
    missing = sorted(set(ref.species) - set(meta.type_names))
    if missing:
        raise RolloutError(f"case {case.case_id}: species {missing} are not among the model's types {meta.type_names}")
    try:
        return measure_adaptive_scale(rf["prior"], ref.positions[:n], list(ref.species), case.temperature, lag,
                                      continuous)
    except ValueError as exc:
        raise RolloutError(f"{model}: {exc}") from exc


def check_roles(model: str | os.PathLike, corrector: str | os.PathLike | None = None) -> None:
    """Clear errors for a model that is not a propagator or a corrector that is not a corrector."""
    from engine_plugins.export.artifact import read_metadata

    for path, role in ((model, "propagator"), (corrector, "corrector")):
        if path is None:
            continue
        meta = read_metadata(path)
        if meta.role != role:
            raise RolloutError(f"{path} is a '{meta.role}' artifact, but a '{role}' is needed here. Fix: pass a "
                               f"model exported with role '{role}' (engine-plugins inspect {path} shows the role)")
    if corrector is not None:
        a, b = read_metadata(model), read_metadata(corrector)
        if list(a.type_names) != list(b.type_names):
            raise RolloutError(f"propagator types {a.type_names} and corrector types {b.type_names} differ. Fix: "
                               "use a corrector trained on the same system")


def n_jumps_for(duration: float, delta_tau: float, factor: float = 1.0) -> int:
    """Jumps that cover ``factor`` x ``duration`` (ps) with steps of Δτ (ps)."""
    if delta_tau <= 0:
        raise RolloutError(f"the model's delta_tau must be > 0, got {delta_tau}")
    return max(1, int(math.ceil(factor * duration / delta_tau - 1e-9)))


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


# ------------------------------------------------------------------------------------ adapters
def _model_length_to_angstrom(model: Path) -> float:
    from engine_plugins.export.artifact import read_metadata
    from engine_plugins.units import length_factor

    return float(length_factor(read_metadata(model).units["length"], "angstrom"))


@adapter("standalone")
def _standalone(model: Path, start: RolloutStart, n_jumps: int, seed: int, corrector: Path | None, directory: Path,
                progress: bool, options: dict[str, Any]) -> Rollout:
    """The package's sampler (``methods.propagator.sampler.propagate``): TorchScript FlowJump in Python."""
    sampler = _need("engine_plugins.methods.propagator.sampler", "the standalone learned sampler")
    to_a = _model_length_to_angstrom(model)
    t0 = time.perf_counter()
    info: dict[str, Any] = {"corrector": str(corrector) if corrector else None}
    try:
        res = sampler.propagate(str(model), start.positions / to_a, [start.type_names[t] for t in start.types],
                                box=start.box / to_a, temperature=start.temperature, n_jumps=n_jumps, seed=seed,
                                corrector=str(corrector) if corrector else None, flow_steps=options.get("flow_steps"),
                                corrector_flow_steps=options.get("corrector_flow_steps"), progress=progress,
                                device=options.get("device"), prior_scale=options.get("prior_scale"),
                                contact_rounds=options.get("contact_rounds"),
                                corrector_passes=options.get("corrector_passes"))
    except sampler.JumpFailedError as exc:
        part = exc.partial
        if part is None:
            raise
        save_positions_rollout(directory, start, np.asarray(part.positions) * to_a, engine="standalone",
                               delta_tau=float(part.delta_tau_ps), seed=seed, wall=time.perf_counter() - t0,
                               info={**info, "retries": int(part.retries), **part.contact, "failed": str(exc)})
        raise RolloutFailedError("standalone", start.case_id, len(part.positions) - 1, n_jumps, str(exc),
                                 directory) from None
    wall = time.perf_counter() - t0
    return save_positions_rollout(directory, start, np.asarray(res.positions) * to_a, engine="standalone",
                                  delta_tau=float(res.delta_tau_ps), seed=seed, wall=wall,
                                  info={**info, "retries": int(res.retries), **res.contact})


@adapter("openmm")
def _openmm(model: Path, start: RolloutStart, n_jumps: int, seed: int, corrector: Path | None, directory: Path,
            progress: bool, options: dict[str, Any]) -> Rollout:
    """OpenMM: TorchForce + CustomIntegrator (``engines.openmm_propagate``), one ``step`` per jump;
    positions read back unwrapped (``enforcePeriodicBox=False``) after every step."""
    import openmm as mm
    import openmm.unit as u
    from tqdm.auto import tqdm

    om = _need("engine_plugins.engines.openmm_propagate", "learned propagation in OpenMM")
    from engine_plugins.methods.propagator.sampler import script_error_message
    from engine_plugins.export.artifact import read_metadata

    masses = read_metadata(model).role_fields["prior"]["mass"]
    system = mm.System()
    system.setDefaultPeriodicBoxVectors(*[mm.Vec3(*row) * 0.1 for row in start.box])
    names = [start.type_names[t] for t in start.types]
    for name in names:
        system.addParticle(float(masses[name]))
    setup = om.create_learned_integrator(system, names, str(model), str(corrector) if corrector else None,
                                         temperature=start.temperature, seed=seed, periodic=True,
                                         flow_steps=options.get("flow_steps"),
                                         corrector_flow_steps=options.get("corrector_flow_steps"),
                                         prior_scale=options.get("prior_scale"),
                                         contact_rounds=options.get("contact_rounds"),
                                         corrector_passes=options.get("corrector_passes"))
    platform = options.get("platform") or "CPU"
    props = {"Threads": str(options.get("threads", 1))} if platform == "CPU" else {}
    context = mm.Context(system, setup.integrator, mm.Platform.getPlatformByName(platform), props)
    context.setPositions(start.positions * 0.1)
    frames = np.empty((n_jumps + 1, start.n_atoms, 3))
    frames[0] = start.positions
    info = {"platform": platform, "corrector": str(corrector) if corrector else None}
    t0 = time.perf_counter()
    for k in tqdm(range(n_jumps), desc=f"OpenMM jumps {start.case_id}", unit="jump", disable=not progress):
        try:
            setup.integrator.step(1)
        except mm.OpenMMException as exc:  # the learned force's error (a jump failed every redraw)
            save_positions_rollout(directory, start, frames[:k + 1], engine="openmm",
                                   delta_tau=float(setup.delta_tau_ps), seed=seed, wall=time.perf_counter() - t0,
                                   info={**info, "retries": setup.retries(), "failed": script_error_message(exc)})
            raise RolloutFailedError("openmm", start.case_id, k, n_jumps, script_error_message(exc),
                                     directory) from None
        frames[k + 1] = context.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(u.angstrom)
    wall = time.perf_counter() - t0
    return save_positions_rollout(directory, start, frames, engine="openmm", delta_tau=float(setup.delta_tau_ps),
                                  seed=seed, wall=wall, info={**info, "retries": setup.retries()})


LAMMPS_UNITS = {("angstrom", "ps"): "metal", ("angstrom", "fs"): "real"}


def lammps_propagate_input(model: Path, start: RolloutStart, n_jumps: int, seed: int, corrector: Path | None,
                           options: dict[str, Any], dump_every: int = 1) -> str:
    """LAMMPS input of a learned rollout: ``fix ep/propagate`` replaces time integration, one
    jump of Δτ per timestep; dump of wrapped positions with image flags, sorted by id."""
    from engine_plugins.export.artifact import read_metadata
    from engine_plugins.units import length_factor, time_factor

    meta = read_metadata(model)
    key = (meta.units["length"], meta.units["time"])
    style = LAMMPS_UNITS.get(key)
    if style is None:
        raise RolloutError(f"{model}: no LAMMPS units style for length {key[0]} and time {key[1]} here (known: "
                           f"{', '.join(f'{a}/{b} -> {s}' for (a, b), s in LAMMPS_UNITS.items())})")
    lammps_time = "ps" if style == "metal" else "fs"
    dt = float(meta.role_fields["delta_tau"]) * time_factor(meta.units["time"], lammps_time)
    cut = meta.cutoff * length_factor(meta.units["length"], "angstrom")
    if corrector is not None:
        from engine_plugins.export.artifact import read_metadata as rm
        cut = max(cut, rm(corrector).cutoff * length_factor(rm(corrector).units["length"], "angstrom"))
    extra = ""
    if corrector is not None:
        extra += f" corrector {Path(corrector).resolve()}"
    if options.get("flow_steps"):
        extra += f" steps {int(options['flow_steps'])}"
    for name, scale in (options.get("prior_scale") or {}).items():
        extra += f" prior_scale {name} {float(scale):.17g}"
    if options.get("contact_rounds") is not None:
        extra += f" contact_rounds {int(options['contact_rounds'])}"
    if options.get("corrector_passes") is not None:
        extra += f" corrector_passes {int(options['corrector_passes'])}"
    if options.get("corrector_flow_steps"):
        raise RolloutError("fix ep/propagate has no keyword for the corrector's flow steps (it runs the corrector's "
                           "own); drop corrector_flow_steps (--corrector-flow-steps) for the lammps engine")
    return "\n".join([
        f"units {style}", "atom_style atomic", "boundary p p p", "atom_modify map yes",
        "read_data start.data", f"pair_style zero {cut:.10g}", "pair_coeff * *",
        f"timestep {dt:.17g}",
        f"fix prop all ep/propagate {Path(model).resolve()} types {' '.join(start.type_names)} "
        f"temp {start.temperature:.17g} seed {seed}{extra} threads 1",
        f"dump traj all custom {dump_every} traj.lammpstrj id type x y z ix iy iz", "dump_modify traj sort id format float %.10g",
        "thermo_style custom step f_prop[1] f_prop[6] f_prop[7]",
        f"thermo {max(1, n_jumps // 20)}", f"run {n_jumps}", ""])


def lammps_counters(stdout: str, n_jumps: int) -> dict[str, int]:
    """Redraw and contact counts of the fix at the last step, from the thermo rows of
    :func:`lammps_propagate_input` (``step f_prop[1] f_prop[6] f_prop[7]``)."""
    import re

    rows = re.findall(rf"^\s*{int(n_jumps)}\s+([-0-9.eE+]+)\s+([-0-9.eE+]+)\s+([-0-9.eE+]+)\s*$", stdout, re.M)
    if not rows:
        return {}
    retries, rounds, left = (int(round(float(v))) for v in rows[-1])
    out = {"retries": retries}
    if "contact redraw: up to" in stdout:
        out.update({"contact_rounds": rounds, "contact_left": left})
    return out


@adapter("lammps")
def _lammps(model: Path, start: RolloutStart, n_jumps: int, seed: int, corrector: Path | None, directory: Path,
            progress: bool, options: dict[str, Any]) -> Rollout:
    """LAMMPS ``fix ep/propagate`` (plugin), ``lmp`` of this environment on ``ranks`` MPI ranks."""
    import re

    from engine_plugins.engines.lammps_backend import LammpsError, PluginNotFoundError, run_lammps_script
    from engine_plugins.engines.lammps_build import build_plugin
    from engine_plugins.export.artifact import read_metadata
    from engine_plugins.units import time_factor

    build_plugin()
    write_topology(directory / "start.data", start)
    (directory / "in.propagate").write_text(lammps_propagate_input(model, start, n_jumps, seed, corrector, options))
    ranks = int(options.get("ranks") or 1)
    meta = read_metadata(model)
    dtau = float(meta.role_fields["delta_tau"]) * time_factor(meta.units["time"], "ps")

    def case(extra: dict[str, Any]) -> Path:
        return write_case(directory, start, "traj.lammpstrj", delta_tau=dtau, unwrap="images",
                          universe_kwargs={"topology_format": "DATA", "format": "LAMMPSDUMP",
                                           "atom_style": "id type x y z", "dt": dtau},
                          extra={"engine": "lammps", "seed": seed, "ranks": ranks, **extra})

    t0 = time.perf_counter()
    try:
        # no wall-clock limit unless asked for: a rollout is as long as its jumps (10^4 transport jumps: over 1 h)
        run_out = run_lammps_script(directory / "in.propagate", ranks, workdir=directory,
                                    timeout=options.get("timeout"))
    except PluginNotFoundError:
        raise
    except LammpsError as exc:  # the fix stopped the run (error->all) or it timed out; the dump holds every finished jump
        dump = directory / "traj.lammpstrj"
        frames = dump.read_text().count("ITEM: TIMESTEP") if dump.is_file() else 0
        if frames == 0:
            raise
        case({"wall_seconds": time.perf_counter() - t0, "failed": str(exc)})
        raise RolloutFailedError("lammps", start.case_id, frames - 1, n_jumps, str(exc), directory) from None
    wall = time.perf_counter() - t0
    loop = re.findall(r"Loop time of ([0-9.eE+-]+) on", run_out.stdout)
    case_json = case({"wall_seconds": wall, "loop_seconds": float(loop[-1]) if loop else None})
    return Rollout("lammps", start.case_id, directory, case_json, n_jumps, dtau, seed, wall, "images",
                   {"ranks": ranks, "loop_seconds": float(loop[-1]) if loop else None,
                    "corrector": str(corrector) if corrector else None, **lammps_counters(run_out.stdout, n_jumps)})
