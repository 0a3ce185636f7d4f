"""Flow-matching propagator/corrector: the NequIP vector field, its loss, training, export and DDP.

Data: two tiny real LAMMPS transport runs (one material at 800 K and 1200 K, `simulate` preset
tiny), made once per module; no dependence on /work/data.
"""

from __future__ import annotations

import copy
import functools
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from engine_plugins.export.artifact import load_artifact, read_metadata
from engine_plugins.export.metadata import MetadataError
from engine_plugins.methods.propagator.loss import (adaptive_prior_scale, corrector_noise, flow_matching_batch,
                                                    flow_matching_loss, mb_width)
from engine_plugins.methods.propagator.model import FlowModelConfig, build_flow_model, flow_model_metadata
from engine_plugins.nn.graph import neighbor_graph

MATERIAL = "Li0.25-s1.55"
TEMPS = (800.0, 1200.0)
GOOD_ROLE_FIELDS = {"delta_tau": 1.0, "temperature_range": [600.0, 1200.0], "flow_steps": 10, "solver": "euler",
                    "prior": {"kind": "maxwell_boltzmann", "scale": {"Fw": 3.16, "Li": 3.16},
                              "mass": {"Fw": 100.0, "Li": 6.94}},
                    "max_displacement": 8.0, "max_attempts": 10}


@functools.lru_cache(maxsize=None)
def tiny_transport() -> Path:
    from engine_plugins.data.simulate import TRANSPORT_PRESETS, simulate_transport

    root = Path(tempfile.mkdtemp(prefix="ep_prop_"))
    import atexit

    atexit.register(shutil.rmtree, root, ignore_errors=True)
    simulate_transport(root / "transport", materials=[MATERIAL], temperatures=list(TEMPS),
                       settings=TRANSPORT_PRESETS["tiny"], progress=False)
    return root / "transport"


def _config(out: Path, role: str = "propagator", **train) -> dict:
    return {
        "role": role, "output_dir": str(out), "seed": 3,
        "data": {"cases": str(tiny_transport()), "lag": 2, "split": {"val_temperatures": [1200.0]},
                 "max_val_pairs": 4},
        "model": {"r_max": 4.0, "num_layers": 2, "num_features": 8, "radial_mlp_width": 16, "fourier_features": 4,
                  "model_dtype": "float64"},
        "prior": {"scale": {"Fw": 3.16, "Li": 3.16}} if role == "propagator" else {"scale": 0.316},
        "train": {"steps": 6, "batch_size": 2, "lr": 3e-3, "warmup_steps": 2, "checkpoint_every": 2, "val_every": 1000,
                  "val_repeats": 1, "val_jump_frames": 1, "progress": False, **train},
        "export": {"path": None},
    }


def _small_model(**kw) -> torch.nn.Module:
    opts = dict(type_names=["Fw", "Li"], r_max=3.0, avg_num_neighbors=6.0, num_features=8, radial_mlp_width=16,
                fourier_features=4, out_scale={"Fw": 0.5, "Li": 2.0}, disp_scale={"Fw": 0.1, "Li": 0.5}, seed=5)
    opts.update(kw)
    return build_flow_model(**opts)


def _cluster(n: int = 24, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, generator=g, dtype=torch.float64) * 6.0
    x_t = x + 0.3 * torch.randn(n, 3, generator=g, dtype=torch.float64)
    types = (torch.rand(n, generator=g) < 0.4).long()
    temp = torch.full((n,), 900.0, dtype=torch.float64)
    return x, x_t, types, temp


def _call(model, x_t, x, types, temp, t=0.37, cutoff=3.0):
    ei, es = neighbor_graph(x, cutoff)
    return model(x_t, x, types, ei, es, torch.tensor(t, dtype=x.dtype), temp, x.shape[0])


# ------------------------------------------------------------------------------------ the model
def test_equivariance_translation_invariance_and_conditioning():
    model = _small_model()
    x, x_t, types, temp = _cluster()
    v = _call(model, x_t, x, types, temp)
    assert v.shape == (24, 3) and v.dtype == torch.float64 and float(v.abs().max()) > 1e-4
    g = torch.Generator().manual_seed(1)
    for det in (1.0, -1.0):  # rotations and improper rotations (positions are polar vectors)
        q, _ = torch.linalg.qr(torch.randn(3, 3, generator=g, dtype=torch.float64))
        q = q * (det / torch.linalg.det(q))
        shift = torch.tensor([3.0, -7.0, 11.0], dtype=torch.float64)
        v2 = _call(model, x_t @ q.T + shift, x @ q.T + shift, types, temp)
        assert torch.allclose(v2, v @ q.T, atol=1e-12), float((v2 - v @ q.T).abs().max())
    # permutation equivariance
    perm = torch.randperm(24, generator=g)
    assert torch.allclose(_call(model, x_t[perm], x[perm], types[perm], temp), v[perm], atol=1e-12)
    # t and T are inputs (conditioning is live), x_t matters
    assert not torch.allclose(_call(model, x_t, x, types, temp, t=0.9), v)
    assert not torch.allclose(_call(model, x_t, x, types, temp * 0.6), v)
    assert not torch.allclose(_call(model, x_t + 0.05 * torch.randn(24, 3, generator=g, dtype=torch.float64), x,
                                    types, temp), v)


def test_locality_halo_and_edges_beyond_the_cutoff():
    model = _small_model()  # 2 layers, cutoff 3 A: a node sees 2 graph hops
    n = 8
    x = torch.zeros(n, 3, dtype=torch.float64)
    x[:, 0] = torch.arange(n, dtype=torch.float64) * 2.5  # a chain: only nearest neighbours are within 3 A
    x_t = x + 0.1 * torch.randn(n, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    types = torch.tensor([0, 1] * (n // 2))
    temp = torch.full((n,), 800.0, dtype=torch.float64)
    v = _call(model, x_t, x, types, temp)
    # moving the flow state of atom 3 (3 hops from atom 0) leaves atom 0 alone; atom 2 (2 hops) does not
    for k, same in ((3, True), (2, False)):
        moved = x_t.clone()
        moved[k] += torch.tensor([0.3, -0.2, 0.1], dtype=torch.float64)
        v2 = _call(model, moved, x, types, temp)
        assert torch.equal(v2[0], v[0]) is same
    # extra edges longer than r_max (e.g. a Verlet list with skin) change nothing
    ei, es = neighbor_graph(x, 3.0)
    ei_skin, es_skin = neighbor_graph(x, 5.5)
    assert ei_skin.shape[1] > ei.shape[1]
    t = torch.tensor(0.37, dtype=torch.float64)
    v_skin = model(x_t, x, types, ei_skin, es_skin, t, temp, n)
    assert torch.allclose(v_skin, v, atol=1e-13)


def test_float32_option_and_global_state():
    x, x_t, types, temp = _cluster()
    m64 = _small_model()
    m32 = _small_model(model_dtype="float32")
    m32.load_state_dict(m64.state_dict())
    v64 = _call(m64, x_t, x, types, temp)
    v32 = _call(m32, x_t.float(), x.float(), types, temp.float())
    assert v32.dtype == torch.float32 and torch.allclose(v32.double(), v64, atol=1e-4, rtol=1e-3)
    # (TorchScript: see the export round trip in test_training_lowers_the_loss_exports_and_round_trips)
    assert torch.get_default_dtype() == torch.float32  # nequip's global state contained


def test_role_fields_validation_errors():
    cfg = FlowModelConfig(type_names=["Fw", "Li"], avg_num_neighbors=5.0)

    def meta(role="propagator", **changes):
        rf = copy.deepcopy(GOOD_ROLE_FIELDS)
        for k, v in changes.items():
            if v is None:
                rf.pop(k)
            else:
                rf[k] = v
        return flow_model_metadata(role, cfg, rf, "periodic")

    meta().validate()
    meta("corrector", delta_tau=None).validate()  # Δτ is the propagator's only
    bad = [
        (dict(delta_tau=0.0), "role_fields.delta_tau.*positive"),
        (dict(delta_tau=-1.0), "role_fields.delta_tau"),
        (dict(solver="rk4"), "role_fields.solver.*euler, heun"),
        (dict(flow_steps=0), "role_fields.flow_steps.*integer >= 1"),
        (dict(flow_steps=2.5), "role_fields.flow_steps"),
        (dict(temperature_range=[900.0, 600.0]), "role_fields.temperature_range"),
        (dict(prior={}), "role_fields.prior.kind"),
        (dict(prior={"kind": "gaussian"}), "role_fields.prior.kind.*maxwell_boltzmann"),
        (dict(prior={"kind": "maxwell_boltzmann", "scale": {"Fw": 1.0}, "mass": {"Fw": 1.0, "Li": 6.94}}),
         r"role_fields.prior.scale.*\['Li'\]"),
        (dict(prior={"kind": "maxwell_boltzmann", "scale": {"Fw": 1.0, "Li": 1.0}, "mass": {"Fw": 0.0, "Li": 6.94}}),
         "role_fields.prior.mass.Fw.*positive"),
        (dict(max_displacement=-2.0), "role_fields.max_displacement"),
        (dict(max_attempts=0), "role_fields.max_attempts"),
        (dict(delta_tau=None), "role_fields.delta_tau.*role 'propagator' needs it"),
    ]
    for changes, pattern in bad:
        with pytest.raises(MetadataError, match=pattern):
            meta(**changes).validate()


# ------------------------------------------------------------------------------------ loss and prior
def test_flow_matching_batch_and_prior_widths():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(10, 3, dtype=torch.float64)
    x1 = x + 1.0
    batch = torch.tensor([0] * 4 + [1] * 6)
    sigma = torch.full((10,), 0.2, dtype=torch.float64)
    fb = flow_matching_batch(x, x1, sigma, batch, 2, g)
    t = fb.t_node.unsqueeze(1)
    assert torch.allclose(fb.x_t, (1 - t) * fb.x0 + t * x1) and torch.allclose(fb.target, x1 - fb.x0)
    assert torch.equal(fb.t_node[:4], fb.t_node[:1].expand(4)) and fb.t_node[0] != fb.t_node[4]
    noisy, s = corrector_noise(x, batch, 2, 0.25, g)
    assert s.shape == (10,) and bool((s >= 0).all() and (s <= 0.25).all())
    assert torch.equal(s[:4], s[:1].expand(4)) and torch.equal(s[4:], s[4:5].expand(6))  # one level per frame
    # LiFlow's figure: scale 1 gives ~0.1 A for Li at 800 K
    assert mb_width(1.0, 800.0, 6.94) == pytest.approx(0.0997, abs=5e-4)
    # adaptive choice: nearest MB width on a log scale
    assert adaptive_prior_scale(1.0, 800.0, 6.94, [1.0, 10.0]) == 10.0
    assert adaptive_prior_scale(0.12, 800.0, 6.94, [1.0, 10.0]) == 1.0
    v = torch.zeros(10, 3, dtype=torch.float64)
    loss, parts = flow_matching_loss(v, fb.target, torch.zeros(10, dtype=torch.long), torch.tensor([2.0]))
    assert float(loss) == pytest.approx(float(parts["mse"]) / 4.0)


# ------------------------------------------------------------------------------------ training
@functools.lru_cache(maxsize=None)
def _flow_data():
    from engine_plugins.train.propagator import DataOptions, SplitOptions, load_flow_data

    return load_flow_data(DataOptions(cases=str(tiny_transport()), lag=2, split=SplitOptions(val_temperatures=[1200.0]),
                                      max_val_pairs=4))


def _state(path: Path) -> dict:
    from engine_plugins.train.checkpoint import load_checkpoint

    return load_checkpoint(path)


def test_adaptive_prior_per_case(tmp_path):
    from engine_plugins.train.propagator import PriorOptions, PriorTable

    data = _flow_data()
    table = PriorTable(PriorOptions(scale=3.16, adaptive={"choices": {"Li": [1.0, 10.0], "Fw": [0.316, 3.16]}}),
                       data.type_names, data.masses)
    table.fit_adaptive(data.train)
    assert set(table.per_case) == set(data.split["train"])
    field = table.prior_field()
    assert field["kind"] == "maxwell_boltzmann" and set(field["adaptive"]["per_case"]) == set(data.split["train"])
    assert all(field["scale"][t] in {"Li": (1.0, 10.0), "Fw": (0.316, 3.16)}[t] for t in ("Li", "Fw"))
    # held-out cases are measured by the same rule, for validation, without voting for the default
    default = table.default_scale()
    table.fit_adaptive(data.val, held_out=True)
    assert set(table.measured) == set(data.split["val"]) and table.default_scale() == default
    val_case = data.split["val"][0]
    assert table.scale_tensor(val_case).tolist() == [table.measured[val_case][t] for t in data.type_names]
    # by hand: the Li rms displacement per component over the lag, nearest MB width on a log scale
    k = data.val.case_ids().index(val_case)
    traj, lag = data.val.trajectories[k], data.val.lag
    li = np.array([s == "Li" for s in traj.species])
    rms = float(np.sqrt(np.mean((traj.positions[lag:, li] - traj.positions[:-lag, li]) ** 2)))
    temp = data.val.cases[k].temperature
    expected = min((1.0, 10.0), key=lambda c: abs(math.log(mb_width(c, temp, data.masses["Li"]) / rms)))
    assert table.measured[val_case]["Li"] == expected
    with pytest.raises(ValueError, match="unknown type"):
        PriorTable(PriorOptions(adaptive={"choices": {"Na": [1.0]}}), data.type_names, data.masses)
    # width_factor f: the pick is the choice nearest f x rms, and the artifact's rule carries f
    wide = PriorTable(PriorOptions(scale=3.16, adaptive={"choices": {"Li": [1.0, 3.0, 10.0, 30.0]},
                                                         "width_factor": 3.0}), data.type_names, data.masses)
    wide.fit_adaptive(data.val, held_out=True)
    expected = min((1.0, 3.0, 10.0, 30.0),
                   key=lambda c: abs(math.log(mb_width(c, temp, data.masses["Li"]) / (3 * rms))))
    assert wide.measured[val_case]["Li"] == expected and wide.prior_field()["adaptive"]["width_factor"] == 3.0
    assert table.prior_field()["adaptive"]["width_factor"] == 1.0
    # width_exponent a: nearest to f x (rms / sqrt(kT/m))^a
    unit = mb_width(1.0, temp, data.masses["Li"])
    squeezed = PriorTable(PriorOptions(scale=3.16, adaptive={"choices": {"Li": [1.0, 3.0, 10.0, 30.0]},
                                                             "width_factor": 2.0, "width_exponent": 0.5}),
                          data.type_names, data.masses)
    squeezed.fit_adaptive(data.val, held_out=True)
    expected = min((1.0, 3.0, 10.0, 30.0), key=lambda c: abs(math.log(c / (2.0 * (rms / unit) ** 0.5))))
    assert squeezed.measured[val_case]["Li"] == expected
    assert squeezed.prior_field()["adaptive"]["width_exponent"] == 0.5
    for bad, match in (({"choices": {"Li": [1.0]}, "width_factor": 0}, "width_factor must be a finite number > 0"),
                       ({"choices": {"Li": [1.0]}, "width_exponent": -1}, "width_exponent must be a finite number > 0"),
                       ({"choices": {"Li": [1.0]}, "width_factor": True}, "width_factor must be a finite"),
                       ({"choices": {"Li": [1.0]}, "widht_factor": 2}, "unknown key")):
        with pytest.raises(ValueError, match=match):
            PriorTable(PriorOptions(adaptive=bad), data.type_names, data.masses)


def test_adaptive_pick_measured_on_a_run_recovers_the_width_it_moved_with():
    """measure_adaptive_scale (what an engine applies to a new material) on random walks whose rms
    displacement over the lag is the MB width of a known choice: it picks that choice."""
    from engine_plugins.methods.propagator.prior import measure_adaptive_scale

    prior = {"kind": "maxwell_boltzmann", "scale": {"Li": 1.0, "Fw": 1.0}, "mass": {"Li": 6.94, "Fw": 100.0},
             "adaptive": {"choices": {"Li": [1.0, 3.0, 10.0]}}}
    rng = np.random.default_rng(0)
    temperature, lag = 800.0, 4
    species = ["Li"] * 16 + ["Fw"] * 16
    for true in (1.0, 3.0, 10.0):
        steps = rng.normal(0.0, mb_width(true, temperature, 6.94) / np.sqrt(lag), (400, 32, 3))
        steps[:, 16:] *= 0.01
        walk = np.cumsum(steps, axis=0)
        assert measure_adaptive_scale(prior, walk, species, temperature, lag) == {"Li": true}
        # a width factor of 3.2 (~ the choices' ratio) moves the pick one choice up, the top one stays
        wider = {**prior, "adaptive": {**prior["adaptive"], "width_factor": 3.2}}
        assert measure_adaptive_scale(wider, walk, species, temperature, lag) == {"Li": {1.0: 3.0, 3.0: 10.0,
                                                                                          10.0: 10.0}[true]}
    # an artifact whose rule carries a bad setting is refused at the pick, by the same check as training
    with pytest.raises(ValueError, match="width_exponent must be a finite number > 0"):
        measure_adaptive_scale({**prior, "adaptive": {**prior["adaptive"], "width_exponent": 0.0}}, walk, species,
                               temperature, lag)
    with pytest.raises(ValueError, match="needs more than lag = 4 frames"):
        measure_adaptive_scale(prior, np.zeros((4, 32, 3)), species, temperature, lag)
    with pytest.raises(ValueError, match="prior is not adaptive"):
        measure_adaptive_scale({k: v for k, v in prior.items() if k != "adaptive"}, np.zeros((9, 32, 3)), species,
                               temperature, lag)


def test_continuous_adaptive_pick_is_the_rule_value_within_the_choices_range():
    """``continuous``: the pick is width_factor x r^width_exponent itself (no rounding to a choice),
    clipped to the choices' range; measured on random walks it recovers the width they moved with;
    training stores it per case, the artifact's default is the median training pick."""
    from engine_plugins.methods.propagator.prior import measure_adaptive_scale
    from engine_plugins.train.propagator import PriorOptions, PriorTable

    temperature, mass = 800.0, 6.94
    unit = mb_width(1.0, temperature, mass)
    # by hand: f x (rms/unit)^a, against the rounded pick
    rms = 7.3 * unit
    assert adaptive_prior_scale(rms, temperature, mass, [1.0, 30.0], 2.0, 0.5, continuous=True) == \
        round(2.0 * 7.3 ** 0.5, 4)
    assert adaptive_prior_scale(rms, temperature, mass, [1.0, 3.0, 10.0, 30.0], continuous=False) == 10.0
    assert adaptive_prior_scale(rms, temperature, mass, [1.0, 3.0, 10.0, 30.0], continuous=True) == 7.3
    # clipped to the choices' range; no measurable motion gives the smallest
    assert adaptive_prior_scale(rms, temperature, mass, [1.0, 5.0], continuous=True) == 5.0
    assert adaptive_prior_scale(rms, temperature, mass, [9.0, 30.0], continuous=True) == 9.0
    assert adaptive_prior_scale(0.0, temperature, mass, [2.0, 30.0], continuous=True) == 2.0
    with pytest.raises(ValueError, match="choice nan must be a finite number > 0"):
        adaptive_prior_scale(rms, temperature, mass, [1.0, float("nan")], continuous=True)

    prior = {"kind": "maxwell_boltzmann", "scale": {"Li": 1.0, "Fw": 1.0}, "mass": {"Li": mass, "Fw": 100.0},
             "adaptive": {"choices": {"Li": [1.0, 30.0]}, "continuous": True}}
    rng = np.random.default_rng(1)
    lag, species = 4, ["Li"] * 64 + ["Fw"] * 8
    for true in (2.2, 4.7, 13.0):
        steps = rng.normal(0.0, mb_width(true, temperature, mass) / np.sqrt(lag), (800, 72, 3))
        pick = measure_adaptive_scale(prior, np.cumsum(steps, axis=0), species, temperature, lag)["Li"]
        assert pick not in (1.0, 30.0) and abs(pick / true - 1) < 0.03
    with pytest.raises(ValueError, match="continuous must be true or false"):
        measure_adaptive_scale({**prior, "adaptive": {**prior["adaptive"], "continuous": "yes"}},
                               np.zeros((9, 72, 3)), species, temperature, lag)

    data = _flow_data()
    table = PriorTable(PriorOptions(scale=3.16, adaptive={"choices": {"Li": [0.1, 100.0]}, "continuous": True}),
                       data.type_names, data.masses)
    table.fit_adaptive(data.train)
    table.fit_adaptive(data.val, held_out=True)
    picks = sorted(p["Li"] for p in table.per_case.values())
    every = picks + [p["Li"] for p in table.measured.values()]
    assert len(set(every)) == len(every) > 1 and not set(every) & {0.1, 100.0}
    # by hand: the training case's own rms over the lag, in MB units, unrounded
    for ds, got in ((data.train, table.per_case), (data.val, table.measured)):
        for k, cid in enumerate(ds.case_ids()):
            traj, lag = ds.trajectories[k], ds.lag
            li = np.array([s == "Li" for s in traj.species])
            rms = float(np.sqrt(np.mean((traj.positions[lag:, li] - traj.positions[:-lag, li]) ** 2)))
            assert got[cid]["Li"] == round(rms / mb_width(1.0, ds.cases[k].temperature, data.masses["Li"]), 4)
    field = table.prior_field()
    assert field["adaptive"]["continuous"] is True and "itself" in field["adaptive"]["rule"]
    assert field["scale"]["Li"] == picks[(len(picks) - 1) // 2] and field["scale"]["Fw"] == 3.16
    rounded = PriorTable(PriorOptions(scale=3.16, adaptive={"choices": {"Li": [0.1, 100.0]}}), data.type_names,
                         data.masses)
    assert rounded.prior_field()["adaptive"]["continuous"] is False
    with pytest.raises(ValueError, match="continuous must be true or false"):
        PriorTable(PriorOptions(adaptive={"choices": {"Li": [1.0]}, "continuous": 1}), data.type_names, data.masses)


def test_training_lowers_the_loss_exports_and_round_trips(tmp_path):
    from engine_plugins.train.propagator import Collated, PriorTable, FlowTrainConfig, make_training_batch, train_flow

    cfg = _config(tmp_path / "run", steps=30, batch_size=2, lr=1e-2, val_every=30)
    cfg["export"] = {"path": "prop.pt", "flow_steps": 4, "solver": "heun", "max_attempts": 5}
    path = train_flow(cfg, data=_flow_data())
    art = load_artifact(path)
    meta = art.metadata
    rf = meta.role_fields
    # metadata contents
    assert meta.role == "propagator" and meta.method == "flow_propagator" and meta.type_names == ["Fw", "Li"]
    assert meta.cutoff == 4.0 and meta.num_message_passing_layers == 2 and meta.dtype == "float64"
    assert meta.units == {"length": "angstrom", "energy": "eV", "time": "ps"} and meta.periodicity == "periodic"
    assert rf["delta_tau"] == pytest.approx(2 * 50 * 0.001)  # lag 2 x dump every 50 steps x 1 fs
    assert rf["temperature_range"] == [800.0, 800.0]
    assert rf["flow_steps"] == 4 and rf["solver"] == "heun" and rf["max_attempts"] == 5
    assert rf["prior"]["kind"] == "maxwell_boltzmann" and rf["prior"]["mass"] == {"Fw": 100.0, "Li": 6.94}
    assert rf["prior"]["scale"] == {"Fw": 3.16, "Li": 3.16} and rf["max_displacement"] > 1.0
    prov = meta.provenance
    assert prov["split"]["train"] == [f"{MATERIAL}_T0800"] and prov["split"]["val"] == [f"{MATERIAL}_T1200"]
    assert math.isfinite(prov["metrics"]["val_loss"]) and prov["steps"] == 30
    assert set(prov["metrics"]["val_jumps"]) == {f"{MATERIAL}_T1200"}
    # the loss on a fixed batch: the trained (EMA) weights beat the initial ones of the same config
    data = _flow_data()
    tcfg = FlowTrainConfig.from_dict(cfg)
    prior = PriorTable(tcfg.prior, data.type_names, data.masses)
    init = build_flow_model(FlowModelConfig.from_dict(prov["flow_model_config"]))
    c = Collated([data.train[i] for i in range(0, len(data.train), 3)])
    b = make_training_batch(c, "propagator", prior, 0.25, torch.Generator().manual_seed(9), range(c.n_graphs), 4.0)
    args = (b["x_t"], b["x_cond"], b["types"], b["edge_index"], b["edge_shift"], b["t"], b["temperature"], 0)
    out_scale = init.out_scale
    l0 = float(flow_matching_loss(init(*args).detach(), b["target"], b["types"], out_scale)[0])
    l1 = float(flow_matching_loss(art.module(*args), b["target"], b["types"], out_scale)[0])
    assert l1 < 0.8 * l0, (l0, l1)
    # TorchScript round trip: the loaded artifact equals the eager model with the exported weights
    missing, _ = init.load_state_dict(art.module.state_dict(), strict=False)  # scripting adds constants
    assert not missing
    assert torch.allclose(init(*args), art.module(*args), atol=1e-12)
    assert read_metadata(path).content_hash == meta.content_hash


def test_exact_resume_after_a_kill(tmp_path):
    from engine_plugins.train.propagator import train_flow

    data = _flow_data()
    straight = _config(tmp_path / "straight", role="corrector", steps=5)
    train_flow(straight, data=data)

    killed = _config(tmp_path / "killed", role="corrector", steps=5)

    def die(step, stats):  # a hard kill after step 3: no exit checkpoint, the last one is step 2
        if step == 3:
            raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        train_flow(killed, callback=die, data=data)
    assert _state(tmp_path / "killed/checkpoints/last.pt")["step"] == 2
    train_flow(killed, data=data)  # resumes from step 2
    a, b = _state(tmp_path / "straight/checkpoints/last.pt"), _state(tmp_path / "killed/checkpoints/last.pt")
    assert a["step"] == b["step"] == 5
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for k in a["ema"]:
        assert torch.equal(a["ema"][k], b["ema"][k]), k
    # a changed config refuses to resume into the same directory
    changed = _config(tmp_path / "killed", role="corrector", steps=5, lr=1e-4)
    with pytest.raises(ValueError, match="train.lr"):
        train_flow(changed, data=data)


def test_export_flow_steps_do_not_change_training(tmp_path):
    """The shipped transport model was re-exported with fewer flow steps from its finished run: that is only the
    same model if flow_steps enters the export and the validation jump figures, never the weights (validation runs
    mid-training here, sampling jumps with the configured steps)."""
    from engine_plugins.train.propagator import train_flow

    data = _flow_data()
    states = []
    for k in (2, 7):
        cfg = _config(tmp_path / f"fs{k}", steps=4, val_every=2)
        cfg["export"] = {"path": None, "flow_steps": k}
        train_flow(cfg, data=data)
        states.append(_state(tmp_path / f"fs{k}/checkpoints/last.pt"))
    a, b = states
    assert a["step"] == b["step"] == 4
    for part in ("model", "ema"):
        for name in a[part]:
            assert torch.equal(a[part][name], b[part][name]), (part, name)
    jumps = [s["history"][-1]["val"]["jumps"] for s in states]  # the validation jumps did use the steps
    assert jumps[0] != jumps[1]


def test_init_from_artifact_or_checkpoint_fine_tunes_and_refuses_another_architecture(tmp_path):
    """train.init_from: an exported artifact (the shipped float64 TorchScript propagator) or a
    checkpoint seeds a new run (cast to the training dtype); mismatches fail clearly."""
    from engine_plugins.train.propagator import train_flow

    shipped = Path(__file__).resolve().parents[1] / "exported_models" / "propagator_transport.pt"
    data = _flow_data()
    tuned = _config(tmp_path / "tuned", steps=0, val_jump_frames=0, init_from=str(shipped))
    tuned["model"] = {"model_dtype": "float32"}  # the architecture comes from the artifact
    train_flow(tuned, data=data)
    st = _state(tmp_path / "tuned/checkpoints/last.pt")
    art = load_artifact(shipped)
    assert st["init_from"]["kind"] == "artifact" and st["init_from"]["content_hash"] == art.metadata.content_hash
    assert st["model_config"]["num_features"] == art.metadata.provenance["flow_model_config"]["num_features"]
    src = art.module.state_dict()
    assert st["model_config"]["model_dtype"] == "float32"
    assert st["model"]["backbone.type_embed.embed_module.weight"].dtype == torch.float32
    for k, v in st["model"].items():
        assert torch.allclose(v.double(), src[k].double(), rtol=1e-6, atol=1e-7), k
    # a checkpoint: its EMA weights are the start
    ck = _config(tmp_path / "ck", steps=0, val_jump_frames=0, init_from=str(tmp_path / "tuned/checkpoints/last.pt"))
    ck["model"] = {"model_dtype": "float32"}
    train_flow(ck, data=data)
    sb = _state(tmp_path / "ck/checkpoints/last.pt")
    assert sb["init_from"] == {"kind": "checkpoint", "path": str(tmp_path / "tuned/checkpoints/last.pt"), "steps": 0}
    for k, v in st["ema"].items():
        assert torch.equal(sb["model"][k], v), k
    # another architecture or role: a clear error, no silent partial load
    wider = _config(tmp_path / "wider", steps=0, init_from=str(shipped))  # num_features 8 != 16
    with pytest.raises(ValueError, match="architecture differs.*num_features"):
        train_flow(wider, data=data)
    with pytest.raises(ValueError, match="'propagator' artifact"):
        train_flow(_config(tmp_path / "corr", role="corrector", steps=0, init_from=str(shipped)), data=data)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_gloo_two_processes_equals_one(tmp_path):
    """torchrun, 2 CPU processes (gloo): each takes half of the global batch, DDP averages the
    gradients, so the weights equal a 1-process run on the whole batch (frames of equal size)."""
    from engine_plugins.train.propagator import train_flow

    cfg = _config(tmp_path / "ddp", steps=3, batch_size=2)
    cfg["train"]["checkpoint_every"] = 100
    (tmp_path / "ddp.json").write_text(json.dumps(cfg))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
           "-m", "engine_plugins.train.propagator", str(tmp_path / "ddp.json"), "--no-progress"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    single = _config(tmp_path / "single", steps=3, batch_size=2)
    single["train"]["checkpoint_every"] = 100
    train_flow(single, data=_flow_data())
    a, b = _state(tmp_path / "ddp/checkpoints/last.pt"), _state(tmp_path / "single/checkpoints/last.pt")
    assert a["step"] == b["step"] == 3
    moved = 0.0
    init = build_flow_model(FlowModelConfig.from_dict(a["model_config"])).state_dict()
    for k in a["model"]:
        assert torch.allclose(a["model"][k], b["model"][k], atol=1e-10, rtol=0), k
        if a["model"][k].numel():
            moved = max(moved, float((a["model"][k] - init[k]).abs().max()))
    assert moved > 1e-4  # the weights did train


def test_cli_registration_and_role_mismatch(tmp_path, capsys):
    from engine_plugins.cli import TRAINERS, main
    from engine_plugins.plugins import get_plugin_manager

    assert TRAINERS["propagator"] == "engine_plugins.train.propagator"
    assert TRAINERS["corrector"] == "engine_plugins.train.corrector"
    pm = get_plugin_manager()
    assert pm.get_method("flow_propagator").role == "propagator"
    assert pm.get_method("flow_corrector").role == "corrector"
    cfg = tmp_path / "p.json"
    cfg.write_text(json.dumps(_config(tmp_path / "x")))
    with pytest.raises(SystemExit, match="train propagator"):
        main(["train", "corrector", str(cfg)])
    bad = _config(tmp_path / "x")
    bad["export"] = {"solver": "rk4"}
    cfg.write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="export.solver"):
        main(["train", "propagator", str(cfg)])


def test_shipped_two_pass_transport_corrector_is_the_one_pass_weights():
    """exported_models/corrector_transport_2pass.pt is ``engine-plugins corrector-passes
    corrector_transport.pt 2``: the same weights and settings, and role_fields.passes 2 (its card's
    rollout figures are those of the one-pass corrector run twice per jump)."""
    models = Path(__file__).resolve().parents[1] / "exported_models"
    one, two = load_artifact(models / "corrector_transport.pt"), load_artifact(models / "corrector_transport_2pass.pt")
    assert two.metadata.role == one.metadata.role == "corrector"
    assert two.metadata.role_fields["passes"] == 2 and one.metadata.role_fields.get("passes", 1) == 1
    assert {k: v for k, v in two.metadata.role_fields.items() if k != "passes"} == \
        {k: v for k, v in one.metadata.role_fields.items() if k != "passes"}
    a, b = one.module.state_dict(), two.module.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------ noise-conditioned corrector
def test_noise_conditioned_field_reads_its_buffer_or_the_given_levels():
    """The noise level is a real input (it changes the field), the buffer stands in for it when the
    engines call with eight arguments, and models without the option keep their state dict."""
    x, x_t, types, temp = _cluster()
    plain = _small_model()
    cond = _small_model(noise_conditioning=True)
    assert set(cond.state_dict()) - set(plain.state_dict()) == {
        k for k in cond.state_dict() if k.startswith("backbone.noise_conditioning.")} != set()
    assert "noise_level" not in cond.state_dict() and not plain.noise_conditioned
    cond.noise_level.copy_(torch.tensor([0.05, 0.2], dtype=torch.float64))
    v_buffer = _call(cond, x_t, x, types, temp)
    ei, es = neighbor_graph(x, 3.0)
    told = torch.where(types == 0, 0.05, 0.2).to(torch.float64)
    v_told = cond(x_t, x, types, ei, es, torch.tensor(0.37, dtype=x.dtype), temp, x.shape[0], told)
    assert torch.allclose(v_buffer, v_told, atol=1e-14)
    v_other = cond(x_t, x, types, ei, es, torch.tensor(0.37, dtype=x.dtype), temp, x.shape[0], told * 0 + 0.1)
    assert float((v_other - v_buffer).detach().abs().max()) > 1e-6
    # still rotation-equivariant with the level as a scalar input
    q, _ = torch.linalg.qr(torch.randn(3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2)))
    v_rot = _call(cond, x_t @ q.T, x @ q.T, types, temp)
    assert torch.allclose(v_rot, v_buffer @ q.T, atol=1e-10)


def test_corrector_noise_per_type_draws_one_level_per_frame_and_type():
    g = torch.Generator().manual_seed(4)
    x = torch.zeros(10, 3, dtype=torch.float64)
    batch = torch.tensor([0] * 4 + [1] * 6)
    types = torch.tensor([0, 1, 0, 1, 0, 0, 1, 1, 1, 0])
    noisy, s = corrector_noise(x, batch, 2, 0.25, g, types, 2)
    assert s.shape == (10,) and bool((s >= 0).all() and (s <= 0.25).all())
    for gi in (0, 1):
        for ti in (0, 1):
            sel = (batch == gi) & (types == ti)
            assert torch.unique(s[sel]).numel() == 1
    assert torch.unique(s).numel() == 4  # independent draws per (frame, type)


def test_noise_conditioned_config_errors(tmp_path):
    from engine_plugins.train.propagator import FlowTrainConfig

    cfg = _config(tmp_path, role="corrector")
    cfg["model"]["noise_conditioning"] = True
    with pytest.raises(ValueError, match="corrector.noise_level"):
        FlowTrainConfig.from_dict(cfg)
    cfg["corrector"] = {"noise_max": 0.2, "noise_level": {"Fw": 0.1, "Li": 0.3}}
    with pytest.raises(ValueError, match="0..noise_max"):
        FlowTrainConfig.from_dict(cfg)
    # a table without one of the data's types stops before training (nothing written)
    from engine_plugins.train.propagator import train_flow

    cfg["corrector"] = {"noise_max": 0.25, "noise_level": {"Fw": 0.1}}
    with pytest.raises(ValueError, match=r"missing \['Li'\]"):
        train_flow(cfg, data=_flow_data())
    assert not (tmp_path / "checkpoints").exists()
    prop = _config(tmp_path)
    prop["model"]["noise_conditioning"] = True
    with pytest.raises(ValueError, match="for a corrector"):
        FlowTrainConfig.from_dict(prop)
    plain = _config(tmp_path, role="corrector")
    plain["corrector"] = {"noise_level": 0.1}
    with pytest.raises(ValueError, match="without model.noise_conditioning"):
        FlowTrainConfig.from_dict(plain)


def test_noise_conditioned_corrector_exports_its_level_and_corrector_noise_rewrites_it(tmp_path, capsys):
    """Training, export (buffer = role_fields.noise_level), `engine-plugins corrector-noise`, the
    sampler's check, and a jump whose correction grows with the level the corrector is told."""
    from engine_plugins.cli import main
    from engine_plugins.methods.propagator.sampler import SamplerError, build_flow_sampler
    from engine_plugins.train.propagator import train_flow

    cfg = _config(tmp_path / "run", role="corrector", steps=20, val_every=20)
    cfg["model"]["noise_conditioning"] = True
    cfg["corrector"] = {"noise_max": 0.25, "noise_level": {"Fw": 0.05, "Li": 0.2}}
    cfg["export"] = {"path": "corr.pt", "flow_steps": 3}
    path = train_flow(cfg, data=_flow_data())
    art = load_artifact(path)
    rf = art.metadata.role_fields
    assert rf["noise_level"] == {"Fw": 0.05, "Li": 0.2} and "per frame and type" in rf["trained_on"]
    assert art.module.noise_level.tolist() == [0.05, 0.2]
    from engine_plugins.train.propagator import write_model_card

    card = write_model_card(path, tmp_path / "card.md").read_text()
    assert '`noise_level`: {"Fw": 0.05, "Li": 0.2} A' in card
    assert math.isfinite(art.metadata.provenance["metrics"]["val_loss"])
    out = tmp_path / "corr_0.pt"
    assert main(["corrector-noise", str(path), "0", "--output", str(out)]) == 0
    low = load_artifact(out)
    assert low.metadata.role_fields["noise_level"] == {"Fw": 0.0, "Li": 0.0} and low.module.noise_level.tolist() == [0, 0]
    assert main(["corrector-noise", str(path), "Fw=0.3", "Li=0.1", "--output", str(tmp_path / "x.pt")]) == 2
    assert "must lie in 0..noise_max (0.25 A)" in capsys.readouterr().err
    assert main(["corrector-noise", str(path), "Fw=0.1", "--output", str(tmp_path / "x.pt")]) == 2
    assert "missing ['Li']" in capsys.readouterr().err
    assert main(["corrector-noise", str(path), "Fw=0.1", "Li", "--output", str(tmp_path / "x.pt")]) == 2
    assert "corrector-noise level 'Li': expected TYPE=LEVEL" in capsys.readouterr().err
    # the sampler refuses a module whose buffer is not its metadata's level
    art.module.noise_level.fill_(0.1)
    with pytest.raises(SamplerError, match="corrector-noise"):
        build_flow_sampler(art, "corrector")
    # both artifacts run as correctors; the one told "no noise" moves a frame by a different amount
    data = _flow_data()
    s = data.train[0]
    moves = []
    for a in (load_artifact(path), low):
        corr = build_flow_sampler(a, "corrector")
        d = corr(s["X_tau"], s["types"], s["box"], torch.tensor(800.0, dtype=torch.float64), 5, 1)
        assert bool(torch.isfinite(d).all())
        moves.append(float(d.square().sum(-1).mean().sqrt()))
    assert abs(moves[0] - moves[1]) > 1e-6


def test_checkpoint_written_before_an_option_existed_still_resumes(tmp_path):
    """A checkpoint's config without a newer option (here corrector.noise_level) is the same run
    when the option is at its default; a changed section is still refused."""
    from engine_plugins.train.propagator import FlowTrainConfig, _same_run

    cfg = FlowTrainConfig.from_dict(_config(tmp_path, role="corrector"))
    old = cfg.to_dict()
    del old["corrector"]["noise_level"]
    _same_run({"config": old}, cfg)
    old["corrector"]["noise_max"] = 0.5
    with pytest.raises(ValueError, match="different 'corrector' section"):
        _same_run({"config": old}, cfg)
