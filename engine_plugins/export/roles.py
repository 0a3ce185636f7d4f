"""What an engine calls for each role: the TorchScript signatures of the contract.

``pseudo_force``::

    forward(pos: Tensor[N, 3], types: Tensor[N] (int64), edge_index: Tensor[2, E] (int64),
            edge_shift: Tensor[E, 3], n_local: int) -> (atom_energy: Tensor[N], forces: Tensor[N, 3])

``propagator`` / ``corrector`` (the flow's vector field; the engine owns the ODE loop, see
``engine_plugins.methods.propagator``)::

    forward(x_t: Tensor[N, 3], x_cond: Tensor[N, 3], types: Tensor[N] (int64),
            edge_index: Tensor[2, E] (int64), edge_shift: Tensor[E, 3], t: Tensor[] (flow time),
            temperature: Tensor[N] (K), n_local: int) -> velocity: Tensor[N, 3]

All in the artifact's units and dtype. Nodes ``0 .. n_local-1`` are the atoms the caller owns; the
rest are ghosts (LAMMPS halo atoms, explicit nodes). ``edge_index`` is [centre, neighbour] and the
edge vector is ``pos[j] - pos[i] + edge_shift[e]``; the edge list is full (both directions).
The total energy is ``atom_energy[:n_local].sum()`` and ``forces`` is the force on every node from
that energy (ghost forces are summed onto their owners by the engine, LAMMPS ``newton on``).
A standalone or OpenMM caller passes ``n_local = N``. Conservative models differentiate inside
forward, so callers keep grad mode on for ``pseudo_force`` (no ``torch.no_grad()`` around it); the
vector-field roles need no gradient, and their engine callers switch grad mode off.
"""

from __future__ import annotations

import torch

from engine_plugins.export.metadata import ArtifactMetadata


class RoleCheckError(ValueError):
    """The module does not implement its role's signature."""


def smoke_test_pseudo_force(module: torch.nn.Module, meta: ArtifactMetadata) -> None:
    """Call the module once on two atoms inside the cutoff and check shapes and finiteness."""
    dtype = getattr(torch, meta.dtype)
    pos = torch.tensor([[0.0, 0.0, 0.0], [0.6 * meta.cutoff, 0.1, 0.0]], dtype=dtype)
    types = torch.zeros(2, dtype=torch.long)
    edge_index = torch.tensor([[0, 1], [1, 0]], dtype=torch.long)
    edge_shift = torch.zeros(2, 3, dtype=dtype)
    try:
        out = module(pos, types, edge_index, edge_shift, 2)
    except Exception as exc:  # noqa: BLE001 - any failure means the contract is broken
        raise RoleCheckError(
            "role 'pseudo_force': calling forward(pos, types, edge_index, edge_shift, n_local) failed: "
            f"{exc}. Fix: implement that signature (see engine_plugins.export.roles)") from exc
    if not (isinstance(out, tuple) and len(out) == 2):
        raise RoleCheckError("role 'pseudo_force': forward must return (atom_energy[N], forces[N,3])")
    energy, forces = out
    if tuple(energy.shape) != (2,) or tuple(forces.shape) != (2, 3):
        raise RoleCheckError(
            f"role 'pseudo_force': got atom_energy {tuple(energy.shape)} and forces {tuple(forces.shape)}, "
            "expected (N,) and (N, 3)")
    if energy.dtype != dtype or forces.dtype != dtype:
        raise RoleCheckError(f"role 'pseudo_force': outputs are {energy.dtype}/{forces.dtype}, "
                             f"metadata says {meta.dtype}")
    if not (torch.isfinite(energy).all() and torch.isfinite(forces).all()):
        raise RoleCheckError("role 'pseudo_force': non-finite output on a two-atom test system")


def smoke_test_vector_field(module: torch.nn.Module, meta: ArtifactMetadata) -> None:
    """Call a propagator/corrector once on two atoms and check shape, dtype and finiteness."""
    role = meta.role
    dtype = getattr(torch, meta.dtype)
    x_cond = torch.tensor([[0.0, 0.0, 0.0], [0.6 * meta.cutoff, 0.1, 0.0]], dtype=dtype)
    x_t = x_cond + 0.05
    types = torch.zeros(2, dtype=torch.long)
    edge_index = torch.tensor([[0, 1], [1, 0]], dtype=torch.long)
    edge_shift = torch.zeros(2, 3, dtype=dtype)
    t = torch.tensor(0.5, dtype=dtype)
    lo, hi = (meta.role_fields.get("temperature_range") or [300.0, 300.0])[:2]
    temperature = torch.full((2,), 0.5 * (float(lo) + float(hi)), dtype=dtype)
    try:
        out = module(x_t, x_cond, types, edge_index, edge_shift, t, temperature, 2)
    except Exception as exc:  # noqa: BLE001 - any failure means the contract is broken
        raise RoleCheckError(
            f"role '{role}': calling forward(x_t, x_cond, types, edge_index, edge_shift, t, temperature, "
            f"n_local) failed: {exc}. Fix: implement that signature (see engine_plugins.export.roles)") from exc
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, 3):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise RoleCheckError(f"role '{role}': forward must return a velocity Tensor[N, 3], got {shape}")
    if out.dtype != dtype:
        raise RoleCheckError(f"role '{role}': output is {out.dtype}, metadata says {meta.dtype}")
    if not torch.isfinite(out).all():
        raise RoleCheckError(f"role '{role}': non-finite velocity on a two-atom test system")


ROLE_SMOKE_TESTS = {"pseudo_force": smoke_test_pseudo_force, "propagator": smoke_test_vector_field,
                    "corrector": smoke_test_vector_field}
