"""GPFF (issue 4): pseudo-force targets, loss, noise ladder, samplers on exact analytic models,
constraints, NFE counts, the NequIP model's heads, export round trip and exact training resume."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from ase.build import molecule

from engine_plugins.methods.gpff import (
    NoiseConfig,
    SamplerError,
    gpff_loss,
    make_noisy_batch,
    pseudo_energy,
    pseudo_force_target,
    rmsd,
    sample,
    sample_sigmas,
    script_quadratic,
    sigma_ladder,
)
from engine_plugins.methods.gpff.analytic import QuadraticPseudoForce
from engine_plugins.methods.gpff.noise import centred_noise, loss_weight, truncated_lognormal_moments

F64 = torch.float64
TYPE_NAMES = ["H", "C", "N", "O", "F"]


def _mol(name: str):
    a = molecule(name)
    return a.get_chemical_symbols(), torch.tensor(a.positions, dtype=F64)


def _random_rigid(seed: int):
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=g, dtype=F64))
    if torch.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q, torch.randn(3, generator=g, dtype=F64)


class CountingWrapper(torch.nn.Module):
    """Counts forward calls independently of the sampler's own NFE counter."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.cutoff = inner.cutoff
        self.calls = 0

    def forward(self, pos, types, edge_index, edge_shift, n_local: int):
        self.calls += 1
        return self.inner(pos, types, edge_index, edge_shift, n_local)


# --------------------------------------------------------------------------------------------------
# targets and loss
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("align", [False, True])
def test_target_is_minus_gradient_of_quadratic_pseudo_energy(align):
    _, x0a = _mol("CH3CH2OH")
    _, x0b = _mol("NH3")
    x0 = torch.cat([x0a, x0b])
    batch = torch.tensor([0] * 9 + [1] * 4)
    g = torch.Generator().manual_seed(0)
    x = x0 + 0.4 * torch.randn(x0.shape, generator=g, dtype=F64)
    target = pseudo_force_target(x0, x, batch, 2, align=align)
    # autograd
    xr = x.clone().requires_grad_(True)
    grad, = torch.autograd.grad(pseudo_energy(xr, x0, batch, 2, align=align).sum(), xr)
    assert torch.allclose(target, -grad, atol=1e-10)
    # central finite differences on a few coordinates
    h = 1e-5
    for i, c in [(0, 0), (3, 1), (8, 2), (11, 0)]:
        xp, xm = x.clone(), x.clone()
        xp[i, c] += h
        xm[i, c] -= h
        fd = -(pseudo_energy(xp, x0, batch, 2, align=align).sum()
               - pseudo_energy(xm, x0, batch, 2, align=align).sum()) / (2 * h)
        assert float(fd) == pytest.approx(float(target[i, c]), abs=1e-7)
    if not align:
        assert torch.equal(target, x0 - x)


def test_aligned_target_is_rigid_image_force_and_torque_free():
    _, x0 = _mol("CH3CH2OH")
    rot, shift = _random_rigid(1)
    g = torch.Generator().manual_seed(2)
    x = x0 @ rot.T + shift + 0.5 * torch.randn(x0.shape, generator=g, dtype=F64)
    f = pseudo_force_target(x0, x, align=True)
    assert float(rmsd(x + f, x0)) < 1e-10  # x + F is the clean structure (rigidly moved)
    assert float(f.sum(0).abs().max()) < 1e-10  # no net force
    torque = torch.linalg.cross(x - x.mean(0), f).sum(0)
    assert float(torque.abs().max()) < 1e-9  # no net torque: representable by an invariant energy


def test_loss_weighting_min_inverse_sigma_squared_capped():
    assert torch.allclose(loss_weight(torch.tensor([0.05, 0.1, 0.5, 2.0], dtype=F64)),
                          torch.tensor([100.0, 100.0, 4.0, 0.25], dtype=F64))
    _, x0a = _mol("H2O")
    _, x0b = _mol("CH4")
    x0 = torch.cat([x0a, x0b])
    batch = torch.tensor([0] * 3 + [1] * 5)
    cfg = NoiseConfig(align_target=False)
    nb = make_noisy_batch(x0, batch, 2, cfg, torch.Generator().manual_seed(0),
                          sigma=torch.tensor([0.05, 2.0], dtype=F64))
    pred = nb.target + 0.1  # error 0.1 on every component
    loss, parts = gpff_loss(pred, nb, cfg.weight_cap)
    assert float(parts["force_mse"]) == pytest.approx(0.01)
    assert float(loss) == pytest.approx(0.5 * (100 * 0.01 + 0.25 * 0.01))
    # the auxiliary energy term (direct heads): target |F|^2 / 2 per atom, weight w^2
    e_target = 0.5 * nb.target.square().sum(-1)
    loss_e, parts_e = gpff_loss(nb.target, nb, cfg.weight_cap, pred_atom_energy=e_target + 0.2, energy_weight=0.5)
    assert float(parts_e["energy_loss"]) == pytest.approx(0.5 * (100 ** 2 * 0.04 + 0.25 ** 2 * 0.04))
    assert float(loss_e) == pytest.approx(0.5 * float(parts_e["energy_loss"]))


@pytest.mark.parametrize("distribution", ["lognormal", "loguniform"])
def test_noise_ladder_statistics(distribution):
    cfg = NoiseConfig(sigma_min=0.05, sigma_max=3.0, distribution=distribution)
    s = sample_sigmas(200_000, cfg, torch.Generator().manual_seed(0))
    assert float(s.min()) >= 0.05 - 1e-12 and float(s.max()) <= 3.0 + 1e-12
    mean, std = truncated_lognormal_moments(cfg)
    assert float(s.log().mean()) == pytest.approx(mean, abs=0.01)
    assert float(s.log().std()) == pytest.approx(std, abs=0.01)
    if distribution == "lognormal":  # no point masses at the bounds (truncated, not clipped)
        assert float((s == 0.05).float().mean()) < 1e-4 and float((s == 3.0).float().mean()) < 1e-4
    # same generator state, same draw
    assert torch.equal(sample_sigmas(10, cfg, torch.Generator().manual_seed(5)),
                       sample_sigmas(10, cfg, torch.Generator().manual_seed(5)))


def test_noise_has_zero_centroid_and_unit_variance():
    batch = torch.tensor([0] * 3 + [1] * 12).repeat(4000)
    batch = batch + 2 * torch.arange(4000).repeat_interleave(15)
    eps = centred_noise(batch, 8000, torch.Generator().manual_seed(0))
    cent = torch.zeros(8000, 3, dtype=F64).index_add_(0, batch, eps)
    assert float(cent.abs().max()) < 1e-12
    n = torch.tensor([3, 12]).repeat(4000).to(F64)[batch]
    # E|eps_i|^2 = 3 (1 - 1/N) per atom after removing the centroid
    assert float((eps.square().sum(-1) / (3 * (1 - 1 / n))).mean()) == pytest.approx(1.0, abs=0.01)


# --------------------------------------------------------------------------------------------------
# samplers on the exact quadratic pseudo-force (TorchScript, role signature)
# --------------------------------------------------------------------------------------------------
SAMPLER_NFE = [("ancestral", 6), ("heun", 6), ("heun", 7), ("denoise", 40), ("adaptive", 64)]


@pytest.mark.parametrize("align", [False, True])
@pytest.mark.parametrize("sampler,nfe", SAMPLER_NFE)
def test_samplers_recover_structure_with_exact_nfe(sampler, nfe, align):
    sym, x0 = _mol("CH3CH2OH")
    model = CountingWrapper(script_quadratic(x0, align=align))
    r = sample(model, [TYPE_NAMES.index(s) for s in sym], n_atoms=9, sampler=sampler, nfe=nfe, seed=3,
               n_samples=5, sigma_max=3.0, sigma_min=0.05)
    assert r.positions.shape == (5, 9, 3)
    assert r.nfe == model.calls
    if sampler == "adaptive":
        assert 1 <= r.nfe <= nfe
    else:
        assert r.nfe == nfe
    assert float(rmsd(r.positions, x0).max()) < 1e-6
    if not align:  # no rotational freedom: the exact coordinates up to the centroid (generation is
        # centroid-free: noise and updates have their centroid removed)
        centred = r.positions - r.positions.mean(1, keepdim=True)
        assert float((centred - (x0 - x0.mean(0))).abs().max()) < 1e-6
    # distinct samples start from distinct noise; same seed, same result
    r2 = sample(model, [TYPE_NAMES.index(s) for s in sym], sampler=sampler, nfe=nfe, seed=3, n_samples=5,
                sigma_max=3.0, sigma_min=0.05)
    assert torch.equal(r.positions, r2.positions)


def test_heun_follows_the_exact_probability_flow():
    """For the exact quadratic the ODE solution is x(s) - x0 = (s / s0) (x(s0) - x0): Euler and Heun
    steps are exact, so every intermediate state lies on it."""
    _, x0 = _mol("C6H6")
    model = script_quadratic(x0, align=False)
    for nfe in (5, 8):
        r = sample(model, [0] * 12, sampler="heun", nfe=nfe, seed=1, n_samples=2, sigma_max=3.0,
                   sigma_min=0.05, return_trajectory=True)
        traj, sig = r.trajectory, r.sigmas
        start = traj[0] - x0
        for k in range(1, len(sig)):
            assert torch.allclose(traj[k] - x0, sig[k] / sig[0] * start, atol=1e-12)


def test_ancestral_marginals_follow_the_ladder():
    """With noise injection the residual at each level has the ladder's standard deviation."""
    _, x0 = _mol("C6H6")
    model = script_quadratic(x0, align=False)
    r = sample(model, [0] * 12, sampler="ancestral", nfe=6, seed=0, n_samples=400, sigma_max=3.0,
               sigma_min=0.05, return_trajectory=True)
    n = 12
    for k in range(1, len(r.sigmas) - 1):
        res = r.trajectory[k] - x0
        est = float(res.square().sum((1, 2)).mean() / (3 * (n - 1))) ** 0.5  # centroid-free noise
        assert est == pytest.approx(r.sigmas[k], rel=0.05)


def test_denoise_halves_the_residual_and_renoise_keeps_nfe():
    _, x0 = _mol("CH4")
    model = script_quadratic(x0, align=False)
    r = sample(model, [1, 0, 0, 0, 0], sampler="denoise", nfe=6, seed=0, sigma_max=2.0, return_trajectory=True)
    res = [float((t - x0).abs().max()) for t in r.trajectory]
    for a, b in zip(res, res[1:]):
        assert b == pytest.approx(a / 2, rel=1e-9)
    rn = sample(model, [1, 0, 0, 0, 0], sampler="denoise", nfe=12, seed=0, renoise=0.5, sigma_max=2.0)
    assert rn.nfe == 12 and float(rmsd(rn.positions, x0).max()) < 0.05


def test_adaptive_estimates_sigma_from_the_force_and_respects_the_budget():
    _, x0 = _mol("CH3OH")
    model = CountingWrapper(script_quadratic(x0, align=True))
    g = torch.Generator().manual_seed(0)
    eps = torch.randn(6, 3, generator=g, dtype=F64)
    noisy = x0 + 0.7 * (eps - eps.mean(0))
    r = sample(model, [1, 3, 0, 0, 0, 0], init_positions=noisy, sampler="adaptive", nfe=20)
    # |F|^2 = sigma^2 (3N - 6) for aligned targets (centroid and rotations carry no force)
    f0 = pseudo_force_target(x0, noisy, align=True)
    assert r.info["sigma_start"] == pytest.approx(float((f0.square().sum() / (3 * 6 - 6)).sqrt()), rel=1e-9)
    assert r.info["sigma_start"] == pytest.approx(0.7, rel=0.3)
    assert r.nfe == model.calls <= 20 and float(rmsd(r.positions, x0)) < 1e-8
    for budget in (1, 2, 3):
        model.calls = 0
        rb = sample(model, [1, 3, 0, 0, 0, 0], sampler="adaptive", nfe=budget, sigma_max=3.0)
        assert rb.nfe == model.calls <= budget


@pytest.mark.parametrize("sampler", ["ancestral", "heun", "denoise", "adaptive"])
def test_fixed_scaffold_held_exactly_and_partial_structure_completed(sampler):
    """Heavy atoms given and fixed (a scaffold), hydrogens unknown (NaN, drawn from noise around the
    scaffold): the scaffold stays bit for bit, the hydrogens land on the reference. The reference
    model is the non-aligned quadratic in the scaffold's own frame (an aligned global model would
    superimpose on the noisy hydrogens too, which a local learned model does not do)."""
    sym, x0 = _mol("CH3CH2OH")
    heavy = torch.tensor([s != "H" for s in sym])
    init = torch.full_like(x0, float("nan"))
    init[heavy] = x0[heavy]
    model = script_quadratic(x0, align=False)
    r = sample(model, [TYPE_NAMES.index(s) for s in sym], init_positions=init, fixed_mask=heavy,
               sampler=sampler, nfe=40, seed=1, n_samples=3, sigma_max=3.0, sigma_min=0.05)
    assert torch.equal(r.positions[:, heavy], x0[heavy].expand(3, -1, -1))  # bit for bit
    assert float((r.positions - x0).abs().max()) < 1e-6
    # a fixed atom with an unknown position is an error; free given atoms may be perturbed first
    noisy = sample(model, [TYPE_NAMES.index(s) for s in sym], init_positions=x0, fixed_mask=heavy,
                   sampler=sampler, nfe=40, perturb=0.5, seed=2)
    assert torch.equal(noisy.positions[0, heavy], x0[heavy])
    assert float((noisy.positions[0] - x0).abs().max()) < 1e-6


def test_max_step_caps_each_atoms_displacement():
    _, x0 = _mol("CH4")
    model = script_quadratic(x0, align=False)
    r = sample(model, [1, 0, 0, 0, 0], sampler="denoise", nfe=40, seed=0, sigma_max=3.0, max_step=0.2,
               return_trajectory=True)
    steps = (r.trajectory[1:] - r.trajectory[:-1]).norm(dim=-1)
    assert float(steps.max()) <= 0.2 + 1e-12 and r.info["clipped"] > 0
    assert float(rmsd(r.positions, x0).max()) < 1e-2  # still converges, only slower


def test_sampler_accepts_names_from_an_artifact_like_model_and_rejects_bad_inputs():
    sym, x0 = _mol("H2O")
    model = QuadraticPseudoForce(x0)
    model.type_names = TYPE_NAMES  # what GPFF models carry
    r = sample(model, sym, sampler="heun", nfe=3, sigma_max=2.0)
    assert float(rmsd(r.positions[0], x0)) < 1e-8
    with pytest.raises(SamplerError, match="Cl.*not known"):
        sample(model, ["O", "Cl", "H"])
    with pytest.raises(SamplerError, match="n_atoms"):
        sample(model, sym, n_atoms=4)
    with pytest.raises(SamplerError, match="fixed atom"):
        sample(model, sym, init_positions=torch.full((3, 3), float("nan")), fixed_mask=[True, False, False])
    with pytest.raises(SamplerError, match="every atom is fixed"):
        sample(model, sym, init_positions=x0, fixed_mask=[True] * 3)
    with pytest.raises(SamplerError, match="nfe"):
        sample(model, sym, nfe=0)
    with pytest.raises(SamplerError, match="sampler 'euler'"):
        sample(model, sym, sampler="euler")
    with pytest.raises(SamplerError, match="empty"):
        sample(model, [])
    with pytest.raises(SamplerError, match="shape"):
        sample(model, sym, init_positions=torch.zeros(2, 3))
    with pytest.raises(SamplerError, match="max_step"):
        sample(model, sym, max_step=0.0)


def test_sigma_ladder():
    k = sigma_ladder(6, 3.0, 0.05)
    assert k.shape == (7,) and float(k[0]) == pytest.approx(3.0) and float(k[5]) == pytest.approx(0.05)
    assert float(k[6]) == 0.0 and bool((k[:-1].diff() < 0).all())
    g = sigma_ladder(5, 3.0, 0.05, "geometric")
    assert torch.allclose(g[1:-1] / g[:-2], (g[1] / g[0]).expand(4))


# --------------------------------------------------------------------------------------------------
# the NequIP model, export, registry, training
# --------------------------------------------------------------------------------------------------
SMALL_MODEL = dict(num_layers=2, num_features=8, num_bessels=8, radial_mlp_width=16, radial_mlp_depth=1,
                   readout_mlp_hidden_layers_width=8, avg_num_neighbors=8.0, model_dtype="float64", r_max=6.0)


@pytest.fixture(scope="module")
def ethanol_graph():
    from engine_plugins.nn.graph import neighbor_graph

    sym, x0 = _mol("CH3CH2OH")
    g = torch.Generator().manual_seed(0)
    x = x0 + 0.3 * torch.randn(x0.shape, generator=g, dtype=F64)
    types = torch.tensor([TYPE_NAMES.index(s) for s in sym])
    ei, es = neighbor_graph(x, 6.0)
    return x, types, ei, es


@pytest.mark.parametrize("head", ["conservative", "direct"])
def test_model_heads_equivariant_and_contract(head, ethanol_graph):
    from engine_plugins.methods.gpff.model import build_gpff_model

    x, types, ei, es = ethanol_graph
    model = build_gpff_model(head=head, **SMALL_MODEL).eval()
    e, f = model(x, types, ei, es, 9)
    assert e.shape == (9,) and f.shape == (9, 3) and float(f.abs().max()) > 1e-4
    rot, shift = _random_rigid(7)
    e2, f2 = model(x @ rot.T + shift, types, ei, es, 9)
    assert torch.allclose(f2, f @ rot.T, atol=1e-9) and torch.allclose(e2, e, atol=1e-9)
    if head == "conservative":
        h, i, c = 1e-5, 4, 1
        xp, xm = x.clone(), x.clone()
        xp[i, c] += h
        xm[i, c] -= h
        fd = -(model(xp, types, ei, es, 9)[0].sum() - model(xm, types, ei, es, 9)[0].sum()) / (2 * h)
        assert float(fd) == pytest.approx(float(f[i, c]), abs=1e-7)
    else:  # ghosts (nodes >= n_local) get no direct force
        _, fg = model(x, types, ei, es, 5)
        assert torch.equal(fg[:5], f[:5]) and float(fg[5:].abs().max()) == 0.0


def test_export_round_trip_metadata_and_sampling(tmp_path, ethanol_graph):
    from engine_plugins.export import export_artifact, load_artifact
    from engine_plugins.plugins import get_plugin_manager

    spec = get_plugin_manager().get_method("gpff")
    assert spec.role == "pseudo_force" and spec.loss is not None and spec.sampler is not None
    config = dict(SMALL_MODEL, head="direct", noise={"sigma_max": 2.5}, sampler={"sampler": "denoise", "nfe": 12})
    model = spec.build_model(**config).eval()
    path = export_artifact(spec.script(model), spec.build_metadata(**config), tmp_path / "gpff.pt")
    art = load_artifact(path)
    meta = art.metadata
    assert (meta.role, meta.method, meta.periodicity) == ("pseudo_force", "gpff", "nonperiodic")
    rf = meta.role_fields
    assert rf["conservative"] is False and rf["head"] == "direct"
    assert (rf["sigma_min"], rf["sigma_max"]) == (0.05, 2.5)
    assert rf["default_sampler"] == "denoise" and rf["default_nfe"] == 12
    assert rf["pseudo_energy"]["spring_constant"] == 1.0 and meta.units["energy"] == "eV"
    assert meta.cutoff == 6.0 and meta.num_message_passing_layers == 2 and meta.type_names == TYPE_NAMES
    x, types, ei, es = ethanol_graph
    e, f = model(x, types, ei, es, 9)
    e2, f2 = art.module(x, types, ei, es, 9)
    assert torch.allclose(f, f2, atol=1e-12) and torch.allclose(e, e2, atol=1e-12)
    r = spec.sampler(art, ["C", "C", "O", "H", "H", "H", "H", "H", "H"], seed=0)  # defaults from metadata
    assert r.sampler == "denoise" and r.nfe == 12 and bool(torch.isfinite(r.positions).all())


def test_training_resume_is_exact_and_cli_trains(tmp_path):
    """2k steps straight == k steps, a kill (resume from the periodic checkpoint) and the rest; and
    Ctrl-C saves a checkpoint at the exact step."""
    from engine_plugins.cli import main as cli_main
    from engine_plugins.export.artifact import read_metadata
    from engine_plugins.train.checkpoint import load_checkpoint
    from engine_plugins.train.gpff import train_gpff

    base = {"seed": 0, "data": {"source": "ase", "names": ["CH4", "H2O", "NH3", "CH3OH", "C2H6"], "val_fraction": 0.2},
            "model": {k: v for k, v in SMALL_MODEL.items() if k != "avg_num_neighbors"},
            "train": {"steps": 6, "batch_size": 3, "checkpoint_every": 3, "val_every": 3, "val_repeats": 1,
                      "val_sigmas": [0.1, 1.0], "warmup_steps": 2, "progress": False, "threads": 1}}

    def cfg(out):
        c = json.loads(json.dumps(base))
        c["output_dir"] = str(out)
        return c

    path_a = train_gpff(cfg(tmp_path / "a"))

    def interrupt(step, stats):
        if step == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_gpff(cfg(tmp_path / "b"), callback=interrupt)
    ck = tmp_path / "b" / "checkpoints"
    assert load_checkpoint(ck / "last.pt")["step"] == 5  # saved on exit at the exact step
    shutil.copy(ck / "step_00000003.pt", ck / "last.pt")  # a hard kill leaves only the periodic one
    cfg_file = tmp_path / "b.json"
    cfg_file.write_text(json.dumps(cfg(tmp_path / "b")))
    assert cli_main(["train", "gpff", str(cfg_file), "--no-progress"]) == 0  # resumes from step 3
    a = load_checkpoint(tmp_path / "a" / "checkpoints" / "last.pt")
    b = load_checkpoint(ck / "last.pt")
    assert a["step"] == b["step"] == 6
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for key in a["ema"]:
        assert torch.equal(a["ema"][key], b["ema"][key]), key
    assert a["history"][-1]["val_loss"] == b["history"][-1]["val_loss"]
    meta = read_metadata(path_a)
    assert meta.method == "gpff" and meta.provenance["steps"] == 6
    assert (tmp_path / "b" / "model.pt").is_file()
    assert math.isfinite(a["history"][-1]["val_loss"])


def test_init_from_the_shipped_artifact_starts_from_its_weights(tmp_path):
    """train.init_from takes an exported gpff artifact (fine-tuning the shipped model): with 0 steps
    the exported model gives the shipped model's forces exactly; another role's artifact is refused."""
    from engine_plugins.export.artifact import load_artifact
    from engine_plugins.train.gpff import train_gpff

    shipped = Path(__file__).resolve().parent.parent / "exported_models" / "gpff_qm9like.pt"
    cfg = {"output_dir": str(tmp_path / "ft"), "seed": 0,
           "data": {"source": "ase", "names": ["CH4", "H2O", "NH3", "CH3OH", "C2H6"], "val_fraction": 0.2},
           "train": {"steps": 0, "batch_size": 2, "val_every": 1, "val_repeats": 1, "val_sigmas": [0.1],
                     "progress": False, "threads": 1, "init_from": str(shipped)}}
    tuned = load_artifact(train_gpff(cfg))
    ref = load_artifact(shipped)
    g = torch.Generator().manual_seed(0)
    n = 9
    pos = torch.randn(n, 3, generator=g, dtype=torch.float32) * 1.2
    types = torch.tensor([1, 1, 3, 0, 0, 0, 0, 0, 0])
    i, j = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    keep = i != j
    ei = torch.stack([i[keep], j[keep]])
    es = torch.zeros(ei.shape[1], 3)
    f_ref = ref.module(pos, types, ei, es, n)[1]
    assert float(f_ref.abs().max()) > 1e-2
    assert torch.equal(tuned.module(pos, types, ei, es, n)[1], f_ref)
    assert tuned.metadata.provenance["gpff_model_config"]["num_features"] == \
        ref.metadata.provenance["gpff_model_config"]["num_features"]
    # the run records its starting point's validation (step 0): the shipped model's, on the run's molecules
    from engine_plugins.train.gpff import GPFFTrainConfig, MoleculeBatcher, load_molecules, validate

    hist = json.loads((tmp_path / "ft" / "history.json").read_text())
    assert [h["step"] for h in hist] == [0]
    c = GPFFTrainConfig.from_dict(cfg)
    _, val, _ = load_molecules(c.data)
    direct = validate(ref.module, MoleculeBatcher(val, ref.metadata.type_names, 12.0), c.noise, c.train.val_sigmas,
                      c.train.val_repeats, c.train.val_seed, torch.device("cpu"), torch.float32)
    assert math.isfinite(hist[0]["val_loss"]) and abs(hist[0]["val_loss"] - direct["loss"]) < 1e-6

    cfg["output_dir"] = str(tmp_path / "wrong")
    cfg["train"]["init_from"] = str(shipped.parent / "propagator_transport.pt")
    with pytest.raises(ValueError, match="propagator.*artifact of the same role"):
        train_gpff(cfg)
    # a model section that contradicts the source is refused, not silently overridden
    cfg["output_dir"] = str(tmp_path / "wider")
    cfg["train"]["init_from"] = str(shipped)
    cfg["model"] = {"num_features": 64, "r_max": 12.0}
    with pytest.raises(ValueError, match="architecture differs.*num_features"):
        train_gpff(cfg)


def test_relabelled_target_is_the_nearest_copy_under_relabelling_of_like_atoms():
    """noise.relabel_target: against a brute-force search over every relabelling of ethanol's like atoms
    (6 H, 2 C; 1440 copies, each superimposed by Kabsch), the alternating Hungarian/Kabsch search finds
    the nearest copy in most draws at sigma 0.6 A, is never farther than the fixed labels, and at 1.5 A
    closes most of the gap between them; the reference is a permutation of x0's rows within elements;
    the noisy positions do not depend on the option."""
    import itertools

    from engine_plugins.methods.gpff.noise import aligned_reference, relabelled_reference

    sym, x0 = _mol("CH3CH2OH")
    n = len(sym)
    types = torch.tensor([TYPE_NAMES.index(s) for s in sym])
    h = [i for i, s in enumerate(sym) if s == "H"]
    c = [i for i, s in enumerate(sym) if s == "C"]
    perms = []
    for ph in itertools.permutations(h):
        for pc in itertools.permutations(c):
            p = list(range(n))
            for a, b in zip(h + c, ph + pc):
                p[a] = b
            perms.append(p)
    P = torch.tensor(perms)
    batch = torch.zeros(n, dtype=torch.long)

    def rms(x, ref):
        return math.sqrt(float((x - aligned_reference(ref, x, batch, 1)).square().sum()) / n)

    def brute(x):
        bb = torch.arange(len(P)).repeat_interleave(n)
        al = aligned_reference(x0[P].reshape(-1, 3), x.repeat(len(P), 1), bb, len(P)).reshape(len(P), n, 3)
        return math.sqrt(float((x - al).square().sum((1, 2)).min()) / n)

    for sigma, min_exact in ((0.6, 8), (1.5, 0)):
        exact, gap_closed = 0, []
        for seed in range(12):
            x = x0 + sigma * torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed), dtype=F64)
            ref = relabelled_reference(x0, x, types, batch, 1)
            got, best, fixed = rms(x, ref), brute(x), rms(x, x0)
            assert best - 1e-9 <= got <= fixed + 1e-9
            exact += got < best + 1e-9
            if fixed > best + 1e-6:
                gap_closed.append((fixed - got) / (fixed - best))
            for t in set(types.tolist()):  # a permutation of x0's rows within each element
                m = types == t
                assert sorted(map(tuple, ref[m].tolist())) == sorted(map(tuple, x0[m].tolist()))
        assert exact >= min_exact, (sigma, exact)
        assert sum(gap_closed) / len(gap_closed) > 0.5, (sigma, gap_closed)
    cfg = NoiseConfig(sigma_min=0.1, sigma_max=1.5, relabel_target=True)
    one = torch.tensor([1.5], dtype=F64)
    nb = make_noisy_batch(x0, batch, 1, cfg, torch.Generator().manual_seed(0), sigma=one, types=types)
    plain = make_noisy_batch(x0, batch, 1, NoiseConfig(sigma_min=0.1, sigma_max=1.5),
                             torch.Generator().manual_seed(0), sigma=one)
    assert torch.equal(nb.x, plain.x) and float(nb.target.square().sum()) < float(plain.target.square().sum())
    with pytest.raises(ValueError, match="needs the atom types"):
        make_noisy_batch(x0, batch, 1, cfg, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="needs align_target"):  # refused when the config is read
        NoiseConfig(relabel_target=True, align_target=False)
