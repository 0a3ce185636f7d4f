"""NequIP backbone and pseudo-force model: export contract, exact forces, ghosts, symmetry, global state."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from engine_plugins.export import export_artifact, load_artifact
from engine_plugins.nn.graph import neighbor_graph
from engine_plugins.nn.nequip_backbone import (
    NequIPConfig,
    build_nequip_backbone,
    build_nequip_pseudo_force,
    nequip_global_state,
    nequip_pseudo_force_metadata,
    script_nequip_model,
)

F64 = torch.float64
R_MAX = 2.0
BOX_L = 4.5  # >= 2 r_max (minimum image) and < 3 r_max, so many edges cross the boundary
SMALL = dict(type_names=["A", "B"], r_max=R_MAX, num_layers=2, l_max=1, num_features=8,
             num_bessels=6, radial_mlp_width=16, avg_num_neighbors=4.0, model_dtype="float64", seed=7)


def _random_positions(n: int, box_l: float, min_dist: float, seed: int, periodic: bool = True) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    pts: list[torch.Tensor] = []
    while len(pts) < n:
        p = torch.rand(3, generator=g, dtype=F64) * box_l
        ok = True
        for q in pts:
            d = p - q
            if periodic:
                d = d - box_l * torch.round(d / box_l)
            if float(d.norm()) < min_dist:
                ok = False
                break
        if ok:
            pts.append(p)
    return torch.stack(pts)


@pytest.fixture(scope="module")
def model():
    m = build_nequip_pseudo_force(**SMALL)
    return m.eval()


@pytest.fixture(scope="module")
def periodic_system():
    pos = _random_positions(12, BOX_L, 0.9, seed=3)
    types = torch.tensor([0, 1] * 6)
    box = torch.eye(3, dtype=F64) * BOX_L
    return pos, types, box


def test_export_roundtrip_and_scripted_equals_eager(model, periodic_system, tmp_path):
    pos, types, box = periodic_system
    ei, shift = neighbor_graph(pos, R_MAX, box)
    e_ref, f_ref = model(pos, types, ei, shift, pos.shape[0])

    meta = nequip_pseudo_force_metadata(model, periodicity="periodic")
    assert meta.method == "nequip_pseudo_force" and meta.num_message_passing_layers == 2
    assert meta.role_fields == {"conservative": True} and meta.ghost_cutoff == pytest.approx(2 * R_MAX)
    path = export_artifact(script_nequip_model(model), meta, tmp_path / "nequip.pt")
    art = load_artifact(path)
    assert art.metadata.role == "pseudo_force" and art.metadata.type_names == ["A", "B"]
    assert art.metadata.cutoff == R_MAX and art.metadata.dtype == "float64"

    e, f = art.module(pos, types, ei, shift, pos.shape[0])
    assert e.dtype == F64 and f.shape == pos.shape
    assert torch.allclose(e, e_ref, rtol=0, atol=1e-12)
    assert torch.allclose(f, f_ref, rtol=0, atol=1e-12)
    assert float(f_ref.abs().max()) > 1e-3  # a non-trivial model


def test_matches_nequip_own_builder():
    """Same seed and options as nequip's NequIPGNNModel: the same weights and the same energies."""
    from nequip.model import NequIPGNNModel

    m = build_nequip_pseudo_force(**SMALL).eval()
    cfg = m.config
    with nequip_global_state():
        ref = NequIPGNNModel(seed=cfg.seed, model_dtype=cfg.model_dtype, type_names=cfg.type_names,
                             r_max=cfg.r_max, num_layers=cfg.num_layers, l_max=cfg.l_max,
                             num_features=cfg.num_features, num_bessels=cfg.num_bessels,
                             radial_mlp_width=cfg.radial_mlp_width, avg_num_neighbors=cfg.avg_num_neighbors,
                             per_type_energy_scales=1.0, per_type_energy_shifts=0.0, do_derivatives=False)
    ours = m.backbone.state_dict()
    theirs = {k.removeprefix("model.func."): v for k, v in ref.state_dict().items()
              if k.startswith("model.func.")}  # (ForceStressOutput's empty buffer is not ours)
    assert set(ours) == set(theirs)
    for k in ours:
        assert torch.equal(ours[k], theirs[k]), k

    pos = _random_positions(8, 4.0, 0.9, seed=11, periodic=False)
    types = torch.tensor([0, 1, 1, 0, 0, 1, 0, 1])
    ei, shift = neighbor_graph(pos, R_MAX)
    e, _ = m(pos, types, ei, shift, 8)
    out = ref({"pos": pos, "atom_types": types, "edge_index": ei})
    assert torch.allclose(e, out["atomic_energy"].view(-1), rtol=0, atol=1e-12)


def test_finite_difference_forces_periodic(model, periodic_system):
    pos, types, box = periodic_system
    ei, shift = neighbor_graph(pos, R_MAX, box)
    assert int((shift.abs().sum(1) > 0).sum()) >= 6, "test needs edges across the periodic boundary"
    _, forces = model(pos, types, ei, shift, pos.shape[0])

    def energy(p: torch.Tensor) -> float:
        e_i, s_i = neighbor_graph(p, R_MAX, box)
        return float(model(p, types, e_i, s_i, p.shape[0])[0].sum())

    h = 1e-5
    fd = torch.zeros_like(pos)
    for a in range(pos.shape[0]):
        for d in range(3):
            plus, minus = pos.clone(), pos.clone()
            plus[a, d] += h
            minus[a, d] -= h
            fd[a, d] = -(energy(plus) - energy(minus)) / (2 * h)
    rel = float((fd - forces).abs().max() / forces.abs().max())
    assert rel <= 1e-6, rel


def _with_ghosts(pos: torch.Tensor, types: torch.Tensor, box_l: float, halo: float):
    """Local atoms first, then periodic copies within ``halo`` of the box (zero shifts, like LAMMPS)."""
    ghost_pos, ghost_types, owner = [], [], []
    rng = range(-1, 2)
    for nx in rng:
        for ny in rng:
            for nz in rng:
                if nx == ny == nz == 0:
                    continue
                p = pos + box_l * torch.tensor([nx, ny, nz], dtype=F64)
                keep = ((p > -halo) & (p < box_l + halo)).all(dim=1)
                ghost_pos.append(p[keep])
                ghost_types.append(types[keep])
                owner.append(torch.nonzero(keep).view(-1))
    all_pos = torch.cat([pos] + ghost_pos)
    all_types = torch.cat([types] + ghost_types)
    owners = torch.cat([torch.arange(pos.shape[0])] + owner)
    return all_pos, all_types, owners


def test_ghost_nodes_give_periodic_result(model, periodic_system):
    """n_local semantics (what LAMMPS relies on): explicit ghosts with a 2 x cutoff halo."""
    pos, types, box = periodic_system
    n = pos.shape[0]
    ei, shift = neighbor_graph(pos, R_MAX, box)
    e_ref, f_ref = model(pos, types, ei, shift, n)

    layers = model.config.num_layers
    all_pos, all_types, owners = _with_ghosts(pos, types, BOX_L, halo=layers * R_MAX)
    assert all_pos.shape[0] > 10 * n
    g_ei, g_shift = neighbor_graph(all_pos, R_MAX)  # plain graph over all nodes, zero shifts
    assert float(g_shift.abs().max()) == 0.0
    e_all, f_all = model(all_pos, all_types, g_ei, g_shift, n)
    assert e_all.shape[0] == all_pos.shape[0] and f_all.shape == all_pos.shape

    total, total_ref = e_all[:n].sum(), e_ref.sum()
    assert abs(float(total - total_ref)) <= 1e-10 * abs(float(total_ref))
    folded = torch.zeros_like(pos).index_add(0, owners, f_all)  # newton on: ghost forces to owners
    rel = float((folded - f_ref).abs().max() / f_ref.abs().max())
    assert rel <= 1e-10, rel
    # and the per-atom energies of the owned atoms are the periodic ones
    assert torch.allclose(e_all[:n], e_ref, rtol=0, atol=1e-10 * float(e_ref.abs().max()))


def _random_rotation(seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(3, 3, generator=g, dtype=F64))
    q = q * torch.sign(torch.diagonal(r))
    if torch.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def test_rotation_and_permutation(model):
    pos = _random_positions(10, 4.0, 0.9, seed=5, periodic=False)
    types = torch.tensor([0, 1, 1, 0, 1, 0, 0, 1, 1, 0])
    ei, shift = neighbor_graph(pos, R_MAX)
    e, f = model(pos, types, ei, shift, 10)

    rot = _random_rotation(1)
    pos_r = pos @ rot.T
    e_r, f_r = model(pos_r, types, ei, shift @ rot.T, 10)
    assert abs(float(e_r.sum() - e.sum())) <= 1e-10 * abs(float(e.sum()))
    assert torch.allclose(f_r, f @ rot.T, rtol=0, atol=1e-10)

    perm = torch.randperm(10, generator=torch.Generator().manual_seed(2))
    ei_p, shift_p = neighbor_graph(pos[perm], R_MAX)
    e_p, f_p = model(pos[perm], types[perm], ei_p, shift_p, 10)
    assert torch.allclose(e_p, e[perm], rtol=0, atol=1e-12)
    assert torch.allclose(f_p, f[perm], rtol=0, atol=1e-12)


def _fusion_strategy():
    old = torch.jit.set_fusion_strategy([("STATIC", 1)])
    torch.jit.set_fusion_strategy(old)
    return old


def test_build_and_script_leave_global_state_alone():
    import os

    import e3nn
    from nequip.utils.global_state import global_state_initialized

    env_keys = ("PYTORCH_JIT_USE_NNC_NOT_NVFUSER", "PL_GLOBAL_SEED", "PL_SEED_WORKERS")
    before = dict(
        dtype=torch.get_default_dtype(),
        e3nn=dict(e3nn.get_optimization_defaults()),
        nequip=global_state_initialized(),
        env={k: os.environ.get(k) for k in env_keys},
        fusion=_fusion_strategy(),
        sharing=torch.multiprocessing.get_sharing_strategy(),
    )
    torch_rng = torch.get_rng_state()
    py_rng = random.getstate()
    np_rng = np.random.get_state()[1].copy()
    assert before["dtype"] == torch.float32  # pytest's process default

    m = build_nequip_pseudo_force(**{**SMALL, "model_dtype": "float32", "num_layers": 2})
    backbone = build_nequip_backbone(**SMALL)
    scripted = script_nequip_model(m)

    after = dict(
        dtype=torch.get_default_dtype(),
        e3nn=dict(e3nn.get_optimization_defaults()),
        nequip=global_state_initialized(),
        env={k: os.environ.get(k) for k in env_keys},
        fusion=_fusion_strategy(),
        sharing=torch.multiprocessing.get_sharing_strategy(),
    )
    assert after == before
    assert torch.equal(torch.get_rng_state(), torch_rng)
    assert random.getstate() == py_rng
    assert np.array_equal(np.random.get_state()[1], np_rng)
    assert torch.tensor([1.0]).dtype == torch.float32
    assert isinstance(backbone.nequip_config, NequIPConfig)

    # the float32 model really is float32 end to end, and its scripted form agrees
    pos = torch.tensor([[0.0, 0.0, 0.0], [1.1, 0.2, 0.0], [0.3, 1.2, 0.4]])
    types = torch.tensor([0, 1, 0])
    ei, shift = neighbor_graph(pos, R_MAX)
    e, f = m.eval()(pos, types, ei, shift, 3)
    e_s, f_s = scripted(pos, types, ei, shift, 3)
    assert e.dtype == torch.float32 and f.dtype == torch.float32
    assert torch.allclose(e, e_s, atol=1e-6) and torch.allclose(f, f_s, atol=1e-6)
    meta = nequip_pseudo_force_metadata(m)
    assert meta.dtype == "float32"


def test_same_seed_same_weights_and_config_errors():
    a = build_nequip_backbone(**SMALL).state_dict()
    b = build_nequip_backbone(**SMALL).state_dict()
    c = build_nequip_backbone(**{**SMALL, "seed": 8}).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)
    with pytest.raises(ValueError, match="avg_num_neighbors"):
        NequIPConfig(type_names=["A"], r_max=2.0, avg_num_neighbors=None)
    with pytest.raises(ValueError, match="alphanumeric"):
        NequIPConfig(type_names=["C-a"], r_max=2.0, avg_num_neighbors=3.0)
    with pytest.raises(TypeError, match="unknown"):
        build_nequip_backbone(**SMALL, nonsense=1)
