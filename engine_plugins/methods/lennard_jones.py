"""Lennard-Jones as a package model: the exactness reference for the whole engine chain.

It goes through the same exporter and engine backends as a learned model, and has independent
references in both engines (OpenMM NonbondedForce, LAMMPS ``lj/cut``), so it proves that units,
graphs, ghosts, forces and virials are handled right. Truncated, not shifted, like both references.
"""

from __future__ import annotations

from typing import Sequence, Tuple

import torch

from engine_plugins.export.metadata import ArtifactMetadata
from engine_plugins.nn.forces import local_energy_forces


class LennardJones(torch.nn.Module):
    """E = sum over pairs of 4 eps [(sigma/r)^12 - (sigma/r)^6], r < cutoff; Lorentz-Berthelot mixing."""

    def __init__(self, epsilon: Sequence[float], sigma: Sequence[float], cutoff: float,
                 dtype: torch.dtype = torch.float64) -> None:
        super().__init__()
        eps = torch.tensor(list(epsilon), dtype=dtype)
        sig = torch.tensor(list(sigma), dtype=dtype)
        self.register_buffer("eps_ij", torch.sqrt(eps[:, None] * eps[None, :]))
        self.register_buffer("sigma_ij", 0.5 * (sig[:, None] + sig[None, :]))
        self.cutoff = float(cutoff)

    def forward(self, pos: torch.Tensor, types: torch.Tensor, edge_index: torch.Tensor,
                edge_shift: torch.Tensor, n_local: int) -> Tuple[torch.Tensor, torch.Tensor]:
        # Callers run this with grad mode on (torch's default; TorchScript cannot switch it).
        pos = pos.detach().requires_grad_(True)
        i, j = edge_index[0], edge_index[1]
        vec = pos[j] - pos[i] + edge_shift
        r2 = (vec * vec).sum(-1)
        ti, tj = types[i], types[j]
        s2 = self.sigma_ij[ti, tj] ** 2 / r2
        s6 = s2 * s2 * s2
        e_pair = 4.0 * self.eps_ij[ti, tj] * (s6 * s6 - s6)
        e_pair = torch.where(r2 < self.cutoff * self.cutoff, e_pair, torch.zeros_like(e_pair))
        # full list: each pair appears twice, half of it belongs to each end
        atom_energy = torch.zeros(pos.shape[0], dtype=pos.dtype, device=pos.device)
        atom_energy = atom_energy.index_add(0, i, 0.5 * e_pair)
        forces = local_energy_forces(atom_energy, pos, n_local)
        return atom_energy.detach(), forces.detach()


def lennard_jones_metadata(type_names: Sequence[str], cutoff: float, units: dict[str, str] | None = None,
                           periodicity: str = "any", dtype: str = "float64") -> ArtifactMetadata:
    """Metadata for an exported :class:`LennardJones` (one message-passing layer: a pair potential)."""
    return ArtifactMetadata(
        role="pseudo_force",
        method="lennard_jones",
        type_names=list(type_names),
        cutoff=float(cutoff),
        num_message_passing_layers=1,
        units=units or {"length": "angstrom", "energy": "kcal/mol", "time": "fs"},
        dtype=dtype,
        periodicity=periodicity,
        role_fields={"conservative": True},
    )
