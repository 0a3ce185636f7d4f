"""OpenMM backend, role ``pseudo_force``: an artifact becomes an ``openmmtorch.TorchForce``.

The adapter is TorchScript (no Python on OpenMM's hot path): it converts nm -> model length and
model energy -> kJ/mol, builds the minimum-image graph (or a plain one without a box), calls the
artifact and returns energy and forces (``setOutputsForces``), in the dtype the platform gives.

Usage::

    force = create_pseudo_force("model.pt", topology=pdb.topology)   # or types=[...]
    system.addForce(force)
"""

from __future__ import annotations

import os
from typing import Mapping, Optional, Sequence, Tuple

import torch

from engine_plugins.export.artifact import Artifact, load_artifact
from engine_plugins.nn.graph import VerletGraph
from engine_plugins.units import OPENMM_UNITS, UnitError, energy_factor, length_factor


def import_openmmtorch():
    """``import openmmtorch`` without its 'simtk.openmm is deprecated' log line (it imports simtk)."""
    import logging

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        import openmmtorch
    finally:
        root.setLevel(level)
    return openmmtorch


class OpenMMBackendError(ValueError):
    """An artifact cannot be attached to this OpenMM system (message says why and the fix)."""


class PseudoForceAdapter(torch.nn.Module):
    """TorchScript adapter between OpenMM's TorchForce calling convention and the artifact's role."""

    def __init__(self, model: torch.jit.ScriptModule, types: Sequence[int], cutoff: float,
                 nm_to_model: float, model_energy_to_kj: float, model_dtype: torch.dtype,
                 periodic: bool, skin: float) -> None:
        super().__init__()
        self.model = model
        self.graph = VerletGraph(cutoff, skin)
        self.register_buffer("types", torch.tensor(list(types), dtype=torch.long))
        self.cutoff = float(cutoff)
        self.nm_to_model = float(nm_to_model)
        self.energy_to_kj = float(model_energy_to_kj)
        # force: E_model/L_model -> kJ/mol/nm = energy factor * (L_model per nm)
        self.force_to_openmm = float(model_energy_to_kj * nm_to_model)
        self.model_dtype = model_dtype
        self.periodic = periodic

    def forward(self, positions: torch.Tensor,
                boxvectors: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        n = positions.shape[0]
        if n != self.types.shape[0]:
            raise RuntimeError(f"engine_plugins: the TorchForce was built for {self.types.shape[0]} particles "
                               f"but the system has {n}; rebuild it with create_pseudo_force for this system")
        if not bool(torch.isfinite(positions).all()):
            raise RuntimeError("engine_plugins: non-finite (NaN or inf) particle positions reached the model; the "
                               "simulation has blown up or the input coordinates are invalid")
        pos = positions.to(self.model_dtype) * self.nm_to_model
        box: Optional[torch.Tensor] = None
        if self.periodic:
            if boxvectors is None:
                raise RuntimeError("engine_plugins: periodic model called without box vectors")
            box = boxvectors.to(self.model_dtype) * self.nm_to_model
        types = self.types.to(positions.device)
        edge_index, edge_shift = self.graph(pos, box)
        atom_energy, forces = self.model(pos, types, edge_index, edge_shift, n)
        energy = atom_energy.sum() * self.energy_to_kj
        return energy.to(positions.dtype), (forces * self.force_to_openmm).to(positions.dtype)


def _types_from_topology(topology, type_names: Sequence[str], type_map: Mapping[str, str] | None) -> list[str]:
    """Model type name of every atom: type_map on atom name / element symbol, else element symbol, else name."""
    names: list[str] = []
    for atom in topology.atoms():
        symbol = atom.element.symbol if atom.element is not None else None
        cands = []
        if type_map:
            for key in (atom.name, symbol, atom.residue.name):
                if key is not None and key in type_map:
                    cands.append(type_map[key])
                    break
        cands += [c for c in (symbol, atom.name, atom.residue.name) if c is not None]
        match = next((c for c in cands if c in type_names), None)
        if match is None:
            raise OpenMMBackendError(
                f"atom {atom.index} ('{atom.name}', element {symbol}, residue {atom.residue.name}) has no model type: "
                f"the model knows {', '.join(type_names)}. Fix: pass type_map={{'{atom.name}': '<model type>'}}")
        names.append(match)
    return names


def create_pseudo_force(model: str | os.PathLike | Artifact, *, types: Sequence[str] | None = None,
                        topology=None, type_map: Mapping[str, str] | None = None, periodic: bool | None = None,
                        force_group: int = 0, skin_nm: float = 0.1) -> "openmmtorch.TorchForce":  # noqa: F821
    """Build a TorchForce for a ``pseudo_force`` artifact.

    Give the model type of every particle either as ``types`` (names, one per particle) or through an
    OpenMM ``topology`` (element symbols / atom names, remapped by ``type_map``). ``periodic``
    defaults to whether the topology has a box (or to the model's periodicity). ``skin_nm`` is the
    Verlet skin of the cached neighbour list (exactness does not depend on it, only speed).
    """
    openmmtorch = import_openmmtorch()
    art = model if isinstance(model, Artifact) else load_artifact(model)
    meta = art.metadata
    if meta.role != "pseudo_force":
        raise OpenMMBackendError(f"model role is '{meta.role}', but a TorchForce pseudo-force needs role "
                                 "'pseudo_force'. Fix: use the backend for that role (e.g. the learned "
                                 "propagation integrator for 'propagator')")
    if types is None and topology is None:
        raise OpenMMBackendError("give the model type of each particle: types=[...] or topology=...")
    if types is None:
        types = _types_from_topology(topology, meta.type_names, type_map)
    unknown = sorted({t for t in types if t not in meta.type_names})
    if unknown:
        raise OpenMMBackendError(f"type name(s) {', '.join(unknown)} are not known to the model (it knows "
                                 f"{', '.join(meta.type_names)}). Fix: map them with type_map or use another model")
    if periodic is None:
        if topology is not None:
            periodic = topology.getPeriodicBoxVectors() is not None
        else:
            periodic = meta.periodicity == "periodic"
    if meta.periodicity == "periodic" and not periodic:
        raise OpenMMBackendError("the model was trained for periodic systems but this system has no periodic box. "
                                 "Fix: set box vectors (topology.setPeriodicBoxVectors) or use a non-periodic model")
    if meta.periodicity == "nonperiodic" and periodic:
        raise OpenMMBackendError("the model was trained for non-periodic systems (molecules in vacuum) but this "
                                 "system is periodic. Fix: remove the periodic box or use a periodic model")
    try:
        nm_to_model = length_factor(OPENMM_UNITS["length"], meta.units["length"])
        e_to_kj = energy_factor(meta.units["energy"], OPENMM_UNITS["energy"])
    except UnitError as exc:
        raise OpenMMBackendError(f"model units cannot run in OpenMM: {exc}") from exc
    index = {name: i for i, name in enumerate(meta.type_names)}
    adapter = PseudoForceAdapter(art.module, [index[t] for t in types], meta.cutoff, nm_to_model, e_to_kj,
                                 getattr(torch, meta.dtype), bool(periodic), skin_nm * nm_to_model)
    scripted = torch.jit.script(adapter)
    force = openmmtorch.TorchForce(scripted)
    force.setOutputsForces(True)
    force.setUsesPeriodicBoundaryConditions(bool(periodic))
    force.setForceGroup(force_group)
    return force
