"""Trajectories through MDAnalysis: any format it reads, unwrapped across periodic boundaries.

A *case* is one trajectory of one system at one temperature (and composition), described by a
``case.json`` (written by ``engine-plugins simulate``, or made with :meth:`TrajectoryCase.from_files`
for any topology + trajectory MDAnalysis opens). :meth:`TrajectoryCase.read` returns an
:class:`UnwrappedTrajectory`: positions in Å, unwrapped, optionally mapped to CG beads.

Unwrapping (``unwrap=``):

* ``"images"``: wrapped positions plus LAMMPS image flags (dump columns ``ix iy iz``):
  r = x + ix a + iy b + iz c with the cell vectors a, b, c of that frame. Exact.
* ``"unwrapped"``: the file already holds unwrapped coordinates (a LAMMPS dump with ``xu yu zu``
  and no ``x y z``); used as they are.
* ``"continuity"``: no image flags (DCD, XTC, ...): the displacement between consecutive *read*
  frames is taken as its minimum image (fractional coordinates rounded to the nearest lattice
  vector). **Assumption:** no atom moves more than half a box width between two read frames
  (for triclinic cells, half the shortest perpendicular width); with ``step > 1`` that must hold
  between the frames actually read. Violations are silent by nature; keep frames close enough.
* ``"none"``: positions as stored (also used automatically when the trajectory has no box).
* ``"auto"`` (default): images if present, else the file's unwrapped coordinates, else continuity.

Frame pairs at a lag of ``lag`` frames: :func:`frame_pairs`; the displacement of a pair is the
difference of unwrapped positions, so it is correct across boundaries.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np


class TrajectoryError(ValueError):
    """A trajectory or case cannot be read as asked (the message names the file and the fix)."""


UNWRAP_MODES = ("auto", "images", "unwrapped", "continuity", "none")


# ------------------------------------------------------------------------------------ geometry
def box_matrix(dimensions: np.ndarray | None) -> np.ndarray | None:
    """MDAnalysis ``[a, b, c, alpha, beta, gamma]`` -> 3x3 matrix (rows = cell vectors), or None."""
    if dimensions is None:
        return None
    dims = np.asarray(dimensions, dtype=np.float64)
    if not np.all(np.isfinite(dims)) or np.any(dims[:3] <= 0):
        return None
    from MDAnalysis.lib.mdamath import triclinic_vectors

    return np.asarray(triclinic_vectors(dims), dtype=np.float64)


def minimum_image(d: np.ndarray, box: np.ndarray) -> np.ndarray:
    """Minimum image of vectors ``d`` [..., 3] in the cell ``box`` (rows = vectors; rounding of
    fractional coordinates: exact for |d| below half the shortest perpendicular cell width)."""
    inv = np.linalg.inv(box)
    frac = d @ inv
    return d - np.round(frac) @ box


def wrap_positions(x: np.ndarray, box: np.ndarray) -> np.ndarray:
    """Positions folded into the cell [0, 1)^3 in fractional coordinates."""
    frac = x @ np.linalg.inv(box)
    return (frac - np.floor(frac)) @ box


def unwrap_continuity(wrapped: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Unwrap [F, N, 3] positions by minimum-image continuity between consecutive frames."""
    out = np.empty_like(wrapped, dtype=np.float64)
    out[0] = wrapped[0]
    for k in range(1, len(wrapped)):
        out[k] = out[k - 1] + minimum_image(wrapped[k] - wrapped[k - 1], boxes[k])
    return out


def unwrap_images(wrapped: np.ndarray, images: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """r = x + n @ box per frame ([F, N, 3] positions, [F, N, 3] integer image flags, [F, 3, 3])."""
    return wrapped + np.einsum("fni,fij->fnj", images.astype(np.float64), boxes)


def frame_pairs(n_frames: int, lag: int, stride: int = 1) -> np.ndarray:
    """[P, 2] frame index pairs (t, t + lag) for t = 0, stride, ... (every origin by default)."""
    if not isinstance(lag, (int, np.integer)) or lag < 1:
        raise TrajectoryError(f"lag must be a positive number of frames, got {lag!r}")
    if stride < 1:
        raise TrajectoryError(f"stride must be >= 1, got {stride!r}")
    if lag >= n_frames:
        raise TrajectoryError(f"lag of {lag} frames is longer than the trajectory ({n_frames} frames; the longest "
                              f"possible lag is {n_frames - 1}). Fix: use a shorter lag or a longer trajectory")
    t = np.arange(0, n_frames - lag, stride)
    return np.stack([t, t + lag], axis=1)


def msd_curve(positions: np.ndarray, lags: Sequence[int], atoms: np.ndarray | None = None) -> np.ndarray:
    """Mean squared displacement at each lag (frames), averaged over every time origin and the
    selected atoms (index array or boolean mask); ``positions`` [F, N, 3] must be unwrapped."""
    pos = np.asarray(positions, dtype=np.float64)
    if atoms is not None:
        pos = pos[:, atoms]
    out = []
    for lag in lags:
        pairs = frame_pairs(len(pos), int(lag))
        d = pos[pairs[:, 1]] - pos[pairs[:, 0]]
        out.append(float((d ** 2).sum(-1).mean()))
    return np.array(out)


# ------------------------------------------------------------------------------------ reading
def _known_formats() -> list[str]:
    import MDAnalysis as mda

    return sorted(mda._READERS)


#: extensions LAMMPS users give dumps that MDAnalysis does not map to its LAMMPSDUMP reader
LAMMPS_DUMP_EXTENSIONS = (".lammpstrj", ".lammpsdump", ".dump")


def _guess_format(path: Path, kind: str) -> str:
    from MDAnalysis.lib.util import guess_format

    if path.suffix.lower() in LAMMPS_DUMP_EXTENSIONS:
        return "LAMMPSDUMP"
    try:
        fmt = guess_format(str(path))
    except (ValueError, TypeError):
        fmt = None
    if fmt is None or fmt.upper() not in _known_formats():
        raise TrajectoryError(f"cannot tell the {kind} format of {path} from its extension "
                              f"'{path.suffix}'. Fix: pass format=... (one of MDAnalysis's: "
                              f"{', '.join(_known_formats())})")
    return fmt.upper()


def _dump_columns(path: Path) -> list[str]:
    """Column names of the first ``ITEM: ATOMS`` line of a LAMMPS dump (empty if none)."""
    from MDAnalysis.lib.util import anyopen

    with anyopen(str(path)) as f:
        for _ in range(100):
            line = f.readline()
            if not line:
                break
            if line.startswith("ITEM: ATOMS"):
                return line.split()[2:]
    return []


def open_universe(topology: str | os.PathLike, trajectory: str | os.PathLike | Sequence | None = None, *,
                  format: str | None = None, topology_format: str | None = None, **kwargs: Any):
    """An ``MDAnalysis.Universe`` with clear errors for missing files and unknown formats.

    LAMMPS dumps with image flags are opened with ``additional_columns=['ix', 'iy', 'iz']`` (so
    :func:`read_unwrapped` can use them) and wrapped coordinates ``x y z`` when present.
    """
    import MDAnalysis as mda

    topology = Path(topology)
    trajs = [] if trajectory is None else ([Path(t) for t in trajectory] if isinstance(trajectory, (list, tuple))
                                           else [Path(trajectory)])
    for p, kind in [(topology, "topology"), *[(t, "trajectory") for t in trajs]]:
        if not p.is_file():
            raise FileNotFoundError(f"{kind} file {p} does not exist")
    known = _known_formats()
    if format is not None and format.upper() not in known:
        raise TrajectoryError(f"unknown trajectory format {format!r}; MDAnalysis reads: {', '.join(known)}")
    fmt = format.upper() if format else (_guess_format(trajs[0], "trajectory") if trajs else None)
    kw = dict(kwargs)
    if fmt == "LAMMPSDUMP" and trajs:
        cols = _dump_columns(trajs[0])
        if {"ix", "iy", "iz"} <= set(cols) and "additional_columns" not in kw:
            kw["additional_columns"] = ["ix", "iy", "iz"]
    try:
        args = [str(topology), *[str(t) for t in trajs]]
        if fmt is not None:
            kw["format"] = fmt
        if topology_format is not None:
            kw["topology_format"] = topology_format
        return mda.Universe(*args, **kw)
    except (FileNotFoundError, TrajectoryError):
        raise
    except Exception as exc:  # noqa: BLE001 - MDAnalysis raises many kinds; name the files
        raise TrajectoryError(f"MDAnalysis could not open topology {topology} with trajectory "
                              f"{', '.join(map(str, trajs)) or '(none)'} (format {fmt or 'guessed'}): "
                              f"{type(exc).__name__}: {exc}") from exc


@dataclass
class UnwrappedTrajectory:
    """Unwrapped positions of atoms (or CG beads) of one case, in Å and ps."""

    positions: np.ndarray          # [F, N, 3] float64, unwrapped
    boxes: np.ndarray | None       # [F, 3, 3] (rows = cell vectors) or None (no box)
    times: np.ndarray              # [F] ps
    species: list[str]             # per atom/bead
    masses: np.ndarray             # [N]
    unwrap: str                    # method used
    frames: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # trajectory frame indices

    @property
    def n_frames(self) -> int:
        return self.positions.shape[0]

    @property
    def n_atoms(self) -> int:
        return self.positions.shape[1]

    def displacements(self, lag: int, stride: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """(pairs [P, 2], displacements [P, N, 3]) at ``lag`` frames."""
        pairs = frame_pairs(self.n_frames, lag, stride)
        return pairs, self.positions[pairs[:, 1]] - self.positions[pairs[:, 0]]


def read_unwrapped(universe, *, unwrap: str = "auto", start: int | None = None, stop: int | None = None,
                   step: int | None = None, atoms: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None,
                                                                                      np.ndarray, np.ndarray, str]:
    """(positions [F, N, 3], boxes [F, 3, 3] or None, times [F], frame indices [F], method) of
    ``universe`` with the frames ``start:stop:step``, unwrapped as described in the module doc."""
    if unwrap not in UNWRAP_MODES:
        raise TrajectoryError(f"unwrap must be one of {', '.join(UNWRAP_MODES)}, got {unwrap!r}")
    traj = universe.trajectory
    reader = traj
    convention = getattr(reader, "lammps_coordinate_convention", None)
    sel = slice(start, stop, step)
    pos, boxes, times, frames, images = [], [], [], [], []
    have_images = True
    for ts in traj[sel]:
        p = ts.positions.astype(np.float64)
        pos.append(p if atoms is None else p[atoms])
        boxes.append(box_matrix(ts.dimensions))
        times.append(ts.time)
        frames.append(ts.frame)
        if all(k in ts.data for k in ("ix", "iy", "iz")):
            img = np.stack([ts.data["ix"], ts.data["iy"], ts.data["iz"]], axis=1)
            images.append(img if atoms is None else img[atoms])
        else:
            have_images = False
    if not pos:
        raise TrajectoryError(f"no frames in the selection {start}:{stop}:{step} of a {len(traj)}-frame trajectory")
    positions = np.stack(pos)
    has_box = all(b is not None for b in boxes)
    box_arr = np.stack(boxes) if has_box else None
    already_unwrapped = convention in ("unwrapped", "scaled_unwrapped")
    method = unwrap
    if unwrap == "auto":
        if not has_box:
            method = "none"
        elif have_images and images and not already_unwrapped:
            method = "images"
        elif already_unwrapped:
            method = "unwrapped"
        else:
            method = "continuity"
    if method in ("images", "continuity") and not has_box:
        raise TrajectoryError(f"unwrap={method!r} needs a periodic box in every frame; this trajectory has none")
    if method == "images":
        if not (have_images and images):
            raise TrajectoryError("unwrap='images' needs image flags (LAMMPS dump columns ix iy iz); this "
                                  "trajectory has none. Fix: unwrap='continuity' or dump ix iy iz")
        if already_unwrapped:
            raise TrajectoryError("the dump's coordinates are already unwrapped (xu yu zu): use unwrap='unwrapped'")
        positions = unwrap_images(positions, np.stack(images), box_arr)
    elif method == "continuity":
        positions = unwrap_continuity(positions, box_arr)
    return positions, box_arr, np.asarray(times, float), np.asarray(frames, np.int64), method


# ------------------------------------------------------------------------------------ cases
@dataclass
class TrajectoryCase:
    """One trajectory of one system at one temperature, with what a dataset needs to know."""

    case_id: str
    temperature: float
    topology: Path
    trajectory: Path | list[Path]
    composition: str = ""
    universe_kwargs: dict[str, Any] = field(default_factory=dict)
    type_map: dict[str, str] = field(default_factory=dict)     # file atom type -> species name
    masses: dict[str, float] = field(default_factory=dict)     # species -> mass (overrides the universe's)
    atom_masses: Path | None = None                           # .npy of per-atom masses (overrides both)
    mobile_species: list[str] = field(default_factory=list)
    frame_interval: float | None = None                        # ps between stored frames (None: from the file)
    meta: dict[str, Any] = field(default_factory=dict)

    # -------------------------------------------------------------- construction
    @classmethod
    def load(cls, path: str | os.PathLike) -> "TrajectoryCase":
        """Read a ``case.json`` (paths in it are relative to its directory)."""
        path = Path(path)
        if path.is_dir():
            path = path / "case.json"
        if not path.is_file():
            raise FileNotFoundError(f"case file {path} does not exist")
        try:
            meta = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise TrajectoryError(f"case file {path} is not valid JSON: {exc}") from None
        missing = [k for k in ("case_id", "temperature", "topology", "trajectory") if k not in meta]
        if missing:
            raise TrajectoryError(f"case file {path} lacks the field(s) {', '.join(missing)}")
        root = path.parent
        traj = meta["trajectory"]
        trajectory = [root / t for t in traj] if isinstance(traj, list) else root / traj
        return cls(case_id=str(meta["case_id"]), temperature=float(meta["temperature"]),
                   topology=root / meta["topology"], trajectory=trajectory,
                   composition=str(meta.get("composition", "")), universe_kwargs=dict(meta.get("universe_kwargs", {})),
                   type_map={str(k): str(v) for k, v in meta.get("type_map", {}).items()},
                   masses={str(k): float(v) for k, v in meta.get("masses", {}).items()},
                   atom_masses=root / meta["atom_masses"] if meta.get("atom_masses") else None,
                   mobile_species=list(meta.get("mobile_species", [])),
                   frame_interval=meta.get("frame_interval"), meta=meta)

    @classmethod
    def from_files(cls, topology: str | os.PathLike, trajectory: str | os.PathLike | list, temperature: float, *,
                   case_id: str | None = None, composition: str = "", frame_interval: float | None = None,
                   **kwargs: Any) -> "TrajectoryCase":
        """A case of any topology + trajectory MDAnalysis opens (``universe_kwargs``, ``type_map``,
        ``masses``, ``mobile_species`` as keywords)."""
        traj = [Path(t) for t in trajectory] if isinstance(trajectory, list) else Path(trajectory)
        cid = case_id or f"{Path(traj[0] if isinstance(traj, list) else traj).stem}_T{temperature:g}"
        return cls(case_id=cid, temperature=float(temperature), topology=Path(topology), trajectory=traj,
                   composition=composition, frame_interval=frame_interval, **kwargs)

    def to_json(self) -> dict[str, Any]:
        return {**self.meta, "case_id": self.case_id, "temperature": self.temperature, "composition": self.composition,
                "topology": str(self.topology), "trajectory": [str(t) for t in self.trajectory]
                if isinstance(self.trajectory, list) else str(self.trajectory)}

    # -------------------------------------------------------------- reading
    def universe(self):
        kw = dict(self.universe_kwargs)
        fmt = kw.pop("format", None)
        tfmt = kw.pop("topology_format", None)
        return open_universe(self.topology, self.trajectory, format=fmt, topology_format=tfmt, **kw)

    def atom_species(self, universe) -> list[str]:
        """Species name of every atom: the case's type_map over the file's atom types, else
        elements where the topology has them, else the atom types."""
        types = [str(t) for t in universe.atoms.types]
        if self.type_map:
            unknown = sorted(set(types) - set(self.type_map))
            if unknown:
                raise TrajectoryError(f"case {self.case_id}: atom type(s) {unknown} are not in its type_map "
                                      f"{self.type_map}")
            return [self.type_map[t] for t in types]
        if hasattr(universe.atoms, "elements"):
            el = [str(e) for e in universe.atoms.elements]
            if all(el):
                return el
        return types

    def atom_masses_for(self, universe, species: list[str]) -> np.ndarray:
        if self.atom_masses is not None:
            m = np.load(self.atom_masses)
            if m.shape != (len(universe.atoms),):
                raise TrajectoryError(f"case {self.case_id}: {self.atom_masses} holds {m.shape} masses for "
                                      f"{len(universe.atoms)} atoms")
            return m.astype(np.float64)
        if self.masses and all(s in self.masses for s in species):
            return np.array([self.masses[s] for s in species], dtype=np.float64)
        if not hasattr(universe.atoms, "masses"):
            raise TrajectoryError(f"case {self.case_id}: no masses (none in the topology or the case)")
        return universe.atoms.masses.astype(np.float64)

    def read(self, *, mapping: Any = None, unwrap: str = "auto", start: int | None = None,
             stop: int | None = None, step: int | None = None) -> UnwrappedTrajectory:
        """Unwrapped trajectory of the case's atoms, or of CG beads when ``mapping`` is given: a
        :class:`~engine_plugins.data.cg_mapping.CGMapping`, the name of a registered CG mapping,
        or a callable ``universe -> CGMapping``."""
        from engine_plugins.data.cg_mapping import CGMapping, resolve_mapping

        u = self.universe()
        species = self.atom_species(u)
        masses = self.atom_masses_for(u, species)
        positions, boxes, times, frames, method = read_unwrapped(u, unwrap=unwrap, start=start, stop=stop, step=step)
        if self.frame_interval is not None:
            times = frames * float(self.frame_interval)
        if mapping is not None:
            cg: CGMapping = resolve_mapping(mapping, u)
            if cg.n_atoms != len(species):
                raise TrajectoryError(f"case {self.case_id}: CG mapping is for {cg.n_atoms} atoms, the trajectory has "
                                      f"{len(species)}")
            positions = cg.apply(positions, masses, boxes)
            species = list(cg.bead_types)
            masses = cg.bead_masses(masses)
        return UnwrappedTrajectory(positions, boxes, times, species, masses, method, frames)


def load_cases(path: str | os.PathLike | Sequence[str | os.PathLike]) -> list[TrajectoryCase]:
    """Cases from a ``manifest.json``, a ``case.json``, a directory (its manifest, else every
    ``*/case.json`` below it), or a list of any of these."""
    if isinstance(path, (list, tuple)):
        return [c for p in path for c in load_cases(p)]
    p = Path(path)
    if p.is_dir():
        if (p / "manifest.json").is_file():
            return load_cases(p / "manifest.json")
        if (p / "case.json").is_file():
            return [TrajectoryCase.load(p / "case.json")]
        found = sorted(p.glob("*/case.json"))
        if not found:
            raise FileNotFoundError(f"no manifest.json or */case.json in {p}")
        return [TrajectoryCase.load(f) for f in found]
    if not p.is_file():
        raise FileNotFoundError(f"{p} does not exist")
    meta = json.loads(p.read_text())
    if "cases" in meta:
        return [TrajectoryCase.load(p.parent / c) for c in meta["cases"]]
    return [TrajectoryCase.load(p)]
