"""Contact redraw: the shortest distance of each species pair, measured on reference MD and used
by every engine to redraw the prior noise of atoms a learned jump puts too close together.

Why: a flow-matching propagator is trained on frame pairs of real MD, where two atoms never come
closer than the repulsion allows. A Maxwell-Boltzmann draw from the prior's tail can still land an
atom on top of another, and the vector field, which never saw such a state, does not push it out:
the rollout then has contacts in most frames and the mobile species moves through them too fast.
Redrawing only the atoms in a contact (their own noise counter, so every engine draws the same
numbers) keeps the rest of the jump as it was.

Metadata (``role_fields.contact`` of a propagator)::

    {"min_distance": {"Fw-Fw": 2.37, "Fw-Li": 1.39, "Li-Li": 1.80},   # angstrom, per type pair
     "rounds": 6,                                                   # contact rounds per jump
     "measured_on": "..."}

Engines: the standalone sampler and OpenMM's TorchForce (``FlowSampler``), LAMMPS's
``fix ep/propagate`` (keyword ``contact_rounds N``; 0 switches it off).
"""

from __future__ import annotations

import itertools
from typing import Any, Mapping, Sequence

import numpy as np
import torch


class ContactError(ValueError):
    """``role_fields.contact`` cannot be used (the message says the fix)."""


def pair_key(a: str, b: str) -> str:
    """The metadata key of a type pair: names in sorted order, ``A-B``."""
    return "-".join(sorted((a, b)))


def contact_matrix(contact: Mapping[str, Any] | None, type_names: Sequence[str],
                   angstrom_to_model: float = 1.0) -> torch.Tensor:
    """[types, types] shortest allowed distance in the model's length unit (0: no bound), float64."""
    out = torch.zeros(len(type_names), len(type_names), dtype=torch.float64)
    if not contact:
        return out
    table = contact.get("min_distance")
    if not isinstance(table, Mapping):
        raise ContactError("role_fields.contact needs 'min_distance': {\"A-B\": distance in angstrom}. Fix: "
                           "measure it with engine_plugins.methods.propagator.contact.measure_min_distances")
    known = {pair_key(a, b): (i, j) for (i, a), (j, b) in
             itertools.combinations_with_replacement(list(enumerate(type_names)), 2)}
    for key, value in table.items():
        parts = str(key).split("-")
        norm = pair_key(*parts) if len(parts) == 2 else str(key)
        if norm not in known:
            raise ContactError(f"role_fields.contact.min_distance has pair '{key}', but the model's types are "
                               f"{', '.join(type_names)}. Fix: name pairs as TYPE-TYPE of those types")
        d = float(value)
        if not np.isfinite(d) or d < 0:
            raise ContactError(f"role_fields.contact.min_distance['{key}'] = {value}; it must be a distance >= 0")
        i, j = known[norm]
        out[i, j] = out[j, i] = d * angstrom_to_model
    return out


def contact_rounds(contact: Mapping[str, Any] | None, override: int | None = None) -> int:
    """Contact rounds per jump: ``override`` when given, else the metadata's (0 without contact)."""
    rounds = override if override is not None else int((contact or {}).get("rounds", 0))
    if rounds < 0:
        raise ContactError(f"contact rounds must be >= 0 (0 switches the contact redraw off), got {rounds}")
    return int(rounds)


def measure_min_distances(cases: Sequence[Any], every: int = 10) -> dict[str, float]:
    """Shortest distance (Å) of every species pair over every ``every``-th frame of ``cases``
    (:class:`~engine_plugins.data.trajectories.TrajectoryCase`; CG cases as beads, through their
    mapping, as the model sees them), minimum image, with MDAnalysis's distance functions."""
    from MDAnalysis.lib.distances import distance_array, self_distance_array
    from MDAnalysis.lib.mdamath import triclinic_box

    from engine_plugins.analysis.rollout import read_reference

    out: dict[str, float] = {}
    for case in cases:
        ref = read_reference(case, step=every)
        species = np.array(ref.species)
        names = sorted(set(ref.species))
        for f in range(ref.n_frames):
            box = None if ref.boxes is None else triclinic_box(*ref.boxes[f])
            pos = ref.positions[f].astype(np.float64)
            for a, b in itertools.combinations_with_replacement(names, 2):
                pa, pb = pos[species == a], pos[species == b]
                if a == b:
                    if len(pa) < 2:
                        continue
                    d = self_distance_array(pa, box=box)
                else:
                    d = distance_array(pa, pb, box=box)
                key = pair_key(a, b)
                out[key] = min(out.get(key, np.inf), float(d.min()))
    return {k: round(v, 3) for k, v in sorted(out.items())}


def write_with_contact(model: str, output: str, min_distance: Mapping[str, float], rounds: int,
                       measured_on: str) -> None:
    """Copy of propagator artifact ``model`` with ``role_fields.contact`` set (same weights)."""
    from engine_plugins.export.artifact import ArtifactError, copy_with_role_fields, read_metadata

    contact = {"min_distance": dict(min_distance), "rounds": int(rounds), "units": "angstrom",
               "measured_on": measured_on}
    contact_matrix(contact, read_metadata(model).type_names)  # validates the pairs
    contact_rounds(contact)
    try:
        copy_with_role_fields(model, output, {"contact": contact}, role="propagator")
    except ArtifactError as exc:  # wrong role, unreadable file
        raise ContactError(str(exc)) from exc
