"""Neighbour graphs inside TorchScript, for engines that do not hand us one (OpenMM, standalone).

LAMMPS gives its own lists (ghost atoms as explicit nodes, zero shifts); OpenMM gives positions and
an optional box, so the adapter builds a minimum-image graph here. The brute-force O(N^2) search is
chunked to bound memory; it is a small part of a message-passing model's cost at the sizes this
project targets on CPU (see `engine-plugins bench engines`).
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch


@torch.jit.script
def min_box_width(box: torch.Tensor) -> torch.Tensor:
    """Smallest distance between opposite faces of the cell (rows of ``box`` are the cell vectors)."""
    a, b, c = box[0], box[1], box[2]
    vol = torch.abs(torch.dot(a, torch.linalg.cross(b, c)))
    wa = vol / torch.linalg.norm(torch.linalg.cross(b, c))
    wb = vol / torch.linalg.norm(torch.linalg.cross(c, a))
    wc = vol / torch.linalg.norm(torch.linalg.cross(a, b))
    return torch.min(torch.stack([wa, wb, wc]))


@torch.jit.script
def neighbor_graph(pos: torch.Tensor, cutoff: float, box: Optional[torch.Tensor] = None,
                   chunk: int = 2048) -> Tuple[torch.Tensor, torch.Tensor]:
    """Full directed edge list [centre, neighbour] within ``cutoff`` and per-edge shift vectors.

    With a ``box`` (rows = cell vectors, any triclinic cell) the minimum image is used; the box must
    be at least twice the cutoff wide in every direction so that each pair has one image at most.
    Edge vector = pos[j] - pos[i] + shift.
    """
    n = pos.shape[0]
    cut2 = cutoff * cutoff
    srcs: list[torch.Tensor] = []
    dsts: list[torch.Tensor] = []
    shifts: list[torch.Tensor] = []
    recip = torch.empty(0)
    if box is not None:
        if bool(min_box_width(box) < 2.0 * cutoff):
            raise RuntimeError("periodic box is narrower than twice the model cutoff in some direction, so "
                               "minimum-image neighbours are ambiguous; use a larger box (replicate the system)")
        recip = torch.linalg.inv(box)
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        d = pos.unsqueeze(0) - pos[start:stop].unsqueeze(1)  # [c, n, 3] = pos[j] - pos[i]
        s = torch.zeros_like(d)
        if box is not None:
            frac = d @ recip
            s = -torch.round(frac) @ box
            d = d + s
        r2 = (d * d).sum(-1)
        ii = torch.arange(start, stop, device=pos.device).unsqueeze(1)
        jj = torch.arange(n, device=pos.device).unsqueeze(0)
        mask = (r2 < cut2) & (ii != jj)
        idx = torch.nonzero(mask)
        srcs.append(idx[:, 0] + start)
        dsts.append(idx[:, 1])
        shifts.append(s[idx[:, 0], idx[:, 1]])
    edge_index = torch.stack([torch.cat(srcs), torch.cat(dsts)])
    return edge_index, torch.cat(shifts).to(pos.dtype)
