"""Neighbour graphs: cell list and Verlet cache against an independent all-images brute force."""

from __future__ import annotations

import itertools

import pytest
import torch

from engine_plugins.nn.graph import VerletGraph, neighbor_graph

BOXES = {
    "triclinic": torch.tensor([[20.0, 0, 0], [5.0, 19, 0], [3.0, 4, 18]], dtype=torch.float64),
    "thin-orthorhombic": torch.diag(torch.tensor([13.0, 25.0, 40.0], dtype=torch.float64)),
    "open": None,
}


def all_images_pairs(pos: torch.Tensor, cutoff: float, box: torch.Tensor | None) -> set[tuple[int, int]]:
    """Pairs with some periodic image (27 images) within the cutoff: the reference."""
    images = ([torch.tensor(k, dtype=pos.dtype) @ box for k in itertools.product([-1, 0, 1], repeat=3)]
              if box is not None else [torch.zeros(3, dtype=pos.dtype)])
    d = pos[None, :, :] - pos[:, None, :]
    best = torch.stack([(d + s).norm(dim=-1) for s in images]).min(0).values
    mask = (best < cutoff) & ~torch.eye(len(pos), dtype=torch.bool)
    return set(map(tuple, torch.nonzero(mask).tolist()))


@pytest.mark.parametrize("name", list(BOXES))
@pytest.mark.parametrize("n", [40, 400])
def test_neighbor_graph_matches_all_images_brute_force(name, n):
    box = BOXES[name]
    gen = torch.Generator().manual_seed(n)
    span = box if box is not None else torch.eye(3, dtype=torch.float64) * 30
    pos = torch.rand(n, 3, dtype=torch.float64, generator=gen) @ span - 3.0  # some atoms outside the cell
    ei, es = neighbor_graph(pos, 6.0, box)
    got = list(map(tuple, ei.T.tolist()))
    assert len(got) == len(set(got)), "duplicate edges"
    assert set(got) == all_images_pairs(pos, 6.0, box)
    lengths = (pos[ei[1]] - pos[ei[0]] + es).norm(dim=1)
    assert (lengths < 6.0).all()
    if box is not None:  # shifts are whole lattice vectors
        frac = es @ torch.linalg.inv(box)
        assert torch.allclose(frac, frac.round(), atol=1e-9)


def test_box_too_small_is_refused():
    with pytest.raises((RuntimeError, torch.jit.Error), match="narrower than twice the model cutoff"):
        neighbor_graph(torch.zeros(2, 3, dtype=torch.float64), 6.0, torch.eye(3, dtype=torch.float64) * 11.0)


def test_verlet_graph_rebuilds_when_needed_and_equals_a_fresh_graph():
    box = BOXES["triclinic"]
    gen = torch.Generator().manual_seed(1)
    pos = torch.rand(300, 3, dtype=torch.float64, generator=gen) @ box
    vg = torch.jit.script(VerletGraph(6.0, 1.0))
    moved = pos
    for step in range(12):  # random walk of 0.1 Å per coordinate per step: the 0.5 Å half-skin is crossed
        moved = moved + 0.1 * torch.randn(pos.shape, dtype=torch.float64, generator=gen)
        ei, es = vg(moved, box)
        ref_i, ref_s = neighbor_graph(moved, 6.0, box)
        assert set(map(tuple, ei.T.tolist())) == set(map(tuple, ref_i.T.tolist()))
    assert 1 < vg.rebuilds < 12  # small moves reuse the list, accumulated ones rebuild it
    ei, _ = vg(moved, box * 1.01)  # a new box forces a rebuild
    assert vg.rebuilds >= 3
