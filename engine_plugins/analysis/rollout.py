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
