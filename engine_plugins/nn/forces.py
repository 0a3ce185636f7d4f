"""Forces as the gradient of the energy the caller owns (shared by every conservative model)."""

from __future__ import annotations

from typing import List, Optional

import torch


def local_energy_forces(atom_energy: torch.Tensor, pos: torch.Tensor, n_local: int,
                        create_graph: bool = False) -> torch.Tensor:
    """Forces on every node from ``sum(atom_energy[:n_local])`` (ghosts included, for newton on).

    ``pos`` must be the leaf ``atom_energy`` was computed from, with ``requires_grad``.
    ``create_graph`` keeps the graph for losses on forces (training).
    """
    total = atom_energy[:n_local].sum()
    grad_outputs: List[Optional[torch.Tensor]] = [torch.ones_like(total)]
    grads = torch.autograd.grad([total], [pos], grad_outputs=grad_outputs, create_graph=create_graph,
                                allow_unused=True)
    g = grads[0]
    if g is None:
        return torch.zeros_like(pos)
    return -g
