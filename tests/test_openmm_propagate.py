"""Learned propagation inside OpenMM (TorchForce + CustomIntegrator) against the standalone sampler."""

from __future__ import annotations

import glob
import io
from pathlib import Path

import numpy as np
import openmm as mm
import openmm.app as app
import openmm.unit as unit
import pytest
import torch

from engine_plugins.engines.openmm_propagate import (LearnedPropagationError, create_learned_integrator,
                                                     create_system_for_model)
from engine_plugins.export import export_artifact
from engine_plugins.methods.lennard_jones import LennardJones, lennard_jones_metadata
from engine_plugins.methods.propagator.analytic import PairRelaxPropagator
from engine_plugins.methods.propagator.sampler import build_flow_jump

from test_propagator_sampler import BOX, MASS, NAMES, NaNField, NaNOnFirstDraw, export_field, sigma_z, system

REPO = Path(__file__).resolve().parent.parent
DT = 2.0  # ps, delta_tau of the test artifacts


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("omm_prop")
    return {"prop": export_field(d / "prop.pt", PairRelaxPropagator(strength=0.05, drift=0.5), flow_steps=3),
            "heun": export_field(d / "heun.pt", PairRelaxPropagator(strength=0.05, drift=0.5), solver="heun",
                                 flow_steps=2),
            "corr": export_field(d / "corr.pt", PairRelaxPropagator(strength=0.02, drift=1.0), role="corrector",
                                 flow_steps=2, scale={"Li": 0.3, "Ar": 0.2}),
            "open_only": export_field(d / "open.pt", PairRelaxPropagator(), periodicity="nonperiodic"),
            "nan": export_field(d / "nan.pt", NaNField()),
            "lj": export_artifact(LennardJones([0.2, 0.3], [3.0, 3.4], 4.0), lennard_jones_metadata(NAMES, 4.0),
                                  d / "lj.pt"),
            "dir": d}


def make_system(types, periodic: bool, box: float = BOX) -> mm.System:
    s = mm.System()
    for t in types:
        s.addParticle(MASS[NAMES[t]])
    if periodic:
        s.setDefaultPeriodicBoxVectors(*(mm.Vec3(*row) for row in np.eye(3) * box * 0.1))
    return s


def make_topology(types, periodic: bool, cg: bool = False) -> app.Topology:
    """Element symbols, or (cg) beads with no element whose residue name is the type."""
    top = app.Topology()
    chain = top.addChain()
    for t in types:
        name = NAMES[t]
        res = top.addResidue(name if cg else "MOL", chain)
        top.addAtom("B" if cg else name, None if cg else app.element.Element.getBySymbol(name), res)
    if periodic:
        top.setPeriodicBoxVectors(np.eye(3) * BOX * 0.1)
    return top


def openmm_run(model, types, pos, periodic, n, corrector=None, seed=3, start=0, temperature=600.0,
               platform="Reference", **kw):
    s = make_system(types, periodic)
    setup = create_learned_integrator(s, [NAMES[t] for t in types], model, corrector, temperature=temperature,
                                      seed=seed, start_step=start, periodic=periodic, **kw)
    ctx = mm.Context(s, setup.integrator, mm.Platform.getPlatformByName(platform))
    ctx.setPositions(pos * 0.1)
    frames = []
    for _ in range(n):
        setup.integrator.step(1)
        frames.append(ctx.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(unit.angstrom))
    return np.array(frames), ctx, setup


def standalone(model, types, pos, periodic, n, corrector=None, seed=3, start=0, temperature=600.0, **kw):
    jump = build_flow_jump(model, corrector, **kw)
    x = torch.tensor(pos)
    box = torch.eye(3, dtype=torch.float64) * BOX if periodic else None
    temp = torch.full((len(pos),), temperature, dtype=torch.float64)
    out = []
    for k in range(n):
        x = jump(x, torch.tensor(types), box, temp, seed, start + k + 1)
        out.append(x.numpy().copy())
    return np.array(out)


@pytest.mark.parametrize("periodic,corrector,model,platform", [
    (True, False, "prop", "Reference"), (False, False, "prop", "Reference"), (True, True, "heun", "Reference"),
    (True, True, "prop", "CPU")])
def test_openmm_steps_equal_the_standalone_sampler(models, periodic, corrector, model, platform):
    pos, types = system(seed=10)
    corr = models["corr"] if corrector else None
    got, ctx, setup = openmm_run(models[model], types, pos, periodic, 4, corr, start=7, platform=platform)
    ref = standalone(models[model], types, pos, periodic, 4, corr, start=7)
    assert np.abs(got - ref).max() <= 1e-10
    assert np.abs(ref[-1] - pos).max() > 0.05  # atoms really moved
    assert setup.jump_index(ctx) == 11 and setup.retries() == 0
    # a different seed is a different trajectory
    other = standalone(models[model], types, pos, periodic, 1, corr, seed=4, start=7)
    assert np.abs(other[0] - ref[0]).max() > 1e-3


def test_openmm_corrector_passes_equal_the_standalone_sampler(models):
    """corrector_passes=3 runs inside the corrector's one force evaluation: the same jumps as the
    standalone FlowJump with three passes, and not those of one pass."""
    pos, types = system(seed=12)
    got, ctx, setup = openmm_run(models["prop"], types, pos, True, 3, models["corr"], corrector_passes=3)
    ref = standalone(models["prop"], types, pos, True, 3, models["corr"], corrector_passes=3)
    one = standalone(models["prop"], types, pos, True, 1, models["corr"])
    assert np.abs(got - ref).max() <= 1e-10
    assert np.abs(ref[0] - one[0]).max() > 1e-3
    with pytest.raises(LearnedPropagationError, match="without a corrector"):
        openmm_run(models["prop"], types, pos, True, 1, None, corrector_passes=2)


def test_app_layer_reporters_time_velocities_and_centre_of_mass(models, tmp_path):
    import MDAnalysis as mda

    pos, types = system(seed=11)
    top = make_topology(types, periodic=True)
    s = create_system_for_model(top, models["prop"])
    setup = create_learned_integrator(s, top, models["prop"], models["corr"], temperature=500.0, seed=5)
    sim = app.Simulation(top, s, setup.integrator, mm.Platform.getPlatformByName("Reference"))
    sim.context.setPositions(pos * 0.1)
    log = io.StringIO()
    sim.reporters.append(app.DCDReporter(str(tmp_path / "traj.dcd"), 1))
    sim.reporters.append(app.StateDataReporter(log, 1, step=True, time=True, kineticEnergy=True,
                                               potentialEnergy=True))
    masses = np.array([MASS[NAMES[t]] for t in types])
    com0 = masses @ pos / masses.sum()
    n = 6
    before = sim.context.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(unit.angstrom)
    sim.step(n - 1)
    before = sim.context.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(unit.angstrom)
    sim.step(1)
    state = sim.context.getState(getPositions=True, getVelocities=True)
    x = state.getPositions(asNumpy=True).value_in_unit(unit.angstrom)
    # simulation time advances by delta_tau per step
    assert abs(state.getTime().value_in_unit(unit.picosecond) - n * DT) < 1e-12
    assert sim.currentStep == n
    # velocities are the last jump's displacement / delta_tau (nm/ps)
    v = state.getVelocities(asNumpy=True).value_in_unit(unit.nanometer / unit.picosecond)
    assert np.abs(v - (x - before) * 0.1 / DT).max() < 1e-12
    # no centre-of-mass drift (system masses = model masses)
    assert np.abs(masses @ x / masses.sum() - com0).max() < 1e-11
    assert np.abs(x - pos).max() > 0.05
    # the trajectory is the standalone rollout, and MDAnalysis reads the DCD
    ref = standalone(models["prop"], types, pos, True, n, models["corr"], seed=5, temperature=500.0)
    assert np.abs(x - ref[-1]).max() <= 1e-10
    with open(tmp_path / "top.pdb", "w") as fh:
        app.PDBFile.writeFile(top, pos * 0.1 * unit.nanometer, fh)
    u = mda.Universe(str(tmp_path / "top.pdb"), str(tmp_path / "traj.dcd"))
    assert len(u.trajectory) == n
    u.trajectory[n - 1]
    assert np.abs(u.atoms.positions - x).max() < 1e-3  # DCD: float32
    assert np.allclose(u.dimensions[:3], BOX, atol=1e-4)
    rows = [r for r in log.getvalue().splitlines() if not r.startswith("#")]
    assert len(rows) == n and abs(float(rows[-1].split(",")[1]) - n * DT) < 1e-9
    ke = float(rows[-1].split(",")[3])
    assert abs(ke - 0.5 * (masses[:, None] * v ** 2).sum()) < 1e-6 * max(ke, 1.0)


def test_adapter_caches_repeated_calls_at_the_same_state(models):
    """OpenMM asks for energy and forces separately, and reporters ask again: one sampler call per state."""
    from engine_plugins.engines.openmm_propagate import DISPLACEMENT_PER_FORCE, FlowForceCore, PeriodicFlowForce
    from engine_plugins.methods.propagator.sampler import build_flow_sampler

    pos, types = system(seed=16)
    mod = torch.jit.script(PeriodicFlowForce(FlowForceCore(build_flow_sampler(models["prop"]), list(types), 10.0, 3,
                                                           True)))
    x = torch.tensor(pos * 0.1)
    box = torch.eye(3, dtype=torch.float64) * BOX * 0.1
    t = torch.tensor(600.0, dtype=torch.float64)
    e1, f1 = mod(x, box, torch.tensor(2.0, dtype=torch.float64), t)
    e2, f2 = mod(x, box, torch.tensor(2.0, dtype=torch.float64), t)
    assert mod.core.evaluations == 1 and torch.equal(f1, f2) and float(e1) == 0.0
    _, f3 = mod(x, box, torch.tensor(3.0, dtype=torch.float64), t)
    mod(x, box, torch.tensor(3.0, dtype=torch.float64), t * 1.5)
    mod(x + 1e-9, box, torch.tensor(3.0, dtype=torch.float64), t * 1.5)
    assert mod.core.evaluations == 4
    ref = standalone(models["prop"], types, pos, True, 1, start=2)[0]
    assert np.abs(pos + f1.numpy() * DISPLACEMENT_PER_FORCE * 10 - ref).max() < 1e-12
    assert np.abs(f3 - f1).max() > 1.0


@pytest.mark.parametrize("periodic", [True, False])
def test_adapter_records_no_gradient(models, periodic):
    """openmmtorch passes positions that require grad with grad mode on; a jump must not record an
    autograd graph through its ODE loop (it made the OpenMM jump 1.5x the standalone one)."""
    from engine_plugins.engines.openmm_propagate import FlowForceCore, OpenFlowForce, PeriodicFlowForce
    from engine_plugins.methods.propagator.sampler import build_flow_sampler

    pos, types = system(seed=17)
    core = FlowForceCore(build_flow_sampler(models["prop"]), list(types), 10.0, 3, True)
    mod = torch.jit.script(PeriodicFlowForce(core) if periodic else OpenFlowForce(core))
    x = torch.tensor(pos * 0.1).requires_grad_(True)
    step, t = torch.tensor(0.0, dtype=torch.float64), torch.tensor(600.0, dtype=torch.float64)
    with torch.enable_grad():
        args = (x, torch.eye(3, dtype=torch.float64) * BOX * 0.1) if periodic else (x,)
        e, f = mod(*args, step, t)
    assert torch.isfinite(f).all() and f.abs().max() > 0
    assert f.grad_fn is None and not f.requires_grad and e.grad_fn is None


def test_checkpoint_restores_the_noise_step(models):
    pos, types = system(seed=12)
    _, ctx, setup = openmm_run(models["prop"], types, pos, True, 2)
    chk = ctx.createCheckpoint()
    setup.integrator.step(3)
    a = ctx.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(unit.angstrom)
    ctx.loadCheckpoint(chk)
    assert setup.jump_index(ctx) == 2
    setup.integrator.step(3)
    b = ctx.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(unit.angstrom)
    assert np.array_equal(a, b)
    assert abs(ctx.getState().getTime().value_in_unit(unit.picosecond) - 5 * DT) < 1e-12


def test_redraws_are_counted_and_a_hopeless_jump_stops_the_run(models):
    pos, types = system(seed=13)
    bad = torch.tensor(pos) + torch.tensor(sigma_z(types, 600.0, 3, 1, 0))
    once = export_field(models["dir"] / "nan_once.pt", NaNOnFirstDraw(bad))
    got, ctx, setup = openmm_run(once, types, pos, True, 2)
    assert setup.retries() == 1  # attempt 0 of the first jump (step 1) only
    assert np.abs(got - standalone(once, types, pos, True, 2)).max() <= 1e-10
    with pytest.raises(mm.OpenMMException, match="failed all 4 attempts"):
        openmm_run(models["nan"], types, pos, True, 1)


def test_cg_topology_by_residue_name(models):
    pos, types = system(seed=14)
    top = make_topology(types, periodic=False, cg=True)
    s = create_system_for_model(top, models["prop"])
    setup = create_learned_integrator(s, top, models["prop"], temperature=600.0, seed=3)
    assert setup.types == [NAMES[t] for t in types] and not setup.periodic
    ctx = mm.Context(s, setup.integrator, mm.Platform.getPlatformByName("Reference"))
    ctx.setPositions(pos * 0.1)
    setup.integrator.step(2)
    x = ctx.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(unit.angstrom)
    assert np.abs(x - standalone(models["prop"], types, pos, False, 2)[-1]).max() <= 1e-10


def test_bad_inputs(models):
    pos, types = system(seed=15)
    names = [NAMES[t] for t in types]
    with pytest.raises(LearnedPropagationError, match="role is 'pseudo_force'.*'propagator'"):
        create_learned_integrator(make_system(types, True), names, models["lj"], temperature=600.0)
    with pytest.raises(LearnedPropagationError, match="role is 'propagator'.*'corrector'"):
        create_learned_integrator(make_system(types, True), names, models["prop"], models["prop"], temperature=600.0)
    with pytest.warns(UserWarning, match=r"outside the model's training range \[300, 900\] K"):
        create_learned_integrator(make_system(types, True), names, models["prop"], temperature=1200.0)
    with pytest.raises(LearnedPropagationError, match="type name.*Xe.*not known"):
        create_learned_integrator(make_system(types, True), ["Xe"] + names[1:], models["prop"], temperature=600.0)
    with pytest.raises(LearnedPropagationError, match="23 particle types for a system of 24"):
        create_learned_integrator(make_system(types, True), names[:-1], models["prop"], temperature=600.0)
    top = app.Topology()
    res = top.addResidue("SOL", top.addChain())
    for _ in types:
        top.addAtom("O", app.element.oxygen, res)
    with pytest.raises(LearnedPropagationError, match="atom 0 .*'O'.*has no model type"):
        create_learned_integrator(make_system(types, False), top, models["prop"], temperature=600.0)
    with pytest.raises(LearnedPropagationError, match="non-periodic systems but this system is periodic"):
        create_learned_integrator(make_system(types, True), names, models["open_only"], temperature=600.0,
                                  periodic=True)
    with pytest.raises(LearnedPropagationError, match="less than twice the model cutoff"):
        create_learned_integrator(make_system(types, True, box=7.0), names, models["prop"], temperature=600.0,
                                  periodic=True)
    s = make_system(types, True)
    s.addConstraint(0, 1, 0.3)
    with pytest.raises(LearnedPropagationError, match="1 constraints"):
        create_learned_integrator(s, names, models["prop"], temperature=600.0, periodic=True)
    s = make_system(types, True)
    f = mm.CustomExternalForce("0")
    f.setForceGroup(30)
    s.addForce(f)
    with pytest.raises(LearnedPropagationError, match="already in force group 30"):
        create_learned_integrator(s, names, models["prop"], temperature=600.0, periodic=True)
    s = make_system(types, True)
    s.setParticleMass(0, 1.0)
    with pytest.warns(UserWarning, match="mass"):
        create_learned_integrator(s, names, models["prop"], temperature=600.0, periodic=True)


_SHIPPED_PROPAGATORS = glob.glob(str(REPO / "exported_models" / "propagator_*.pt"))
# each shipped propagator (with its corrector when shipped), and correctors without a propagator
TRAINED = sorted(_SHIPPED_PROPAGATORS + [
    c for c in glob.glob(str(REPO / "exported_models" / "corrector_*.pt"))
    if c.replace("corrector_", "propagator_") not in _SHIPPED_PROPAGATORS])


@pytest.mark.parametrize("model", TRAINED, ids=[Path(p).stem for p in TRAINED])
def test_shipped_models_run_in_openmm_as_standalone(model, tmp_path):
    """Each trained model in exported_models/: an OpenMM jump equals the standalone sampler.

    A corrector runs after its own propagator (propagator_<name>.pt) when shipped, else after the
    closed-form PairRelax field with the corrector's types. One flow step per jump (override) keeps
    this fast; the loop itself is covered above.
    """
    from engine_plugins.export import ArtifactMetadata
    from engine_plugins.export.artifact import read_metadata

    meta = read_metadata(model)
    prop, corr = model, None
    shipped_corr = Path(model).with_name(Path(model).name.replace("propagator_", "corrector_", 1))
    if meta.role == "propagator" and shipped_corr.exists():
        corr = str(shipped_corr)
    if meta.role == "corrector":
        corr = model
        prop = str(Path(model).with_name(Path(model).name.replace("corrector_", "propagator_", 1)))
        if not Path(prop).exists():
            rf = {k: meta.role_fields[k] for k in ("temperature_range", "flow_steps", "solver", "prior")}
            prop = export_artifact(PairRelaxPropagator(cutoff=meta.cutoff), ArtifactMetadata(
                role="propagator", method="pair_relax_test", type_names=list(meta.type_names), cutoff=meta.cutoff,
                num_message_passing_layers=2, units=dict(meta.units), periodicity=meta.periodicity,
                role_fields={**rf, "delta_tau": 1.0}), tmp_path / "prop.pt")
    pmeta = read_metadata(prop)
    n_types = len(pmeta.type_names)
    lo, hi = pmeta.role_fields["temperature_range"][:2]
    to_a = 10.0 if pmeta.units["length"] == "nm" else 1.0
    rng = np.random.default_rng(0)
    g = 3
    grid = np.array([[i, j, k] for i in range(g) for j in range(g) for k in range(g)], float)
    box = max(2.2 * pmeta.cutoff * to_a, 9.0)
    pos = (grid + 0.5) * box / g + rng.normal(0, 0.1, grid.shape)
    types = np.arange(len(pos)) % n_types
    names = [pmeta.type_names[t] for t in types]
    masses = pmeta.role_fields["prior"]["mass"]
    s = mm.System()
    for n in names:
        s.addParticle(float(masses[n]))
    periodic = pmeta.periodicity != "nonperiodic"
    if periodic:
        s.setDefaultPeriodicBoxVectors(*(mm.Vec3(*row) for row in np.eye(3) * box * 0.1))
    temperature = 0.5 * (float(lo) + float(hi))
    setup = create_learned_integrator(s, names, prop, corr, temperature=temperature, seed=1, periodic=periodic,
                                      flow_steps=1, corrector_flow_steps=1)
    ctx = mm.Context(s, setup.integrator, mm.Platform.getPlatformByName("Reference"))
    ctx.setPositions(pos * 0.1)
    setup.integrator.step(1)
    x = ctx.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(unit.angstrom)
    jump = build_flow_jump(prop, corr, flow_steps=1, corrector_flow_steps=1)
    xs = torch.tensor(pos / to_a)
    b = torch.eye(3, dtype=torch.float64) * box / to_a if periodic else None
    for k in range(1):
        xs = jump(xs, torch.tensor(types), b, torch.full((len(pos),), temperature, dtype=torch.float64), 1, k + 1)
    assert np.isfinite(x).all() and np.abs(x - pos).max() > 1e-3
    tol = 1e-8 if meta.dtype == "float64" else 1e-4  # float32 models: nm <-> Å round-off is amplified
    assert np.abs(x - xs.detach().numpy() * to_a).max() <= tol


def test_openmm_equals_lammps_fix_for_the_same_seed(models, lammps_plugin):
    """Same model, seed and start: OpenMM's integrator and LAMMPS's fix ep/propagate give one trajectory."""
    from engine_plugins.engines.lammps_propagate import run_lammps_propagate

    pos, types = system(seed=17)
    n = 3
    lmp = run_lammps_propagate(models["prop"], pos, types, np.eye(3) * BOX, NAMES, [MASS[t] for t in NAMES], 600.0,
                               3, n, corrector=models["corr"])
    got, _, _ = openmm_run(models["prop"], types, pos, True, n, models["corr"], seed=3)
    assert np.abs(lmp.frames[0] - pos).max() < 1e-10
    assert np.abs(got - lmp.frames[1:]).max() <= 1e-10


def test_prior_scale_override_is_the_same_prior_in_every_engine(models, lammps_plugin, tmp_path):
    """``prior_scale`` (the adaptive prior's per-material pick) gives exactly the jumps of an artifact
    whose metadata carries that scale, in the standalone sampler, OpenMM and LAMMPS alike."""
    from engine_plugins.engines.lammps_propagate import run_lammps_propagate
    from engine_plugins.methods.propagator.sampler import SamplerError

    field = PairRelaxPropagator(strength=0.05, drift=0.5)
    wide = export_field(tmp_path / "wide.pt", field, flow_steps=3, scale={"Li": 4.0, "Ar": 0.5})
    pos, types = system(seed=23)
    n, over = 3, {"Li": 4.0}
    ref = standalone(wide, types, pos, True, n, seed=5)
    assert np.abs(standalone(models["prop"], types, pos, True, n, seed=5) - ref).max() > 1e-3  # the scale matters
    assert np.abs(standalone(models["prop"], types, pos, True, n, seed=5, prior_scale=over) - ref).max() == 0.0
    got, _, _ = openmm_run(models["prop"], types, pos, True, n, seed=5, prior_scale=over)
    assert np.abs(got - ref).max() <= 1e-10
    lmp = run_lammps_propagate(models["prop"], pos, types, np.eye(3) * BOX, NAMES, [MASS[t] for t in NAMES], 600.0,
                               5, n, extra="prior_scale Li 4.0")
    assert np.abs(lmp.frames[1:] - ref).max() <= 1e-10
    with pytest.raises(SamplerError, match=r"type\(s\) \['Xe'\] that the model does not have"):
        build_flow_jump(models["prop"], prior_scale={"Xe": 1.0})
    with pytest.raises(LearnedPropagationError, match="prior_scale for type 'Li' is -1.0"):
        openmm_run(models["prop"], types, pos, True, 1, prior_scale={"Li": -1.0})


def test_example_script_takes_a_prior_scale(tmp_path, capsys):
    """openmm/learned_propagation.py --demo runs with --prior-scale, and names a wrong type name."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("learned_propagation", REPO / "openmm" / "learned_propagation.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    script.main(["--demo", "--jumps", "4", "--report-interval", "2", "--output", str(tmp_path), "--prior-scale", "Li=2"])
    assert (tmp_path / "trajectory.dcd").stat().st_size > 0
    with pytest.raises(SystemExit):
        script.main(["--demo", "--jumps", "1", "--output", str(tmp_path / "x"), "--prior-scale", "Xe=2"])
    assert "prior_scale names type(s) ['Xe']" in capsys.readouterr().err


def test_contact_redraw_is_the_same_in_openmm_as_standalone(models, tmp_path):
    """role_fields.contact: OpenMM's TorchForce runs the sampler's contact redraw, so its jumps equal
    the standalone ones; contact_rounds=0 switches it off in both (and then the jumps differ)."""
    from test_propagator_sampler import CONTACT, WIDE

    model = export_field(tmp_path / "contact.pt", PairRelaxPropagator(strength=0.05, drift=0.5), flow_steps=3,
                         periodicity="periodic", scale=WIDE, contact=CONTACT, max_displacement=20.0)
    pos, types = system(27, seed=4)
    ref = standalone(model, types, pos, True, 3, models["corr"])
    got, _, _ = openmm_run(model, types, pos, True, 3, models["corr"])
    assert np.abs(got - ref).max() <= 1e-10
    off = standalone(model, types, pos, True, 3, models["corr"], contact_rounds=0)
    got_off, _, _ = openmm_run(model, types, pos, True, 3, models["corr"], contact_rounds=0)
    assert np.abs(got_off - off).max() <= 1e-10
    assert np.abs(off - ref).max() > 0.1


def test_openmm_noise_conditioned_corrector_equals_the_standalone_sampler(models, tmp_path):
    """A noise-conditioned NequIP corrector (its level a module buffer) inside the integrator: the
    same jumps as the standalone FlowJump, and different ones when told another level."""
    from engine_plugins.export.artifact import load_artifact
    from engine_plugins.methods.propagator.model import build_flow_model, flow_model_metadata, script_flow_model
    from engine_plugins.methods.propagator.sampler import write_corrector_noise_level

    model = build_flow_model(type_names=list(NAMES), r_max=4.0, avg_num_neighbors=8.0, num_features=8,
                             disp_scale={n: 0.1 for n in NAMES}, out_scale={n: 0.3 for n in NAMES},
                             noise_conditioning=True, seed=6)
    rf = {"temperature_range": [300.0, 900.0], "flow_steps": 2, "solver": "euler", "max_displacement": 6.0,
          "prior": {"kind": "maxwell_boltzmann", "scale": {n: 0.3 for n in NAMES}, "mass": dict(MASS)},
          "noise_max": 0.25, "noise_level": {n: 0.2 for n in NAMES}}
    with torch.no_grad():  # untrained, the level hardly shows in the output: make it count
        model.backbone.noise_conditioning.mlp[2].weight.mul_(100.0)
    scripted = script_flow_model(model)
    scripted.noise_level.fill_(0.2)
    corr = export_artifact(scripted, flow_model_metadata("corrector", model.config, rf, periodicity="any"),
                           tmp_path / "nc.pt")
    other = tmp_path / "nc0.pt"
    write_corrector_noise_level(load_artifact(corr), other, 0.0)
    pos, types = system(seed=13)
    got, _, _ = openmm_run(models["prop"], types, pos, True, 2, corr)
    ref = standalone(models["prop"], types, pos, True, 2, corr)
    low = standalone(models["prop"], types, pos, True, 2, other)
    bare = standalone(models["prop"], types, pos, True, 2)
    assert np.abs(got - ref).max() <= 1e-10
    # the level changes the correction by more than a hundredth of its size
    assert np.abs(ref[-1] - low[-1]).max() > 1e-2 * np.abs(ref[-1] - bare[-1]).max()
