"""The standalone flow sampler (FlowJump / propagate) against hand-written references of the contract."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine_plugins.export import ArtifactMetadata, export_artifact
from engine_plugins.methods.propagator.analytic import PairRelaxPropagator
from engine_plugins.methods.propagator.prior import maxwell_boltzmann_sigma
from engine_plugins.methods.propagator.sampler import (CORRECTOR_ATTEMPT_OFFSET, PASS_ATTEMPT_STRIDE, JumpFailedError,
                                                       SamplerError, build_flow_jump, build_flow_sampler, propagate)
from engine_plugins.nn.counter_noise import counter_normal
from engine_plugins.nn.graph import neighbor_graph

NAMES = ["Li", "Ar"]
SCALE = {"Li": 1.0, "Ar": 0.5}
MASS = {"Li": 6.94, "Ar": 39.948}
BOX = 12.0


def export_field(path, module: torch.nn.Module, role: str = "propagator", solver: str = "euler", flow_steps: int = 4,
                 periodicity: str = "any", max_displacement: float = 3.0, max_attempts: int = 4,
                 scale: dict | None = None, delta_tau: float = 2.0, **extra):
    """A PairRelax-style artifact with every propagator/corrector role field (``extra``: more)."""
    rf = {"temperature_range": [300.0, 900.0], "flow_steps": flow_steps, "solver": solver,
          "prior": {"kind": "maxwell_boltzmann", "scale": scale or SCALE, "mass": MASS},
          "max_displacement": max_displacement, "max_attempts": max_attempts, **extra}
    if role == "propagator":
        rf["delta_tau"] = delta_tau
    meta = ArtifactMetadata(role=role, method="pair_relax_test", type_names=list(NAMES), cutoff=4.0,
                            num_message_passing_layers=2, units={"length": "angstrom", "energy": "eV", "time": "ps"},
                            periodicity=periodicity, role_fields=rf)
    return export_artifact(module, meta, path)


def system(n: int = 24, seed: int = 0, box: float = BOX):
    rng = np.random.default_rng(seed)
    # jittered grid: no overlaps, neighbours within the 4 Å cutoff, some across the boundary
    g = int(np.ceil(n ** (1 / 3)))
    grid = np.array([[i, j, k] for i in range(g) for j in range(g) for k in range(g)], float)[:n]
    pos = (grid + 0.5) * (box / g) + rng.normal(0, 0.3, (n, 3))
    types = np.array([i % 2 for i in range(n)])
    return pos, types


def sigma_z(types, temperature, seed, step, attempt):
    """sigma_i * z_i of the contract, from prior.py and counter_noise.py."""
    t = torch.as_tensor(types)
    s = maxwell_boltzmann_sigma(t, torch.full((len(t),), float(temperature), dtype=torch.float64),
                                torch.tensor([SCALE[n] for n in NAMES], dtype=torch.float64),
                                torch.tensor([MASS[n] for n in NAMES], dtype=torch.float64))
    return (s[:, None] * counter_normal(seed, step, torch.arange(1, len(t) + 1), attempt)).numpy()


def remove_mean(d, types):
    m = np.array([MASS[NAMES[t]] for t in types])[:, None]
    return d - (m * d).sum(0) / m.sum()


def reference_jump(module, pos, types, box, temperature, seed, step, k, solver, attempt=0):
    """A plain hand-written flow loop (Python module, fresh graph) of the contract."""
    x_cond = torch.tensor(pos)
    ei, es = neighbor_graph(x_cond, 4.0, None if box is None else torch.eye(3, dtype=torch.float64) * box)
    tt = torch.tensor(types)
    temp = torch.full((len(pos),), float(temperature), dtype=torch.float64)
    x = x_cond + torch.tensor(sigma_z(types, temperature, seed, step, attempt))
    h = 1.0 / k

    def v(y, t):
        return module(y, x_cond, tt, ei, es, torch.tensor(t, dtype=torch.float64), temp, len(pos))

    for i in range(k):
        if solver == "euler":
            x = x + h * v(x, i * h)
        else:
            xp = x + h * v(x, i * h)
            x = x + 0.5 * h * (v(x, i * h) + v(xp, i * h + h))
    return pos + remove_mean((x - x_cond).numpy(), types)


def run_jump(jump, pos, types, box, temperature, seed, step):
    b = None if box is None else torch.eye(3, dtype=torch.float64) * box
    out = jump(torch.tensor(pos), torch.tensor(types), b, torch.full((len(pos),), float(temperature),
                                                                    dtype=torch.float64), seed, step)
    return out.numpy()


class NaNField(torch.nn.Module):
    """Always NaN on more than two atoms (the role smoke test uses two)."""

    def forward(self, x_t: torch.Tensor, x_cond: torch.Tensor, types: torch.Tensor, edge_index: torch.Tensor,
                edge_shift: torch.Tensor, t: torch.Tensor, temperature: torch.Tensor, n_local: int) -> torch.Tensor:
        if x_t.shape[0] > 2:
            return x_t * float("nan")
        return torch.zeros_like(x_t)


class NaNOnFirstDraw(torch.nn.Module):
    """NaN when the flow starts from one given x_0 (the attempt-0 draw), zero velocity otherwise."""

    def __init__(self, bad_x0: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("bad", bad_x0)

    def forward(self, x_t: torch.Tensor, x_cond: torch.Tensor, types: torch.Tensor, edge_index: torch.Tensor,
                edge_shift: torch.Tensor, t: torch.Tensor, temperature: torch.Tensor, n_local: int) -> torch.Tensor:
        if x_t.shape == self.bad.shape and bool((x_t - self.bad).abs().max() < 1e-9):
            return x_t * float("nan")
        return torch.zeros_like(x_t)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("prop")
    return {"zero": export_field(d / "zero.pt", PairRelaxPropagator(strength=0.0, drift=0.0)),
            "euler": export_field(d / "euler.pt", PairRelaxPropagator(strength=0.05, drift=0.5)),
            "heun": export_field(d / "heun.pt", PairRelaxPropagator(strength=0.05, drift=0.5), solver="heun"),
            "zero_corr": export_field(d / "zc.pt", PairRelaxPropagator(strength=0.0, drift=0.0), role="corrector",
                                      scale={"Li": 0.3, "Ar": 0.2}),
            "nan": export_field(d / "nan.pt", NaNField()),
            "explode": export_field(d / "explode.pt", PairRelaxPropagator(strength=0.0, drift=-1000.0),
                                    max_displacement=2.0, max_attempts=3),
            "dir": d}


def test_zero_field_jump_is_the_prior_noise_minus_its_mass_weighted_mean(models):
    pos, types = system()
    jump = build_flow_jump(models["zero"])
    out = run_jump(jump, pos, types, BOX, 600.0, seed=11, step=5)
    expected = remove_mean(sigma_z(types, 600.0, 11, 5, 0), types)
    assert np.abs((out - pos) - expected).max() < 1e-13  # float64 round-off of (x + d) - x only
    assert np.std(expected) > 0.01  # a real displacement, not zeros
    m = np.array([MASS[NAMES[t]] for t in types])
    assert np.abs((m[:, None] * (out - pos)).sum(0)).max() < 1e-12  # no centre-of-mass drift
    assert jump.total_retries() == 0


@pytest.mark.parametrize("solver", ["euler", "heun"])
def test_solver_equals_a_hand_written_loop(models, solver):
    pos, types = system(seed=1)
    module = PairRelaxPropagator(strength=0.05, drift=0.5)
    for k in (4, 7):
        jump = build_flow_jump(models[solver], flow_steps=k)
        for periodic in (True, False):
            box = BOX if periodic else None
            out = run_jump(jump, pos, types, box, 450.0, seed=3, step=2)
            ref = reference_jump(module, pos, types, box, 450.0, 3, 2, k, solver)
            assert np.abs(out - ref).max() < 1e-12
            assert np.abs(out - pos - remove_mean(sigma_z(types, 450.0, 3, 2, 0), types)).max() > 1e-3  # v matters
    e = run_jump(build_flow_jump(models["euler"]), pos, types, BOX, 450.0, 3, 2)
    h = run_jump(build_flow_jump(models["heun"]), pos, types, BOX, 450.0, 3, 2)
    assert np.abs(e - h).max() > 1e-6
    # the solver override reproduces the other artifact
    assert np.abs(run_jump(build_flow_jump(models["euler"], solver="heun"), pos, types, BOX, 450.0, 3, 2) - h).max() == 0


def test_periodic_equals_open_in_a_large_box_and_is_translation_invariant(models):
    pos, types = system(seed=2)
    jump = build_flow_jump(models["euler"])
    open_ = run_jump(jump, pos + 40.0, types, None, 500.0, 5, 9)
    big = run_jump(jump, pos + 40.0, types, 100.0, 500.0, 5, 9)
    assert np.abs(open_ - big).max() < 1e-12
    # periodic images: moving atoms by whole box vectors changes nothing but those translations
    shift = np.zeros_like(pos)
    shift[::3, 0] = BOX
    shift[1::4, 2] = -2 * BOX
    a = run_jump(jump, pos, types, BOX, 500.0, 5, 9)
    b = run_jump(jump, pos + shift, types, BOX, 500.0, 5, 9)
    assert np.abs((b - shift) - a).max() < 1e-12
    assert np.abs(a - open_ + 40.0).max() > 1e-6  # across-boundary neighbours do matter


def test_determinism_by_seed_and_step(models):
    pos, types = system(seed=3)
    j1, j2 = build_flow_jump(models["euler"]), build_flow_jump(models["euler"])
    a = run_jump(j1, pos, types, BOX, 600.0, 7, 4)
    assert np.array_equal(a, run_jump(j2, pos, types, BOX, 600.0, 7, 4))
    assert np.abs(a - run_jump(j1, pos, types, BOX, 600.0, 8, 4)).max() > 1e-3
    assert np.abs(a - run_jump(j1, pos, types, BOX, 600.0, 7, 5)).max() > 1e-3


def test_nan_everywhere_stops_after_max_attempts(models):
    pos, types = system(seed=4)
    jump = build_flow_jump(models["nan"])
    with pytest.raises(torch.jit.Error, match=r"failed all 4 attempts.*non-finite"):
        run_jump(jump, pos, types, BOX, 600.0, 1, 0)
    assert jump.total_retries() == 4
    # the rollout turns it into a Python exception with just the message
    with pytest.raises(JumpFailedError, match=r"^engine_plugins: learned propagator jump at step 3 .*failed all 4"):
        propagate(models["nan"], pos, [NAMES[t] for t in types], np.eye(3) * BOX, 600.0, 2, start_step=2,
                  progress=False)


def test_explosion_beyond_max_displacement_stops_the_run(models):
    pos, types = system(seed=4)
    jump = build_flow_jump(models["explode"])
    with pytest.raises(torch.jit.Error, match=r"failed all 3 attempts.*above max_displacement 2"):
        run_jump(jump, pos, types, BOX, 600.0, 1, 0)


def test_nan_on_the_first_draw_is_redrawn_once(models):
    pos, types = system(seed=5)
    bad = torch.tensor(pos) + torch.tensor(sigma_z(types, 600.0, 2, 3, 0))
    path = export_field(models["dir"] / "nan_once.pt", NaNOnFirstDraw(bad))
    jump = build_flow_jump(path)
    out = run_jump(jump, pos, types, BOX, 600.0, 2, 3)
    assert jump.total_retries() == 1
    # the accepted jump is the attempt-1 draw
    assert np.abs(out - pos - remove_mean(sigma_z(types, 600.0, 2, 3, 1), types)).max() < 1e-13
    run_jump(jump, pos, types, BOX, 600.0, 2, 4)  # another step: no NaN, no retry
    assert jump.total_retries() == 1


def test_corrector_uses_its_own_noise_stream(models):
    pos, types = system(seed=6)
    jump = build_flow_jump(models["euler"], corrector=models["zero_corr"])
    out = run_jump(jump, pos, types, BOX, 600.0, 4, 1)
    jumped = run_jump(build_flow_jump(models["euler"]), pos, types, BOX, 600.0, 4, 1)
    scale_c = {"Li": 0.3, "Ar": 0.2}
    s = np.array([scale_c[NAMES[t]] / SCALE[NAMES[t]] for t in types])[:, None]
    corr = remove_mean(s * sigma_z(types, 600.0, 4, 1, CORRECTOR_ATTEMPT_OFFSET), types)
    assert np.abs(out - jumped - corr).max() < 1e-12


def test_corrector_passes_draw_their_own_noise_streams(models, tmp_path):
    """``corrector_passes=3`` (or ``role_fields.passes``): with v = 0 each pass adds its own prior
    noise, pass p drawn with attempt 2**20 + p * 2**16 (contract), mean removed per pass."""
    pos, types = system(seed=6)
    jumped = run_jump(build_flow_jump(models["euler"]), pos, types, BOX, 600.0, 4, 1)
    scale_c = {"Li": 0.3, "Ar": 0.2}
    s = np.array([scale_c[NAMES[t]] / SCALE[NAMES[t]] for t in types])[:, None]
    expected = jumped + sum(remove_mean(s * sigma_z(types, 600.0, 4, 1, CORRECTOR_ATTEMPT_OFFSET + p * PASS_ATTEMPT_STRIDE),
                                        types) for p in range(3))
    out = run_jump(build_flow_jump(models["euler"], corrector=models["zero_corr"], corrector_passes=3),
                   pos, types, BOX, 600.0, 4, 1)
    assert np.abs(out - expected).max() < 1e-12
    meta3 = export_field(tmp_path / "zc3.pt", PairRelaxPropagator(strength=0.0, drift=0.0), role="corrector",
                         scale=scale_c, passes=3)
    from_meta = run_jump(build_flow_jump(models["euler"], corrector=meta3), pos, types, BOX, 600.0, 4, 1)
    assert np.abs(from_meta - out).max() == 0.0


def test_a_second_pass_corrects_the_corrected_frame(models, tmp_path):
    """With a real field, pass 2 is the corrector loop again on pass 1's output (its graph and x_cond),
    as two single-pass corrector calls composed by hand."""
    corr = export_field(tmp_path / "corr.pt", PairRelaxPropagator(strength=0.3, drift=0.2), role="corrector")
    pos, types = system(seed=4)
    box = torch.eye(3, dtype=torch.float64) * BOX
    temp = torch.full((len(pos),), 600.0, dtype=torch.float64)
    t = torch.tensor(types)
    jumped = torch.tensor(run_jump(build_flow_jump(models["euler"]), pos, types, BOX, 600.0, 5, 2))
    one = build_flow_sampler(corr, "corrector")
    x1 = jumped + one(jumped, t, box, temp, 5, 2)
    one.attempt_offset = CORRECTOR_ATTEMPT_OFFSET + PASS_ATTEMPT_STRIDE
    x2 = x1 + one(x1, t, box, temp, 5, 2)
    two = run_jump(build_flow_jump(models["euler"], corr, corrector_passes=2), pos, types, BOX, 600.0, 5, 2)
    assert np.abs(two - x2.numpy()).max() < 1e-12
    assert np.abs(two - x1.numpy()).max() > 1e-3


def test_bad_corrector_passes(models, tmp_path):
    for bad in (0, 17):
        with pytest.raises(SamplerError, match=r"passes must lie in 1\.\.16"):
            build_flow_jump(models["euler"], models["zero_corr"], corrector_passes=bad)
    with pytest.raises(SamplerError, match="without a corrector"):
        build_flow_jump(models["euler"], corrector_passes=2)
    prop2 = export_field(tmp_path / "p2.pt", PairRelaxPropagator(strength=0.0, drift=0.0), passes=2)
    with pytest.raises(SamplerError, match="only a corrector runs several passes"):
        build_flow_jump(prop2)


def test_corrector_passes_command_writes_them_into_the_artifact(models, tmp_path, capsys):
    from engine_plugins.cli import main
    from engine_plugins.export.artifact import read_metadata

    out = tmp_path / "zc4.pt"
    assert main(["corrector-passes", str(models["zero_corr"]), "4", "--output", str(out)]) == 0
    assert read_metadata(out).role_fields["passes"] == 4
    pos, types = system(seed=2)
    a = run_jump(build_flow_jump(models["euler"], out), pos, types, BOX, 600.0, 1, 3)
    b = run_jump(build_flow_jump(models["euler"], models["zero_corr"], corrector_passes=4), pos, types, BOX, 600.0, 1, 3)
    assert np.abs(a - b).max() == 0.0
    capsys.readouterr()
    assert main(["corrector-passes", str(models["zero_corr"]), "20", "--output", str(tmp_path / "x.pt")]) == 2
    assert "1..16" in capsys.readouterr().err
    assert main(["corrector-passes", str(models["euler"]), "2", "--output", str(tmp_path / "y.pt")]) == 2
    assert "role 'propagator'" in capsys.readouterr().err and not (tmp_path / "y.pt").exists()


def test_propagate_rollout_trajectory_and_continuation(models, tmp_path):
    import MDAnalysis as mda

    pos, types = system(seed=7)
    names = [NAMES[t] for t in types]
    r = propagate(models["euler"], pos, names, box=np.eye(3) * BOX, temperature=600.0, n_jumps=4, seed=9,
                  trajectory=tmp_path / "roll.dcd", progress=False)
    assert r.positions.shape == (5, len(pos), 3) and r.retries == 0
    assert np.allclose(r.time_ps, 2.0 * np.arange(5))
    jump = build_flow_jump(models["euler"])
    x = pos
    for k in range(4):
        x = run_jump(jump, x, types, BOX, 600.0, 9, k + 1)  # the jump reaching step n draws with step n
    assert np.abs(r.positions[-1] - x).max() < 1e-12
    # continuing from frame 2 with start_step=2 reproduces frames 3..4
    r2 = propagate(models["euler"], r.positions[2], names, box=np.eye(3) * BOX, temperature=600.0, n_jumps=2,
                   seed=9, start_step=2, progress=False)
    assert np.abs(r2.positions[1:] - r.positions[3:]).max() < 1e-12
    u = mda.Universe(str(tmp_path / "roll.pdb"), str(tmp_path / "roll.dcd"))
    assert len(u.trajectory) == 5 and list(u.atoms.names[:2]) == ["Li", "Ar"]
    u.trajectory[4]
    assert np.abs(u.atoms.positions - r.positions[4]).max() < 1e-4  # DCD stores float32
    assert np.allclose(u.dimensions[:3], BOX)
    # any other MDAnalysis format by suffix
    propagate(models["euler"], pos, names, box=np.eye(3) * BOX, temperature=600.0, n_jumps=1, seed=9,
              trajectory=tmp_path / "roll.xyz", progress=False)
    assert len(mda.Universe(str(tmp_path / "roll.xyz")).trajectory) == 2


def test_propagate_overrides_the_correctors_flow_steps(models, tmp_path):
    """``corrector_flow_steps`` reaches the corrector (as ``evaluate --corrector-flow-steps`` uses it):
    the rollout equals a jump loop built with that override and differs from the corrector's own 4 steps."""
    corr = export_field(tmp_path / "corr.pt", PairRelaxPropagator(strength=0.3, drift=0.2), role="corrector",
                        flow_steps=4)
    pos, types = system(seed=3)
    names = [NAMES[t] for t in types]
    kw = dict(box=np.eye(3) * BOX, temperature=600.0, n_jumps=2, seed=5, corrector=corr, progress=False)
    one = propagate(models["euler"], pos, names, corrector_flow_steps=1, **kw)
    own = propagate(models["euler"], pos, names, **kw)
    jump = build_flow_jump(models["euler"], corr, corrector_flow_steps=1)
    x = pos
    for k in range(2):
        x = run_jump(jump, x, types, BOX, 600.0, 5, k + 1)
    assert np.abs(one.positions[-1] - x).max() < 1e-12
    assert np.abs(own.positions[-1] - one.positions[-1]).max() > 1e-4


def test_bad_inputs(models, tmp_path):
    from engine_plugins.methods.lennard_jones import LennardJones, lennard_jones_metadata

    pos, types = system(seed=8)
    names = [NAMES[t] for t in types]
    lj = export_artifact(LennardJones([0.2], [3.4], 8.5), lennard_jones_metadata(["Li"], 8.5), tmp_path / "lj.pt")
    with pytest.raises(SamplerError, match="role is 'pseudo_force'.*'propagator'"):
        propagate(lj, pos, names, np.eye(3) * BOX, 600.0, 1, progress=False)
    with pytest.raises(SamplerError, match="role is 'propagator'.*'corrector'"):
        build_flow_jump(models["euler"], corrector=models["euler"])
    with pytest.raises(SamplerError, match="type name.*Xe.*not known"):
        propagate(models["euler"], pos, ["Xe"] + names[1:], np.eye(3) * BOX, 600.0, 1, progress=False)
    with pytest.raises(SamplerError, match="types for"):
        propagate(models["euler"], pos, names[:-1], np.eye(3) * BOX, 600.0, 1, progress=False)
    with pytest.warns(UserWarning, match=r"outside the model's training range \[300, 900\]"):
        propagate(models["euler"], pos, names, np.eye(3) * BOX, 1500.0, 1, progress=False)
    per = export_field(tmp_path / "per.pt", PairRelaxPropagator(), periodicity="periodic")
    with pytest.raises(SamplerError, match="periodic systems but no box"):
        propagate(per, pos, names, None, 600.0, 1, progress=False)
    with pytest.raises(SamplerError, match="solver 'rk4'"):
        build_flow_jump(models["euler"], solver="rk4")


# ------------------------------------------------------------------------------ contact redraw
CONTACT = {"min_distance": {"Li-Li": 3.2, "Li-Ar": 3.0, "Ar-Ar": 3.0}, "rounds": 4}
WIDE = {"Li": 6.0, "Ar": 4.0}


def reference_contact_jump(pos, types, seed, step, rounds):
    """Zero field: the jump is the noise. Contract written out with numpy: candidate pairs within the
    4 Å cutoff at x_cond (minimum image), per-atom draw counters, at most ``rounds`` rounds."""
    n = len(pos)
    kt = 8.617333262e-5 * 600.0
    sig = np.array([WIDE[NAMES[t]] * np.sqrt(kt / MASS[NAMES[t]]) for t in types])[:, None]
    bound = {frozenset(("Li",)): 3.2, frozenset(("Li", "Ar")): 3.0, frozenset(("Ar",)): 3.0}
    pairs = []
    for i in range(n):
        for j in range(i + 1, n):
            v = pos[j] - pos[i]
            v = v - BOX * np.round(v / BOX)
            if np.linalg.norm(v) < 4.0:
                pairs.append((i, j, v, bound[frozenset((NAMES[types[i]], NAMES[types[j]]))]))
    attempt = np.zeros(n, dtype=int)
    done = 0
    for r in range(rounds + 1):
        z = np.stack([counter_normal(seed, step, torch.tensor([i + 1]), int(attempt[i]))[0].numpy() for i in range(n)])
        d = remove_mean(sig * z, types)
        close = np.zeros(n, dtype=bool)
        for i, j, v, b in pairs:
            if np.linalg.norm(v + d[j] - d[i]) < b:
                close[i] = close[j] = True
        if not close.any() or r == rounds:
            return pos + d, done, bool(close.any())
        attempt += close
        done += 1


def test_contact_redraw_redraws_the_atoms_in_a_contact_as_the_contract_says(tmp_path):
    """role_fields.contact: only atoms closer than min_distance to a graph neighbour get a new draw
    (their own counter); a hand-written loop of the contract gives the same jump, the redraw removes
    contacts the plain draw had, and contact_rounds 0 (or no contact metadata) is the plain draw."""
    zero = PairRelaxPropagator(4.0, 0.0, 0.0)
    with_contact = export_field(tmp_path / "contact.pt", zero, periodicity="periodic", scale=WIDE, contact=CONTACT,
                                max_displacement=20.0)
    plain = export_field(tmp_path / "plain.pt", zero, periodicity="periodic", scale=WIDE, max_displacement=20.0)
    pos, types = system(27, seed=4)
    box = torch.eye(3, dtype=torch.float64) * BOX
    args = (torch.tensor(types), box, torch.tensor(600.0, dtype=torch.float64))
    rounds_seen, resolved = 0, 0
    for step in (1, 2, 3, 4):
        jump = build_flow_jump(with_contact)
        got = jump(torch.tensor(pos), *args, 7, step).numpy()
        expected, rounds, left = reference_contact_jump(pos, types, 7, step, 4)
        assert np.abs(got - expected).max() <= 1e-12
        assert int(jump.propagator.contact_redraws) == rounds and int(jump.propagator.contact_left) == int(left)
        first, _, had = reference_contact_jump(pos, types, 7, step, 0)
        off = build_flow_jump(with_contact, contact_rounds=0)(torch.tensor(pos), *args, 7, step).numpy()
        assert np.abs(off - first).max() <= 1e-12
        assert np.abs(build_flow_jump(plain)(torch.tensor(pos), *args, 7, step).numpy() - first).max() <= 1e-12
        rounds_seen += rounds
        resolved += int(had and not left)
    assert rounds_seen >= 2 and resolved >= 1   # the test exercises redraws that clear contacts


def test_contact_metadata_errors(tmp_path):
    zero = PairRelaxPropagator(4.0, 0.0, 0.0)
    bad = export_field(tmp_path / "bad.pt", zero, contact={"min_distance": {"Li-Xe": 2.0}, "rounds": 2})
    with pytest.raises(SamplerError, match="pair 'Li-Xe'.*types are Li, Ar"):
        build_flow_jump(bad)
    good = export_field(tmp_path / "good.pt", zero, contact=CONTACT)
    with pytest.raises(SamplerError, match="contact rounds must be >= 0"):
        build_flow_jump(good, contact_rounds=-1)
