"""Neighbour graphs inside TorchScript, for engines that do not hand us one (OpenMM, standalone).

LAMMPS gives its own lists (ghost atoms as explicit nodes); OpenMM gives positions and an optional
box, so the adapter builds a minimum-image graph here. :func:`neighbor_graph` is a chunked
brute-force search; :class:`VerletGraph` keeps a candidate list within ``cutoff + skin`` and
rebuilds it only when an atom has moved more than ``skin / 2`` or the box changed, as MD codes do,
so that the per-step cost is a filter over the candidate edges.
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
def _minimum_image(d: torch.Tensor, box: torch.Tensor, recip: torch.Tensor, triangular: bool) -> torch.Tensor:
    """Shift that brings difference vectors ``d`` [..., 3] to their minimum image."""
    if triangular:
        # reduced (lower-triangular) cell as OpenMM and LAMMPS use: c, then b, then a
        s = torch.zeros_like(d)
        for k in [2, 1, 0]:
            n = torch.round((d[..., k] + s[..., k]) / box[k, k])
            s = s - n.unsqueeze(-1) * box[k]
        return s
    return -torch.round(d @ recip) @ box


@torch.jit.script
def _brute_force_pairs(n: int, device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
    """All ordered pairs i != j (small systems only)."""
    i = torch.arange(n, device=device).repeat_interleave(n)
    j = torch.arange(n, device=device).repeat(n)
    keep = i != j
    return i[keep], j[keep]


@torch.jit.script
def _cell_list_pairs(pos: torch.Tensor, cutoff: float, box: Optional[torch.Tensor],
                     recip: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Candidate ordered pairs (i, j), i != j, from a cell list: a superset of the pairs within ``cutoff``.

    Cells are a grid in fractional coordinates (periodic) or over the bounding box (open), each at
    least ``cutoff`` wide, so every pair within the cutoff sits in neighbouring cells.
    """
    n = pos.shape[0]
    dev = pos.device
    if box is not None:
        frac = pos @ recip
        frac = frac - torch.floor(frac)
        vol = torch.abs(torch.det(box))
        widths = torch.stack([vol / torch.linalg.norm(torch.linalg.cross(box[1], box[2])),
                              vol / torch.linalg.norm(torch.linalg.cross(box[2], box[0])),
                              vol / torch.linalg.norm(torch.linalg.cross(box[0], box[1]))])
    else:
        lo = pos.min(0).values
        extent = pos.max(0).values - lo + 1e-6
        frac = (pos - lo) / extent
        widths = extent
    ncell = torch.clamp(torch.floor(widths / cutoff), min=1).to(torch.long)
    nx, ny, nz = int(ncell[0]), int(ncell[1]), int(ncell[2])
    c3 = torch.minimum(torch.floor(frac * ncell.to(frac.dtype)).to(torch.long), ncell - 1).clamp(min=0)
    cell_id = (c3[:, 0] * ny + c3[:, 1]) * nz + c3[:, 2]
    ncells = nx * ny * nz
    order = torch.argsort(cell_id)
    counts = torch.bincount(cell_id, minlength=ncells)
    starts = torch.cumsum(counts, 0) - counts
    m = int(counts.max())
    sorted_cells = cell_id[order]
    rank = torch.arange(n, device=dev) - starts[sorted_cells]
    table = torch.full((ncells, m), -1, dtype=torch.long, device=dev)
    table[sorted_cells, rank] = order
    cid = torch.arange(ncells, device=dev)
    cx, cy, cz = cid // (ny * nz), (cid // nz) % ny, cid % nz
    dims = [nx, ny, nz]
    offsets: list[list[int]] = []
    for k in range(3):
        if box is not None and dims[k] < 3:
            offsets.append(list(range(dims[k])))  # every cell once (mod n), no duplicates
        else:
            offsets.append([-1, 0, 1])
    srcs: list[torch.Tensor] = []
    dsts: list[torch.Tensor] = []
    for ox in offsets[0]:
        for oy in offsets[1]:
            for oz in offsets[2]:
                bx, by, bz = cx + ox, cy + oy, cz + oz
                if box is not None:
                    valid = torch.ones_like(cid, dtype=torch.bool)
                    bx, by, bz = bx % nx, by % ny, bz % nz
                else:
                    valid = (bx >= 0) & (bx < nx) & (by >= 0) & (by < ny) & (bz >= 0) & (bz < nz)
                nb = (bx.clamp(0, nx - 1) * ny + by.clamp(0, ny - 1)) * nz + bz.clamp(0, nz - 1)
                a = table[cid[valid]].unsqueeze(2)  # [c, m, 1]
                b = table[nb[valid]].unsqueeze(1)  # [c, 1, m]
                ok = (a >= 0) & (b >= 0) & (a != b)
                idx = torch.nonzero(ok)
                srcs.append(a.squeeze(2)[idx[:, 0], idx[:, 1]])
                dsts.append(b.squeeze(1)[idx[:, 0], idx[:, 2]])
    return torch.cat(srcs), torch.cat(dsts)


@torch.jit.script
def neighbor_graph(pos: torch.Tensor, cutoff: float, box: Optional[torch.Tensor] = None
                   ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Full directed edge list [centre, neighbour] within ``cutoff`` and per-edge shift vectors.

    With a ``box`` (rows = cell vectors, any triclinic cell) the minimum image is used; the box must
    be at least twice the cutoff wide in every direction so that each pair has one image at most.
    Edge vector = pos[j] - pos[i] + shift. Cell list (O(N)); brute force below 64 atoms.
    """
    n = pos.shape[0]
    recip = torch.empty(0, dtype=pos.dtype, device=pos.device)
    triangular = False
    if box is not None:
        if bool(min_box_width(box) < 2.0 * cutoff):
            raise RuntimeError("periodic box is narrower than twice the model cutoff in some direction, so "
                               "minimum-image neighbours are ambiguous; use a larger box (replicate the system)")
        recip = torch.linalg.inv(box)
        triangular = bool((torch.triu(box, diagonal=1) == 0).all())
    if n < 64:
        i, j = _brute_force_pairs(n, pos.device)
    else:
        i, j = _cell_list_pairs(pos, cutoff, box, recip)
    d = pos[j] - pos[i]
    shift = torch.zeros_like(d)
    if box is not None:
        shift = _minimum_image(d, box, recip, triangular)
    v = d + shift
    keep = (v * v).sum(-1) < cutoff * cutoff
    i, j, shift = i[keep], j[keep], shift[keep]
    # deterministic order: by centre, then neighbour (as a sorted neighbour list would give)
    key = torch.argsort(i * n + j)
    return torch.stack([i[key], j[key]]), shift[key]


class VerletGraph(torch.nn.Module):
    """Neighbour graph with a Verlet skin, cached between calls (TorchScript module state)."""

    def __init__(self, cutoff: float, skin: float = 1.0) -> None:
        super().__init__()
        self.cutoff = float(cutoff)
        self.skin = float(skin)
        self.ref_pos = torch.empty(0, 3)
        self.ref_box = torch.empty(0)
        self.cand_index = torch.empty(2, 0, dtype=torch.long)
        self.cand_shift = torch.empty(0, 3)
        self.rebuilds = 0

    def forward(self, pos: torch.Tensor, box: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        skin = self.skin
        box_now = torch.empty(0, dtype=pos.dtype, device=pos.device) if box is None else box
        if box is not None:
            # the candidate list must stay minimum-image: cutoff + skin within half the box
            skin = max(0.0, min(skin, 0.5 * float(min_box_width(box)) - self.cutoff))
        rebuild = (self.ref_pos.shape != pos.shape or self.ref_pos.dtype != pos.dtype
                   or self.ref_pos.device != pos.device or self.ref_box.shape != box_now.shape)
        if not rebuild and box is not None:
            rebuild = not bool(torch.equal(self.ref_box, box_now))
        if not rebuild:
            moved = (pos - self.ref_pos).square().sum(-1).max()
            rebuild = bool(moved > (0.5 * skin) ** 2) if pos.shape[0] > 0 else False
        if rebuild:
            self.cand_index, self.cand_shift = neighbor_graph(pos, self.cutoff + skin, box)
            self.ref_pos = pos.detach().clone()
            self.ref_box = box_now.detach().clone()
            self.rebuilds += 1
        i, j = self.cand_index[0], self.cand_index[1]
        vec = pos[j] - pos[i] + self.cand_shift
        keep = (vec * vec).sum(-1) < self.cutoff * self.cutoff
        return self.cand_index[:, keep], self.cand_shift[keep]
