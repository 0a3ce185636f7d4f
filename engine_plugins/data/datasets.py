"""Frame-pair datasets for learned propagation, and splits that hold out whole cases.

:class:`FramePairDataset` yields one dict per (case, time origin) at a lag of ``lag`` frames:

=================  ==========================================================================
``X_tau``          [N, 3] positions at τ folded into the cell (Å; as stored if there is no box)
``X_tau_plus``     [N, 3] ``X_tau + displacement`` (not folded: the unwrapped target)
``displacement``   [N, 3] unwrapped displacement over the lag (exact across boundaries)
``types``          [N] int64 indices into ``dataset.type_names`` (species, or CG bead types)
``masses``         [N] g/mol
``temperature``    scalar, K
``box``            [3, 3] cell at τ (rows = vectors; zeros without a box)
``lag_time``       scalar, ps
``case_id``        str; ``case_index`` int64; ``frame`` int64 (trajectory frame of τ)
=================  ==========================================================================

Cases can differ in size; :func:`collate_frame_pairs` concatenates atoms and adds ``batch``
(graph index of every atom) and ``n_atoms`` - the usual layout of graph networks.

Splits (:func:`split_cases`) assign whole cases - every frame of a (composition, temperature)
trajectory goes to one side - so that test cases are unseen compositions and/or temperatures.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from engine_plugins.data.trajectories import (TrajectoryCase, TrajectoryError, UnwrappedTrajectory, frame_pairs,
                                              load_cases, wrap_positions)


class FramePairDataset(torch.utils.data.Dataset):
    """Frame pairs (τ, τ + lag) of one or more cases, read through MDAnalysis and unwrapped.

    ``cases``: TrajectoryCase objects, or paths for :func:`load_cases`; ``lag``: frames between
    X_τ and X_{τ+Δτ}; ``stride``: frames between consecutive time origins; ``mapping``: a CG mapping
    (name, file, CGMapping or builder) applied to every case; ``type_names``: the species order
    (default: the order of first appearance over the cases); ``read``: frames to read
    (``start``/``stop``/``step``) and ``unwrap`` mode, passed to :meth:`TrajectoryCase.read`.
    All trajectories are held in memory (float64 unwrapped positions).
    """

    def __init__(self, cases: Iterable[TrajectoryCase | str] | str, lag: int, *, stride: int = 1,
                 mapping: Any = None, type_names: Sequence[str] | None = None, dtype: torch.dtype = torch.float32,
                 start: int | None = None, stop: int | None = None, step: int | None = None,
                 unwrap: str = "auto") -> None:
        if isinstance(cases, str) or not isinstance(cases, Iterable):
            cases = [cases]
        case_list = [c if isinstance(c, TrajectoryCase) else cc for c in cases
                     for cc in ([c] if isinstance(c, TrajectoryCase) else load_cases(c))]
        if not case_list:
            raise TrajectoryError("a dataset needs at least one case")
        ids = [c.case_id for c in case_list]
        if len(set(ids)) != len(ids):
            raise TrajectoryError(f"case ids must be unique; repeated: {sorted({i for i in ids if ids.count(i) > 1})}")
        self.cases = case_list
        self.lag = int(lag)
        self.dtype = dtype
        self.trajectories: list[UnwrappedTrajectory] = [
            c.read(mapping=mapping, unwrap=unwrap, start=start, stop=stop, step=step) for c in case_list]
        seen = list(dict.fromkeys(s for t in self.trajectories for s in t.species))
        if type_names is None:
            self.type_names = seen
        else:
            self.type_names = list(type_names)
            missing = [s for s in seen if s not in self.type_names]
            if missing:
                raise TrajectoryError(f"species {missing} of the cases are not in type_names {self.type_names}")
        lookup = {s: i for i, s in enumerate(self.type_names)}
        self._types = [torch.tensor([lookup[s] for s in t.species], dtype=torch.long) for t in self.trajectories]
        index = []
        for k, (c, t) in enumerate(zip(case_list, self.trajectories)):
            try:
                pairs = frame_pairs(t.n_frames, self.lag, stride)
            except TrajectoryError as exc:
                raise TrajectoryError(f"case {c.case_id}: {exc}") from None
            index.append(np.stack([np.full(len(pairs), k), pairs[:, 0]], axis=1))
        self.index = np.concatenate(index)
        self.lag_times = [self._lag_time(t) for t in self.trajectories]

    def _lag_time(self, t: UnwrappedTrajectory) -> float:
        if t.n_frames > self.lag:
            return float(t.times[self.lag] - t.times[0])
        return float("nan")

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict[str, Any]:
        k, t0 = (int(v) for v in self.index[i])
        traj = self.trajectories[k]
        x0 = traj.positions[t0]
        d = traj.positions[t0 + self.lag] - x0
        if traj.boxes is not None:
            box = traj.boxes[t0]
            x_tau = wrap_positions(x0, box)
        else:
            box = np.zeros((3, 3))
            x_tau = x0
        f = lambda a: torch.as_tensor(np.ascontiguousarray(a), dtype=self.dtype)  # noqa: E731
        return {
            "X_tau": f(x_tau), "X_tau_plus": f(x_tau + d), "displacement": f(d),
            "types": self._types[k], "masses": f(traj.masses),
            "temperature": torch.tensor(self.cases[k].temperature, dtype=self.dtype),
            "box": f(box), "lag_time": torch.tensor(self.lag_times[k], dtype=self.dtype),
            "case_id": self.cases[k].case_id, "case_index": torch.tensor(k),
            "frame": torch.tensor(int(traj.frames[t0])),
        }

    def case_ids(self) -> list[str]:
        return [c.case_id for c in self.cases]


def collate_frame_pairs(batch: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Concatenate per-atom entries of samples of any sizes; per-sample entries are stacked."""
    per_atom = ("X_tau", "X_tau_plus", "displacement", "types", "masses")
    out: dict[str, Any] = {k: torch.cat([b[k] for b in batch]) for k in per_atom}
    n = torch.tensor([len(b["types"]) for b in batch])
    out["n_atoms"] = n
    out["batch"] = torch.repeat_interleave(torch.arange(len(batch)), n)
    for k in ("temperature", "box", "lag_time", "case_index", "frame"):
        out[k] = torch.stack([b[k] for b in batch])
    out["case_id"] = [b["case_id"] for b in batch]
    return out


# ------------------------------------------------------------------------------------ splits
@dataclass
class CaseSplit:
    train: list[TrajectoryCase]
    val: list[TrajectoryCase]
    test: list[TrajectoryCase]

    def ids(self) -> dict[str, list[str]]:
        return {k: [c.case_id for c in getattr(self, k)] for k in ("train", "val", "test")}

    def check(self) -> None:
        """No case (id, or the same file) in two parts."""
        parts = self.ids()
        for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
            shared = set(parts[a]) & set(parts[b])
            if shared:
                raise TrajectoryError(f"cases {sorted(shared)} are in both {a} and {b}")
            files = {str(c.trajectory) for c in getattr(self, a)} & {str(c.trajectory) for c in getattr(self, b)}
            if files:
                raise TrajectoryError(f"trajectory files {sorted(files)} are in both {a} and {b}")


def _matches(case: TrajectoryCase, compositions: Sequence[str], temperatures: Sequence[float]) -> bool:
    return case.composition in set(compositions) or any(abs(case.temperature - t) < 1e-6 for t in temperatures)


def split_cases(cases: Sequence[TrajectoryCase], *, test_compositions: Sequence[str] = (),
                test_temperatures: Sequence[float] = (), val_compositions: Sequence[str] = (),
                val_temperatures: Sequence[float] = (), val_fraction: float = 0.0, val_by: str = "case",
                seed: int = 0) -> CaseSplit:
    """Split whole cases into train / val / test.

    Test: every case whose composition is in ``test_compositions`` *or* whose temperature is in
    ``test_temperatures`` (so training sees neither). Validation: likewise by
    ``val_compositions``/``val_temperatures``, plus a ``val_fraction`` of the remaining groups
    drawn with ``seed``, where a group is one case (``val_by="case"``), one composition or one
    temperature. Unknown held-out compositions or temperatures are errors (likely typos).
    """
    cases = list(cases)
    known_comp = {c.composition for c in cases}
    known_t = {c.temperature for c in cases}
    for name, values in (("test_compositions", test_compositions), ("val_compositions", val_compositions)):
        bad = [v for v in values if v not in known_comp]
        if bad:
            raise TrajectoryError(f"{name}: no case has composition {bad}; known: {sorted(known_comp)}")
    for name, values in (("test_temperatures", test_temperatures), ("val_temperatures", val_temperatures)):
        bad = [v for v in values if not any(abs(v - t) < 1e-6 for t in known_t)]
        if bad:
            raise TrajectoryError(f"{name}: no case has temperature {bad}; known: {sorted(known_t)}")
    if val_by not in ("case", "composition", "temperature"):
        raise TrajectoryError(f"val_by must be 'case', 'composition' or 'temperature', got {val_by!r}")
    if not 0.0 <= val_fraction < 1.0:
        raise TrajectoryError(f"val_fraction must be in [0, 1), got {val_fraction}")
    test = [c for c in cases if _matches(c, test_compositions, test_temperatures)]
    rest = [c for c in cases if not _matches(c, test_compositions, test_temperatures)]
    val = [c for c in rest if _matches(c, val_compositions, val_temperatures)]
    rest = [c for c in rest if not _matches(c, val_compositions, val_temperatures)]
    if val_fraction > 0 and rest:
        key = {"case": lambda c: c.case_id, "composition": lambda c: c.composition,
               "temperature": lambda c: c.temperature}[val_by]
        groups = sorted({key(c) for c in rest}, key=str)
        n_val = max(1, int(round(val_fraction * len(groups))))
        if n_val >= len(groups):
            raise TrajectoryError(f"val_fraction {val_fraction} leaves no training {val_by} ({len(groups)} in all)")
        rng = np.random.default_rng(seed)
        chosen = {groups[i] for i in rng.choice(len(groups), n_val, replace=False)}
        val += [c for c in rest if key(c) in chosen]
        rest = [c for c in rest if key(c) not in chosen]
    if not rest:
        raise TrajectoryError("the split leaves no training case")
    split = CaseSplit(rest, val, test)
    split.check()
    return split
