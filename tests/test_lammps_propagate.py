"""LAMMPS fix ep/propagate: the prior noise equals Python's counter_normal, one jump equals a plain
Python loop of the contract (and the standalone sampler), 1 rank = 2 ranks over several jumps with
atoms crossing periodic and sub-domain boundaries, bounded redraws with a clear error, retry counts
in thermo, no centre-of-mass drift, and a clear error or warning for every bad input.

Test models: the closed-form two-layer field PairRelaxPropagator (analytic.py), exported as
propagator/corrector artifacts in metal units. 1-rank runs use the lammps module in this process;
2-rank runs ``mpiexec -n 2 lmp``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from engine_plugins.data.systems import fcc_lattice
from engine_plugins.engines import lammps_backend as lb
from engine_plugins.engines.lammps_propagate import propagate_commands, run_lammps_propagate
from engine_plugins.export import ArtifactMetadata, export_artifact
from engine_plugins.methods.propagator.analytic import PairRelaxPropagator
from engine_plugins.methods.propagator.prior import KB_EV_PER_K
from engine_plugins.nn.counter_noise import counter_normal
from engine_plugins.nn.graph import neighbor_graph

pytestmark = pytest.mark.usefixtures("lammps_plugin")

REPO = Path(__file__).resolve().parents[1]
NAMES = ["Li", "Ar"]
MASSES = [6.94, 39.948]   # amu, in LAMMPS and in the prior
CUTOFF = 4.0              # Å
TEMP = 600.0              # K
SEED = 20261122
DELTA_TAU = 0.5           # ps


def flow_artifact(path: Path, module: torch.nn.Module, role: str = "propagator", scale=(1.0, 1.0),
                  flow_steps: int = 4, solver: str = "euler", check_role: bool = True, **extra) -> Path:
    """Export a vector field as a metal-unit propagator/corrector artifact with a 2-layer halo."""
    rf = {"temperature_range": [300.0, 900.0], "flow_steps": flow_steps, "solver": solver,
          "prior": {"kind": "maxwell_boltzmann", "scale": dict(zip(NAMES, scale)), "mass": dict(zip(NAMES, MASSES))},
          "max_displacement": 6.0, "max_attempts": 5, **extra}
    if role == "propagator":
        rf["delta_tau"] = DELTA_TAU
    meta = ArtifactMetadata(role=role, method="pair_relax_test", type_names=list(NAMES), cutoff=CUTOFF,
                            num_message_passing_layers=2, units={"length": "angstrom", "energy": "eV", "time": "ps"},
                            periodicity="periodic", role_fields=rf)
    return export_artifact(module, meta, path, check_role=check_role)


class NaNField(torch.nn.Module):
    """A broken vector field: NaN on any system larger than the two-atom export smoke test."""

    def forward(self, x_t: torch.Tensor, x_cond: torch.Tensor, types: torch.Tensor, edge_index: torch.Tensor,
                edge_shift: torch.Tensor, t: torch.Tensor, temperature: torch.Tensor, n_local: int) -> torch.Tensor:
        v = torch.zeros_like(x_t)
        if x_t.shape[0] > 2:
            v = v + float("nan")
        return v


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("propagate_models")
    return {
        # v = 0: a jump is exactly the prior noise
        "zero": flow_artifact(d / "zero.pt", PairRelaxPropagator(CUTOFF, 0.0, 0.0), flow_steps=3),
        # wide prior (0.7 Å for Li, 0.3 Å for Ar): atoms cross periodic and sub-domain boundaries
        "relax": flow_artifact(d / "relax.pt", PairRelaxPropagator(CUTOFF, 0.05, 0.5), scale=(8.0, 8.0)),
        "corrector": flow_artifact(d / "corrector.pt", PairRelaxPropagator(CUTOFF, 0.02, 0.3), role="corrector",
                                   flow_steps=2, solver="heun"),
        "nan": flow_artifact(d / "nan.pt", NaNField(), max_attempts=3),
    }


@pytest.fixture(scope="module")
def system():
    """108 atoms of Li/Ar on a jittered fcc lattice in a periodic 16.2 Å box."""
    return fcc_lattice(3, a=5.4, jitter=0.1, seed=3, type_names=tuple(NAMES), fractions=(0.5, 0.5))


def box_of(system) -> np.ndarray:
    return np.diag(system.box)


def sigma_of(types: np.ndarray, scale=(1.0, 1.0)) -> np.ndarray:
    """Prior width per atom (Å), prior.maxwell_boltzmann_sigma written out."""
    kt = KB_EV_PER_K * TEMP
    return np.array(scale)[types] * np.sqrt(kt / np.array(MASSES)[types])


def remove_mean(d: np.ndarray, types: np.ndarray) -> np.ndarray:
    m = np.array(MASSES)[types][:, None]
    return d - (m * d).sum(0) / m.sum()


def run(model, system, n_jumps, **kwargs) -> "lb.LammpsResult":
    return run_lammps_propagate(model, system.positions, system.types, box_of(system), NAMES, MASSES, TEMP, SEED,
                                n_jumps, **kwargs)


# --------------------------------------------------------------------------- (a) prior noise
def test_jump_of_zero_field_is_the_counter_noise(models, system):
    """v = 0: each jump is sigma_i * counter_normal(seed, step, tag) minus its mass-weighted mean."""
    out = run(models["zero"], system, 2)
    tags = torch.arange(1, system.n_atoms + 1)
    sigma = sigma_of(system.types)[:, None]
    for step in (1, 2):
        expected = remove_mean(sigma * counter_normal(SEED, step, tags).numpy(), system.types)
        got = out.frames[step] - out.frames[step - 1]
        assert np.abs(expected).max() > 0.05
        assert np.abs(got - expected).max() <= 1e-12
    assert out.retries_total[-1] == 0


# ------------------------------------------------------------------ (c) vs a plain Python loop
def reference_jump(system, seed: int, step: int, model: torch.nn.Module, scale, flow_steps: int) -> np.ndarray:
    """One Euler jump of the contract, written out: graph on x_cond, noise by tag, K steps, mean removed."""
    x_cond = torch.tensor(system.positions, dtype=torch.float64)
    box = torch.tensor(system.box, dtype=torch.float64)
    types = torch.tensor(system.types)
    n = len(x_cond)
    edge_index, edge_shift = neighbor_graph(x_cond, CUTOFF, box)
    sigma = torch.tensor(sigma_of(system.types, scale))[:, None]
    x = x_cond + sigma * counter_normal(seed, step, torch.arange(1, n + 1))
    temperature = torch.full((n,), TEMP, dtype=torch.float64)
    for k in range(flow_steps):
        t = torch.tensor(k / flow_steps, dtype=torch.float64)
        x = x + (1.0 / flow_steps) * model(x, x_cond, types, edge_index, edge_shift, t, temperature, n)
    return remove_mean((x - x_cond).numpy(), system.types)


def test_first_jump_matches_python_loop(models, system):
    out = run(models["relax"], system, 1)
    expected = reference_jump(system, SEED, 1, PairRelaxPropagator(CUTOFF, 0.05, 0.5), (8.0, 8.0), 4)
    noise_only = reference_jump(system, SEED, 1, PairRelaxPropagator(CUTOFF, 0.0, 0.0), (8.0, 8.0), 4)
    assert np.abs(expected - noise_only).max() > 0.05   # the field matters
    assert np.abs(out.frames[1] - out.frames[0] - expected).max() <= 1e-10


# -------------------------------------------------------------- (b) 1 rank = 2 ranks, crossings
@pytest.fixture(scope="module")
def one_and_two_ranks(models, system):
    kw = {"corrector": models["corrector"], "extra": "solver heun"}
    return run(models["relax"], system, 6, **kw), run(models["relax"], system, 6, nprocs=2, in_process=False, **kw)


@pytest.mark.mpi
def test_one_rank_equals_two_ranks(one_and_two_ranks, system):
    one, two = one_and_two_ranks
    assert one.frames.shape == two.frames.shape == (7, system.n_atoms, 3)
    assert np.abs(one.frames - two.frames).max() <= 1e-10
    assert np.array_equal(one.images, two.images)
    assert "ghost cutoff set to 10" in two.log   # 2 layers x 4 Å + skin 2 Å
    # atoms crossed periodic boundaries and the mid-planes between the two ranks' sub-domains
    assert (np.abs(two.images[-1]).sum(1) > 0).sum() >= 5
    wrapped = np.mod(two.frames, box_of(system))
    side = wrapped < 0.5 * box_of(system)
    assert (side[1:] != side[:-1]).any(axis=(0, 1)).all()   # in x, y and z


def test_heun_and_corrector_jump_matches_standalone_sampler(one_and_two_ranks, models, system):
    """The first jump with solver heun and the corrector equals the standalone FlowJump (sampler.py)."""
    sampler = pytest.importorskip("engine_plugins.methods.propagator.sampler")
    jump = sampler.build_flow_jump(models["relax"], models["corrector"], solver="heun")
    x0 = torch.tensor(system.positions, dtype=torch.float64)
    x1 = jump(x0, torch.tensor(system.types), torch.tensor(system.box, dtype=torch.float64),
              torch.tensor(TEMP, dtype=torch.float64), SEED, 1)
    one, _ = one_and_two_ranks
    assert np.abs(one.frames[1] - x1.numpy()).max() <= 1e-10


@pytest.mark.mpi
def test_corrector_passes_one_rank_equals_two_ranks_and_sampler(models, system):
    """'corrector_passes 3': the corrector runs three times per jump (each on the frame the last pass
    left, own noise stream); 1 rank = 2 ranks = the standalone FlowJump with corrector_passes=3."""
    sampler = pytest.importorskip("engine_plugins.methods.propagator.sampler")
    kw = {"corrector": models["corrector"], "extra": "corrector_passes 3"}
    one = run(models["relax"], system, 3, **kw)
    two = run(models["relax"], system, 3, nprocs=2, in_process=False, **kw)
    assert np.abs(one.frames - two.frames).max() <= 1e-10
    assert "3 passes per jump" in one.log
    jump = sampler.build_flow_jump(models["relax"], models["corrector"], corrector_passes=3)
    single = sampler.build_flow_jump(models["relax"], models["corrector"])
    x = x1 = torch.tensor(system.positions, dtype=torch.float64)
    box = torch.tensor(system.box, dtype=torch.float64)
    temp = torch.tensor(TEMP, dtype=torch.float64)
    for k in range(3):
        x = jump(x, torch.tensor(system.types), box, temp, SEED, k + 1)
        assert np.abs(one.frames[k + 1] - x.numpy()).max() <= 1e-10
    x1 = single(x1, torch.tensor(system.types), box, temp, SEED, 1)
    assert np.abs(one.frames[1] - x1.numpy()).max() > 1e-3   # the passes matter


@pytest.mark.mpi
def test_nequip_flow_model_one_rank_equals_two_ranks_and_sampler(system, tmp_path):
    """The real backbone (an untrained NequIP flow vector field, 2 layers, float64): LAMMPS on 1 and 2
    ranks and the standalone FlowJump give the same jumps."""
    model_mod = pytest.importorskip("engine_plugins.methods.propagator.model")
    sampler = pytest.importorskip("engine_plugins.methods.propagator.sampler")
    torch.manual_seed(0)
    model = model_mod.build_flow_model(type_names=NAMES, r_max=CUTOFF, avg_num_neighbors=12.0, num_features=8,
                                       disp_scale={"Li": 0.5, "Ar": 0.3}, out_scale={"Li": 0.5, "Ar": 0.3})
    rf = {"delta_tau": DELTA_TAU, "temperature_range": [300.0, 900.0], "flow_steps": 2, "solver": "euler",
          "prior": {"kind": "maxwell_boltzmann", "scale": {"Li": 5.0, "Ar": 5.0}, "mass": dict(zip(NAMES, MASSES))}}
    meta = model_mod.flow_model_metadata("propagator", model.config, rf, periodicity="periodic")
    path = export_artifact(model_mod.script_flow_model(model), meta, tmp_path / "nequip_flow.pt")
    one = run(path, system, 2)
    two = run(path, system, 2, nprocs=2, in_process=False)
    x1 = sampler.build_flow_jump(path)(torch.tensor(system.positions), torch.tensor(system.types),
                                       torch.tensor(system.box, dtype=torch.float64),
                                       torch.tensor(TEMP, dtype=torch.float64), SEED, 1)
    assert np.abs(one.frames[1] - one.frames[0]).max() > 0.3
    assert np.abs(one.frames - two.frames).max() <= 1e-10
    assert np.abs(one.frames[1] - x1.numpy()).max() <= 1e-10


@pytest.mark.mpi
def test_noise_conditioned_corrector_one_rank_equals_two_ranks_and_sampler(models, system, tmp_path):
    """A noise-conditioned NequIP corrector (model.noise_conditioning; the level lives in its buffer,
    so the fix calls it with the usual eight arguments): LAMMPS on 1 and 2 ranks = the standalone
    FlowJump, and the level the corrector is told changes the jump."""
    model_mod = pytest.importorskip("engine_plugins.methods.propagator.model")
    sampler = pytest.importorskip("engine_plugins.methods.propagator.sampler")
    model = model_mod.build_flow_model(type_names=NAMES, r_max=CUTOFF, avg_num_neighbors=12.0, num_features=8,
                                       disp_scale={"Li": 0.1, "Ar": 0.1}, out_scale={"Li": 0.3, "Ar": 0.3},
                                       noise_conditioning=True, seed=4)
    rf = {"temperature_range": [300.0, 900.0], "flow_steps": 2, "solver": "euler", "max_displacement": 6.0,
          "prior": {"kind": "maxwell_boltzmann", "scale": {"Li": 0.3, "Ar": 0.3}, "mass": dict(zip(NAMES, MASSES))},
          "noise_max": 0.25, "noise_level": {"Li": 0.2, "Ar": 0.05}}
    meta = model_mod.flow_model_metadata("corrector", model.config, rf, periodicity="periodic")
    scripted = model_mod.script_flow_model(model)
    scripted.noise_level.copy_(torch.tensor([0.2, 0.05], dtype=torch.float64))
    corr = export_artifact(scripted, meta, tmp_path / "nc_corrector.pt")
    other = tmp_path / "nc_corrector_0.pt"
    sampler.write_corrector_noise_level(sampler.load_artifact(corr), other, 0.0)
    one = run(models["relax"], system, 2, corrector=corr)
    two = run(models["relax"], system, 2, corrector=corr, nprocs=2, in_process=False)
    low = run(models["relax"], system, 2, corrector=other)
    x1 = sampler.build_flow_jump(models["relax"], corr)(
        torch.tensor(system.positions), torch.tensor(system.types), torch.tensor(system.box, dtype=torch.float64),
        torch.tensor(TEMP, dtype=torch.float64), SEED, 1)
    assert np.abs(one.frames - two.frames).max() <= 1e-10
    assert np.abs(one.frames[1] - x1.numpy()).max() <= 1e-10
    assert np.abs(one.frames[1] - low.frames[1]).max() > 1e-6


CONTACT = {"min_distance": {"Li-Li": 3.0, "Ar-Li": 3.0, "Ar-Ar": 3.2}, "rounds": 3}


@pytest.mark.mpi
def test_contact_redraw_one_rank_equals_two_ranks_and_sampler(models, system, tmp_path):
    """role_fields.contact: the atoms a jump puts closer than min_distance get new noise with their
    own draw counter (ghosts get their owner's by forward communication); 1 rank = 2 ranks = the
    standalone FlowJump, and 'contact_rounds 0' gives the plain jumps."""
    sampler = pytest.importorskip("engine_plugins.methods.propagator.sampler")
    model = flow_artifact(tmp_path / "relax_contact.pt", PairRelaxPropagator(CUTOFF, 0.05, 0.5), scale=(6.0, 6.0),
                          contact=CONTACT)
    kw = {"corrector": models["corrector"]}
    one = run(model, system, 4, **kw)
    two = run(model, system, 4, nprocs=2, in_process=False, **kw)
    off = run(model, system, 4, extra="contact_rounds 0", **kw)
    assert "contact redraw: up to 3 round(s) per jump" in one.log
    jump = sampler.build_flow_jump(model, models["corrector"])
    x = torch.tensor(system.positions, dtype=torch.float64)
    for step in range(1, 5):
        x = jump(x, torch.tensor(system.types), torch.tensor(system.box, dtype=torch.float64),
                 torch.tensor(TEMP, dtype=torch.float64), SEED, step)
        assert np.abs(one.frames[step] - x.numpy()).max() <= 1e-10
    assert int(jump.propagator.contact_redraws) >= 2
    assert np.abs(one.frames - two.frames).max() <= 1e-10
    assert np.abs(off.frames[1:] - one.frames[1:]).max() > 0.1


def test_contact_metadata_with_an_unknown_type_is_a_clear_error(tmp_path):
    bad = flow_artifact(tmp_path / "bad_contact.pt", PairRelaxPropagator(CUTOFF, 0.0, 0.0),
                        contact={"min_distance": {"Li-Xe": 2.0}, "rounds": 2})
    msg = lammps_error(lammps_lines(fix_line(bad)))
    assert "role_fields.contact.min_distance' has pair 'Li-Xe'" in msg and "Fix:" in msg


# ------------------------------------------------------------------- (f) centre of mass, long run
def test_no_centre_of_mass_drift_over_many_jumps(models, system):
    out = run(models["relax"], system, 60, corrector=models["corrector"])
    m = np.array(MASSES)[system.types][None, :, None]
    com = (m * out.frames).sum(1) / m.sum()
    assert np.isfinite(out.frames).all()
    assert np.abs(out.frames[-1] - out.frames[0]).max() > 2.0   # atoms did move
    assert np.abs(com - com[0]).max() <= 1e-10


# --------------------------------------------------------------- (d) redraws, NaN, explosions
def expected_redraws(system, n_jumps: int, max_disp: float, scale=(1.0, 1.0)) -> list[int]:
    """Redraws per jump of the zero field: a draw fails when any |d| (mean removed) > max_disp."""
    tags = torch.arange(1, system.n_atoms + 1)
    sigma = sigma_of(system.types, scale)[:, None]
    out = []
    for step in range(1, n_jumps + 1):
        attempt = 0
        while True:
            d = remove_mean(sigma * counter_normal(SEED, step, tags, attempt).numpy(), system.types)
            if np.sqrt((d * d).sum(1)).max() <= max_disp:
                break
            attempt += 1
        out.append(attempt)
    return out


def test_redraws_are_counted_in_thermo(models, system):
    max_disp = 0.3   # Å: Li's prior width is 0.086 Å, so some draws of 108 atoms exceed it
    expected = expected_redraws(system, 8, max_disp)
    assert sum(expected) > 0 and max(expected) < 10
    out = run(models["zero"], system, 8, extra=f"max_disp {max_disp} max_attempts 10")
    assert out.retries_last[1:].tolist() == expected
    assert out.retries_total[1:].tolist() == np.cumsum(expected).tolist()


def lammps_lines(*fix_and_more: str, units: str = "metal", pair: bool = True) -> list[str]:
    return [f"units {units}", "atom_style atomic", "region box block 0 16 0 16 0 16", "create_box 2 box",
            "create_atoms 1 random 20 4321 NULL overlap 1.5", "create_atoms 2 random 20 8765 NULL overlap 1.5",
            f"mass 1 {MASSES[0]}", f"mass 2 {MASSES[1]}",
            *(["pair_style zero 4.0", "pair_coeff * *"] if pair else []), *fix_and_more]


def lammps_error(lines: list[str]) -> str:
    with lb.make_lammps() as lmp:
        with pytest.raises(lb.LammpsError) as info:
            lb.commands(lmp, lines)
    return str(info.value)


def fix_line(model, rest: str = f"types Li Ar temp {TEMP} seed {SEED}") -> str:
    return f"fix jump all ep/propagate {model} {rest}"


def test_nan_field_stops_after_max_attempts(models):
    msg = lammps_error(lammps_lines(f"timestep {DELTA_TAU}", fix_line(models["nan"]), "run 3"))
    assert "jump at step 1: all 3 attempt(s) of the propagator" in msg
    assert "non-finite displacement" in msg and "Fix:" in msg


def test_explosion_beyond_max_disp_stops_the_run(models):
    msg = lammps_error(lammps_lines(f"timestep {DELTA_TAU}",
                                    fix_line(models["zero"], f"types Li Ar temp {TEMP} seed 1 max_disp 1e-4 "
                                                             "max_attempts 4"), "run 2"))
    assert "all 4 attempt(s)" in msg and "longer than max_displacement 0.0001 angstrom" in msg


@pytest.mark.mpi
def test_jump_longer_than_a_subdomain_stops_instead_of_losing_atoms(system, tmp_path):
    """3 ranks along one direction: LAMMPS migrates atoms to neighbouring sub-domains only, so a
    20 A jump (prior width 3.5 A for Li) must stop the run with a clear error, not lose atoms."""
    big = flow_artifact(tmp_path / "big.pt", PairRelaxPropagator(CUTOFF, 0.0, 0.0), scale=(40.0, 40.0),
                        max_displacement=40.0)
    with pytest.raises(lb.LammpsError) as info:
        run(big, system, 2, nprocs=3, in_process=False)
    msg = str(info.value)
    assert "more than the width of an MPI sub-domain" in msg and "Fix: use fewer MPI ranks" in msg


def test_nan_position_names_atom_and_step(models):
    with lb.make_lammps() as lmp:
        lb.commands(lmp, lammps_lines(f"timestep {DELTA_TAU}", fix_line(models["zero"]), "run 1"))
        x = lmp.numpy.extract_atom("x")
        tag = int(lmp.numpy.extract_atom("id")[7])
        x[7, 1] = np.nan
        with pytest.raises(lb.LammpsError) as info:
            lb.commands(lmp, ["run 1 pre no"])
    msg = str(info.value)
    assert f"atom {tag} (type" in msg and "non-finite position" in msg and "jump of step 2" in msg


# ----------------------------------------------------------------------------- (e) bad inputs
def test_wrong_role_pseudo_force_model():
    msg = lammps_error(lammps_lines(fix_line(REPO / "exported_models" / "lj_argon.pt")))
    assert "has role 'pseudo_force' (LAMMPS runs it with pair_style ep/torch)" in msg
    assert "needs a model with role 'propagator'" in msg


def test_corrector_must_have_role_corrector(models):
    msg = lammps_error(lammps_lines(fix_line(models["zero"], f"types Li Ar temp {TEMP} seed 1 corrector "
                                                             f"{models['relax']}")))
    assert "corrector model" in msg and "has role 'propagator'" in msg and "needs a model with role 'corrector'" in msg


@pytest.mark.parametrize("rest, expected", [
    (f"temp {TEMP} seed 1", "missing 'types NAME1 ... NAME2'"),
    (f"types Li temp {TEMP} seed 1", "got 1 name(s) for 2 LAMMPS atom type(s)"),
    (f"types Li Xe temp {TEMP} seed 1", "LAMMPS type 2 is mapped to 'Xe', which is not a type of model"),
    ("types Li Ar seed 1", "missing 'temp T'"),
    (f"types Li Ar temp {TEMP}", "missing 'seed S'"),
    (f"types Li Ar temp {TEMP} seed 1 solver rk4", "Illegal fix ep/propagate solver 'rk4'"),
    (f"types Li Ar temp {TEMP} seed 1 gpu yes", "Unknown fix ep/propagate keyword 'gpu'"),
    (f"types Li Ar temp {TEMP} seed 1 prior_scale Xe 2", "prior_scale: 'Xe' is not a type of model"),
    (f"types Li Ar temp {TEMP} seed 1 prior_scale Li -1", "Illegal fix ep/propagate prior_scale Li -1"),
    (f"types Li Ar temp {TEMP} seed 1 contact_rounds -1", "Illegal fix ep/propagate contact_rounds -1"),
    (f"types Li Ar temp {TEMP} seed 1 corrector_passes 2", "corrector_passes 2: there is no corrector"),
    (f"types Li Ar temp {TEMP} seed 1 corrector_passes 0", "Illegal fix ep/propagate corrector_passes 0"),
])
def test_bad_fix_arguments(models, rest, expected):
    assert expected in lammps_error(lammps_lines(fix_line(models["zero"], rest)))


def test_timestep_must_equal_delta_tau(models):
    msg = lammps_error(lammps_lines("timestep 0.001", fix_line(models["zero"]), "run 1"))
    assert "timestep is 0.001 ps, but model" in msg and "delta_tau = 0.5 ps" in msg and "Fix: 'timestep 0.5'" in msg
    # units real: the same model needs 'timestep 500' (fs), and then runs
    msg = lammps_error(lammps_lines("timestep 1", fix_line(models["zero"]), "run 1", units="real"))
    assert "timestep is 1 fs" in msg and "Fix: 'timestep 500'" in msg
    with lb.make_lammps() as lmp:
        lb.commands(lmp, lammps_lines("timestep 500", fix_line(models["zero"]), "run 1", units="real"))
        assert lmp.extract_fix("jump", 0, 1, 3) == 1.0   # f_jump[4]: one jump done


def test_timestep_set_takes_delta_tau(models):
    with lb.make_lammps() as lmp:
        lb.commands(lmp, lammps_lines("timestep 0.001", fix_line(models["zero"], f"types Li Ar temp {TEMP} seed 1 "
                                                                             "timestep set"), "run 2"))
        assert lmp.extract_global("dt") == DELTA_TAU
        assert lmp.get_thermo("time") == pytest.approx(2 * DELTA_TAU)


def test_example_input_runs(tmp_path):
    """lammps/examples/in.propagate_transport with a closed-form model of its species (Fw, Li)."""
    meta = ArtifactMetadata(role="propagator", method="pair_relax_test", type_names=["Fw", "Li"], cutoff=CUTOFF,
                            num_message_passing_layers=2, units={"length": "angstrom", "energy": "eV", "time": "ps"},
                            periodicity="periodic",
                            role_fields={"delta_tau": 2.0, "temperature_range": [600.0, 1200.0], "flow_steps": 2,
                                         "solver": "euler", "max_displacement": 5.0,
                                         "prior": {"kind": "maxwell_boltzmann", "scale": {"Fw": 1.0, "Li": 3.0},
                                                   "mass": {"Fw": 100.0, "Li": 6.94}}})
    model = export_artifact(PairRelaxPropagator(CUTOFF, 0.0, 0.5), meta, tmp_path / "transport_test.pt")
    out = lb.run_lammps_script(REPO / "lammps" / "examples" / "in.propagate_transport", workdir=tmp_path,
                               extra_args=["-var", "model", str(model), "-var", "njumps", "20", "-screen", "none"])
    assert "ep/propagate: timestep set to 2 ps" in out.log
    assert "320 atoms" in out.log and "WARNING" not in out.log
    last = [ln.split() for ln in out.log.splitlines() if ln.strip().startswith("20 ")][-1]
    assert float(last[1]) == 40.0 and float(last[5]) > 0.0   # time 20 x 2 ps, Li MSD > 0
    assert (tmp_path / "propagate_transport.lammpstrj").is_file()


def test_pair_style_with_model_cutoff_is_required(models):
    msg = lammps_error(lammps_lines(f"timestep {DELTA_TAU}", fix_line(models["zero"]), "run 1", pair=False))
    assert "needs a pair style with a cutoff >= the model cutoff 4" in msg and "pair_style zero 4" in msg


def test_temperature_outside_training_range_warns(models, tmp_path):
    log = tmp_path / "log.lammps"
    with lb.make_lammps(["-screen", "none", "-log", str(log), "-nocite"]) as lmp:
        lb.commands(lmp, lammps_lines(f"timestep {DELTA_TAU}", fix_line(models["zero"], "types Li Ar temp 1500 seed 1"),
                                      "run 1"))
    text = log.read_text()
    assert "WARNING: fix ep/propagate: temp 1500 K is outside the temperature range 300..900 K" in text


def test_propagate_commands_convert_delta_tau(models):
    lines = propagate_commands(models["zero"], NAMES, TEMP, 7, units="real")
    assert lines[:3] == ["pair_style zero 4.0", "pair_coeff * *", "timestep 500.0"]
    assert lines[3].endswith(f"types Li Ar temp {TEMP!r} seed 7")
