"""Evaluation of rollouts against reference MD: observables vs MDAnalysis's own analyses, figures
of merit on known inputs, the evaluate command end to end on real tiny LAMMPS runs, bad inputs."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from _md_runs import TRANSPORT_MATERIAL, TRANSPORT_T, transport_run
from engine_plugins.analysis.evaluate import EvaluationError, compare, compare_engines, evaluate, noise_floor
from engine_plugins.analysis.observables import (ClosestApproach, ObservableError, RadiusOfGyration, SpeciesMSD, SpeciesRDF,
                                                 diffusivity, mean_abs_log10_ratio, median_relative_error, msd_fft, rdf_jsd,
                                                 spearman, trajectory_universe)
from engine_plugins.analysis.rollout import RolloutError, check_roles, measure_case_prior, read_reference, rollout_start
from engine_plugins.data.trajectories import UnwrappedTrajectory, load_cases

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.filterwarnings("ignore:DCDReader currently makes:DeprecationWarning")


@pytest.fixture(scope="module")
def tiny_case():
    return load_cases(transport_run())[0]


@pytest.fixture(scope="module")
def tiny_traj(tiny_case) -> UnwrappedTrajectory:
    return read_reference(tiny_case)


def test_species_msd_equals_mdanalysis_einstein_msd(tiny_case, tiny_traj):
    from MDAnalysis.analysis.msd import EinsteinMSD

    from engine_plugins.data.trajectories import open_universe

    # MDAnalysis unwraps the dump itself from its image flags: an independent path to the positions
    u = open_universe(tiny_case.topology, tiny_case.trajectory, format="LAMMPSDUMP", topology_format="DATA",
                      atom_style="id type x y z", unwrap_images=True, dt=0.001)
    msd = SpeciesMSD(trajectory_universe(tiny_traj).atoms).run()
    for species, lammps_type in (("Fw", 1), ("Li", 2)):
        ref = EinsteinMSD(u, select=f"type {lammps_type}", msd_type="xyz", fft=False).run().results.timeseries
        assert np.allclose(msd.results.msd[species], ref, rtol=1e-5, atol=1e-6), species
    assert msd.results.msd["Li"][-1] > 1.0  # the mobile species really moved
    assert np.allclose(msd.results.lagtimes, np.arange(tiny_traj.n_frames) * tiny_case.frame_interval)


def test_msd_about_the_centre_of_mass_removes_a_uniform_drift(tiny_traj):
    drifted = replace(tiny_traj, positions=tiny_traj.positions + np.arange(tiny_traj.n_frames)[:, None, None] * 0.3)
    plain = SpeciesMSD(trajectory_universe(tiny_traj).atoms, remove_com=True).run().results
    moved = SpeciesMSD(trajectory_universe(drifted).atoms, remove_com=True).run().results
    assert np.allclose(plain.msd["Li"], moved.msd["Li"], atol=1e-4)
    assert moved.com_drift[-1] == pytest.approx(0.3 * np.sqrt(3) * (tiny_traj.n_frames - 1), rel=1e-3)


def test_diffusivity_of_a_known_line_and_fft_msd_of_a_ballistic_walk():
    t = np.linspace(0, 10, 101)
    assert diffusivity(t, 6 * 0.37 * t + 2.0) == pytest.approx(0.37, rel=1e-12)
    with pytest.raises(ObservableError, match="fit_range"):
        diffusivity(t, t, (0.9, 0.1))
    v = np.array([[1.0, 2.0, 2.0]])  # |v| = 3: MSD(m) = 9 m^2 exactly
    pos = np.arange(6)[:, None, None] * v[None]
    assert np.allclose(msd_fft(pos), 9.0 * np.arange(6) ** 2)


def test_species_rdf_equals_mdanalysis_interrdf(tiny_traj):
    from MDAnalysis.analysis.rdf import InterRDF

    u = trajectory_universe(tiny_traj)
    rdf = SpeciesRDF(u.atoms, r_max=5.5, nbins=40).run()
    for a, b in rdf.pairs:
        kw = {"exclusion_block": (1, 1)} if a == b else {}
        ref = InterRDF(u.select_atoms(f"type {a}"), u.select_atoms(f"type {b}"), nbins=40, range=(0, 5.5), **kw).run()
        assert np.allclose(rdf.results.rdf[f"{a}-{b}"], ref.results.rdf, rtol=1e-10, atol=1e-12), (a, b)
    with pytest.raises(ObservableError, match="half the shortest cell width"):
        SpeciesRDF(u.atoms, r_max=7.0).run()


def test_rdf_jsd_is_zero_with_itself_and_positive_when_perturbed(tiny_traj):
    u = trajectory_universe(tiny_traj)
    rng = np.random.default_rng(0)
    shaken = replace(tiny_traj, positions=tiny_traj.positions + rng.normal(0, 0.25, tiny_traj.positions.shape))
    g = SpeciesRDF(u.atoms, r_max=5.5, nbins=40).run().results
    g2 = SpeciesRDF(trajectory_universe(shaken).atoms, r_max=5.5, nbins=40).run().results
    for name in g.rdf:
        assert rdf_jsd(g.bins, g.rdf[name], g.rdf[name]) == 0.0
    assert rdf_jsd(g.bins, g.rdf["Fw-Fw"], g2.rdf["Fw-Fw"]) > 0.01  # a smeared crystal is visibly different
    # p = g r^2 normalised: two shells of equal g but different r weigh as r^2 (JSD of known distributions)
    r = np.array([1.0, 2.0])
    p, q = np.array([0.8, 0.2]), np.array([0.2, 0.8])
    expected = 0.5 * sum(a * np.log(a / m) for a, m in zip(p, (p + q) / 2)) + \
        0.5 * sum(b * np.log(b / m) for b, m in zip(q, (p + q) / 2))
    assert rdf_jsd(r, p / r ** 2, q / r ** 2) == pytest.approx(expected, rel=1e-12)


def test_closest_approach_equals_brute_force_minimum_image_distances(tiny_traj):
    from MDAnalysis.lib.distances import distance_array

    u = trajectory_universe(tiny_traj)
    got = ClosestApproach(u.atoms, cutoff=5.5).run().results.min_distance
    sp = np.array(tiny_traj.species)
    assert len(got) == 3  # Fw-Fw, Fw-Li, Li-Li
    for f, ts in enumerate(u.trajectory):
        d = distance_array(ts.positions, ts.positions, box=ts.dimensions)
        np.fill_diagonal(d, np.inf)
        for name, dmin in got.items():
            a, b = name.split("-")
            assert dmin[f] == pytest.approx(d[np.ix_(sp == a, sp == b)].min(), abs=1e-5)
    assert 1.0 < min(v.min() for v in got.values()) < 3.0  # a real crystal's nearest neighbours


def test_closest_approach_counts_learned_frames_closer_than_the_reference(tiny_traj):
    same = compare(tiny_traj, tiny_traj, mobile=["Li"], r_max=5.5, nbins=40)["closest_approach"]
    assert same["frames_below_reference"] == 0.0
    # push one Li onto its nearest framework atom (0.5 Å away) in frames 4 and 7 only
    sp = np.array(tiny_traj.species)
    li, fw = np.flatnonzero(sp == "Li")[0], np.flatnonzero(sp == "Fw")
    squeezed = tiny_traj.positions.copy()
    for f in (4, 7):
        x = squeezed[f]
        box = np.diag(tiny_traj.boxes[f])
        dv = x[fw] - x[li]
        dv -= box * np.round(dv / box)
        near = fw[np.argmin((dv ** 2).sum(1))]
        v = (x[near] - x[li]) - box * np.round((x[near] - x[li]) / box)
        x[li] = x[near] - 0.5 * v / np.linalg.norm(v)
    bad = compare(tiny_traj, replace(tiny_traj, positions=squeezed), mobile=["Li"], r_max=5.5, nbins=40)
    ca = bad["closest_approach"]
    n = tiny_traj.n_frames - 1
    assert ca["frames_below_reference"] == pytest.approx(2 / n)
    pair = "Li-Fw" if "Li-Fw" in ca["pairs"] else "Fw-Li"
    assert ca["pairs"][pair]["learned_min"] == pytest.approx(0.5, abs=1e-5)
    assert ca["pairs"][pair]["ref_min"] > 1.0 and ca["pairs"][pair]["frames_below_reference"] == pytest.approx(2 / n)


def test_radius_of_gyration_equals_mdanalysis(tiny_traj):
    sub = replace(tiny_traj, positions=tiny_traj.positions[:, :12], species=tiny_traj.species[:12],
                  masses=np.linspace(1.0, 3.0, 12))
    bonds = [(0, 1), (1, 2), (2, 3), (5, 6), (6, 7), (7, 8), (8, 9)]  # chains of 4 and 5; 4, 10, 11 alone
    u = trajectory_universe(sub, bonds=bonds)
    rg = RadiusOfGyration(u.atoms).run()
    assert [len(c) for c in rg.results.chains] == [4, 5]
    for k, frag in enumerate(f for f in u.atoms.fragments if len(f) > 1):
        ref = [frag.radius_of_gyration() for _ in u.trajectory]
        assert np.allclose(rg.results.timeseries[:, k], ref, rtol=1e-5)
    with pytest.raises(ObservableError, match="no chains"):
        RadiusOfGyration(trajectory_universe(sub, bonds=[]).atoms, chains=[])


def test_spearman_and_median_relative_error_on_known_inputs():
    # no ties: rho = 1 - 6 sum d^2 / (n (n^2 - 1)) = 1 - 6 * 4 / 120 = 0.8
    assert spearman([1, 2, 3, 4, 5], [2, 1, 4, 3, 5]) == pytest.approx(0.8)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert np.isnan(spearman([1, 2], [1, 2]))
    assert median_relative_error([1.1, 0.5, 2.0], [1.0, 1.0, 1.0]) == pytest.approx(0.5)
    assert median_relative_error([2.0, 3.0], [0.0, 2.0]) == pytest.approx(0.5)  # ref 0 is left out
    # 2x too fast and 2x too slow weigh alike: log10 2 each; a zero or NaN pair is left out
    assert mean_abs_log10_ratio([2.0, 0.5, 0.0, np.nan], [1.0, 1.0, 1.0, 1.0]) == pytest.approx(np.log10(2.0))
    assert mean_abs_log10_ratio([1.0, 10.0], [1.0, 1.0]) == pytest.approx(0.5)
    assert np.isnan(mean_abs_log10_ratio([0.0], [1.0]))


def test_compare_a_trajectory_with_itself_and_with_fewer_atoms(tiny_traj):
    same = compare(tiny_traj, tiny_traj, mobile=["Li"], r_max=5.5, nbins=40)
    li = same["species"]["Li"]
    assert li["relative_error"] == 0.0 and li["msd_ref"] > 1.0
    assert same["rdf"]["jsd_max"] == 0.0 and same["nonfinite_frames"] == 0
    nan = replace(tiny_traj, positions=tiny_traj.positions.copy())
    nan.positions[15:, 3] = np.nan
    assert compare(tiny_traj, nan, mobile=["Li"], r_max=5.5, nbins=40)["first_nonfinite_frame"] == 15
    fewer = replace(tiny_traj, positions=tiny_traj.positions[:, :-1], species=tiny_traj.species[:-1],
                    masses=tiny_traj.masses[:-1])
    with pytest.raises(EvaluationError, match="lost atoms"):
        compare(tiny_traj, fewer, mobile=["Li"])


def test_noise_floor_compares_the_halves_at_the_lag_the_evaluation_reads(tiny_traj):
    def msd_numpy(x: np.ndarray, masses: np.ndarray, sel: np.ndarray, k: int) -> float:
        com = (x * masses[None, :, None]).sum(1) / masses.sum()
        y = (x - com[:, None])[:, sel]
        return float(np.mean(np.sum((y[k:] - y[:-k]) ** 2, axis=-1)))

    n, dt = tiny_traj.n_frames, float(tiny_traj.times[1] - tiny_traj.times[0])
    h = n // 2
    li = np.asarray(tiny_traj.species) == "Li"
    for fraction in (0.25, 1.0):
        k = min(int(np.floor(fraction * (n - 1) + 1e-6)), h)  # the evaluation's lag, at most a half's length
        a = msd_numpy(tiny_traj.positions[: h + 1], tiny_traj.masses, li, k)
        b = msd_numpy(tiny_traj.positions[h: 2 * h + 1], tiny_traj.masses, li, k)
        nf = noise_floor(tiny_traj, mobile=["Li"], r_max=5.5, nbins=40, fit_range=(0.2, 0.8), lag_fraction=fraction)
        assert nf["t_compare"] == pytest.approx(k * dt, rel=1e-9)
        assert nf["relative_msd_difference"]["Li"] == pytest.approx(abs(b - a) / a, rel=1e-5)
    short = noise_floor(tiny_traj, mobile=["Li"], r_max=5.5, nbins=40, fit_range=(0.2, 0.8), lag_fraction=0.25)
    full = noise_floor(tiny_traj, mobile=["Li"], r_max=5.5, nbins=40, fit_range=(0.2, 0.8))
    assert short["t_compare"] < full["t_compare"]  # the lag follows the evaluation's, not always the half's end


def test_evaluate_cli_on_an_independent_tiny_run(tiny_case, tmp_path):
    """Reference vs an independent LAMMPS run of the same case (another seed), through the CLI."""
    from engine_plugins.cli import main
    from engine_plugins.data.simulate import TRANSPORT_PRESETS, simulate_transport

    other = tmp_path / "other"
    simulate_transport(other, materials=[TRANSPORT_MATERIAL], temperatures=[TRANSPORT_T],
                       settings=replace(TRANSPORT_PRESETS["tiny"], seed=7), progress=False)
    out = tmp_path / "eval"
    rc = main(["evaluate", str(tiny_case.topology.parent), "--rollouts", str(other), "--output", str(out),
               "--r-max", "5.5", "--nbins", "40", "--no-progress"])
    assert rc == 0
    report = json.loads((out / "evaluation.json").read_text())
    case = report["cases"][tiny_case.case_id]
    li = case["species"]["Li"]
    assert li["mobile"] and li["msd_ref"] > 1.0 and li["msd_learned"] > 1.0
    assert 0.0 < case["rdf"]["jsd_mean"] < 0.05  # same physics, different noise
    assert case["rollout"]["n_jumps"] == 20 and case["nonfinite_frames"] == 0 and case["lost_atoms"] == 0
    assert report["aggregate"]["per_species"]["Li"]["cases"] == 1
    text = (out / "summary.md").read_text()
    assert "Jensen-Shannon" in text and tiny_case.case_id in text
    # the shortest distance of each species pair, as in evaluation.json
    pairs = case["closest_approach"]["pairs"]
    # the RDF JSD of each pair, as in evaluation.json, whose mean is the case's figure
    jsd = {p: v["jsd"] for p, v in case["rdf"]["pairs"].items()}
    assert case["rdf"]["jsd_mean"] == pytest.approx(np.mean(list(jsd.values())))
    assert f"| {tiny_case.case_id} | {TRANSPORT_T:g} | " + " | ".join(f"{jsd[p]:.4f}" for p in jsd) + " |" in text
    assert "## Shortest distance per species pair" in text and set(pairs) == {"Fw-Fw", "Fw-Li", "Li-Li"}
    for pair, c in pairs.items():
        assert f"| {tiny_case.case_id} | {pair} | {c['ref_min']:.3f} | {c['learned_min']:.3f} |" in text
    for png in ("msd_curves.png", "msd_parity.png", "rdf_overlays.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_evaluate_runs_standalone_rollouts_of_a_propagator(tiny_case, tmp_path):
    """A real propagator artifact (closed-form field) rolled out by the standalone sampler: jumps
    cover the reference, frame 0 is the reference's first frame, the DCD is what the sampler made."""
    from engine_plugins.methods.propagator.sampler import propagate

    model = _propagator_stub(tmp_path, delta_tau=0.1, temperature_range=(300.0, 900.0),
                             split={"train": ["other"], "test": [tiny_case.case_id]})
    out = tmp_path / "eval"
    with pytest.warns(UserWarning, match="outside the model's training range"):
        report = evaluate([tiny_case.topology.parent.parent], model=str(model), engine="standalone", output=out,
                          seed=3, progress=False, r_max=5.5, nbins=40, split="test")
    assert list(report["cases"]) == [tiny_case.case_id]
    case = report["cases"][tiny_case.case_id]
    assert case["rollout"]["n_jumps"] == 10 and case["frames_learned"] == 11  # 1 ps / 0.1 ps
    assert case["nonfinite_frames"] == 0 and case["com_drift_learned"] < 1e-4
    assert case["rollout"]["retries"] == 0
    assert "- redraws (NaN or a displacement over the model's bound, drawn again): 0 in 10 jumps" in \
        (out / "summary.md").read_text()
    ref = read_reference(tiny_case)
    direct = propagate(model, ref.positions[0], ref.species, ref.boxes[0], tiny_case.temperature, n_jumps=10, seed=3,
                       progress=False)
    written = load_cases(out / "rollouts" / "standalone" / tiny_case.case_id)[0].read(unwrap="none")
    assert np.abs(written.positions - direct.positions).max() < 1e-3  # float32 DCD of the same rollout
    assert case["species"]["Li"]["msd_learned"] == pytest.approx(
        SpeciesMSD(trajectory_universe(written).atoms, remove_com=True).run().results.msd["Li"][-1], rel=1e-9)


@pytest.mark.parametrize("prior_scale", [None, {"Li": 3.0}])
def test_openmm_and_lammps_rollouts_equal_the_standalone_sampler(tiny_case, tmp_path, lammps_plugin, prior_scale):
    """The engine adapters of the rollout interface give the sampler's rollout (one noise-step
    convention in every engine), read back through each engine's trajectory file and unwrapping;
    a prior_scale option (the adaptive pick) reaches every engine."""
    from engine_plugins.analysis.rollout import run
    from engine_plugins.methods.propagator.sampler import propagate

    model = _propagator_stub(tmp_path, delta_tau=0.1)
    ref = read_reference(tiny_case)
    n = 4
    for engine in ("openmm", "lammps"):
        ro = run(engine, model, tiny_case, n, seed=5, out_dir=tmp_path / "ro", progress=False, reference=ref,
                 prior_scale=prior_scale)
        got = ro.read()
        direct = propagate(model, ref.positions[0], ref.species, ref.boxes[0], tiny_case.temperature, n_jumps=n,
                           seed=5, progress=False, prior_scale=prior_scale)
        assert got.n_frames == n + 1 and got.species == ref.species
        # OpenMM: float32 DCD; LAMMPS: %.10g dump + image flags, start frame wrapped into the cell
        assert np.abs(got.positions - got.positions[0] - (direct.positions - direct.positions[0])).max() < 1e-3, engine
        shift = (got.positions[0] - ref.positions[0]) / np.diag(ref.boxes[0])
        assert np.abs(shift - np.round(shift)).max() < 1e-6, engine  # the same start, up to whole cells


def test_a_failed_rollout_keeps_its_frames_in_every_engine(tiny_case, tmp_path, lammps_plugin):
    """A jump that fails every redraw stops the run at the same jump in all three engines (one noise
    stream), and each keeps the frames made before it as a readable rollout equal to the sampler's;
    evaluate reports the failure with how far the run got instead of losing the case (or crashing)."""
    from engine_plugins.analysis.rollout import RolloutFailedError, run
    from engine_plugins.methods.propagator.sampler import propagate

    # seed 0: the stub's jumps move some atom 4.18, 3.61, 4.78 Å, so a bound of 4.5 Å with one draw
    # per jump fails jump 3 (the sampler's own run below checks this)
    model = _propagator_stub(tmp_path, delta_tau=0.1, max_displacement=4.5, max_attempts=1)
    ref = read_reference(tiny_case)
    free = propagate(_propagator_stub(tmp_path / "free", delta_tau=0.1), ref.positions[0], ref.species,
                     ref.boxes[0], tiny_case.temperature, n_jumps=3, seed=0, progress=False)
    longest = np.sqrt((np.diff(free.positions, axis=0) ** 2).sum(-1)).max(1)
    assert (longest[:2] < 4.4).all() and longest[2] > 4.6
    for engine in ("standalone", "openmm", "lammps"):
        with pytest.raises(RolloutFailedError, match=r"stopped after 2 of 6 jumps.*(failed all 1 attempts|all 1 attempt)"
                           ) as info:
            run(engine, model, tiny_case, 6, seed=0, out_dir=tmp_path / "ro", progress=False, reference=ref)
        kept = load_cases(info.value.directory)[0].read(unwrap="none" if engine != "lammps" else "images")
        assert kept.n_frames == 3, engine
        moved = kept.positions - kept.positions[0]
        assert np.abs(moved - (free.positions - free.positions[0])[:3]).max() < 1e-3, engine
    with pytest.raises(EvaluationError, match=r"every rollout failed: .*stopped after 2 of 6 jumps; frames 0..2 are kept"):
        evaluate([tiny_case.topology.parent], model=str(model), engine="openmm", output=tmp_path / "ev",
                 progress=False, jumps=6, seed=0, r_max=5.5)


def test_adaptive_prior_is_measured_per_case_and_reaches_the_rollout(tiny_case, tmp_path, capsys):
    """--adaptive-prior PS: the pick is the choice whose MB width is nearest (log) to the rms
    displacement per component over delta_tau in the first PS ps of the reference (computed here by
    hand), the rollout runs with it, and the report and `engine-plugins adaptive-prior` say so."""
    from engine_plugins.cli import main
    from engine_plugins.methods.propagator.prior import KB_EV_PER_K
    from engine_plugins.methods.propagator.sampler import propagate

    choices = [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0]
    model = _propagator_stub(tmp_path, delta_tau=0.1, temperature_range=(300.0, 900.0),
                             adaptive={"choices": {"Li": choices}})
    ref = read_reference(tiny_case)
    dt = float(ref.times[1] - ref.times[0])
    lag, n = int(round(0.1 / dt)), int(round(0.5 / dt)) + 1
    li = np.array([s == "Li" for s in ref.species])
    d = ref.positions[lag:n, li] - ref.positions[:n - lag, li]
    rms = np.sqrt(np.mean(d ** 2))
    width = np.sqrt(KB_EV_PER_K * tiny_case.temperature / 6.94)
    expected = min(choices, key=lambda c: abs(np.log(c * width / rms)))
    with pytest.warns(UserWarning, match="outside the model's training range"):
        report = evaluate([tiny_case.topology.parent], model=str(model), engine="standalone", output=tmp_path / "e",
                          seed=3, progress=False, r_max=5.5, nbins=40, adaptive_prior=0.5)
    case = report["cases"][tiny_case.case_id]
    assert case["rollout"]["prior_scale"] == {"Li": expected} and report["settings"]["adaptive_prior_ps"] == 0.5
    assert "adaptive pick, measured on the first 0.5 ps" in (tmp_path / "e" / "summary.md").read_text()
    written = load_cases(tmp_path / "e" / "rollouts" / "standalone" / tiny_case.case_id)[0].read(unwrap="none")
    kw = dict(n_jumps=10, seed=3, progress=False)
    picked = propagate(model, ref.positions[0], ref.species, ref.boxes[0], tiny_case.temperature,
                       prior_scale={"Li": expected}, **kw)
    default = propagate(model, ref.positions[0], ref.species, ref.boxes[0], tiny_case.temperature, **kw)
    assert np.abs(written.positions - picked.positions).max() < 1e-3
    assert np.abs(written.positions - default.positions).max() > 1e-2
    value = round(min(max(rms / width, choices[0]), choices[-1]), 4)  # the rule's value before rounding
    assert main(["adaptive-prior", str(model), str(tiny_case.topology.parent), "--reference-ps", "0.5"]) == 0
    out = capsys.readouterr().out
    assert f"prior_scale Li {expected:g}" in out and f"before rounding to a choice: {{'Li': {value}}}" in out
    # a model whose rule is continuous: the rollout runs with the rule's value itself
    (tmp_path / "cont").mkdir()
    smooth = _propagator_stub(tmp_path / "cont", delta_tau=0.1, temperature_range=(300.0, 900.0),
                              adaptive={"choices": {"Li": choices}, "continuous": True})
    with pytest.warns(UserWarning, match="outside the model's training range"):
        report = evaluate([tiny_case.topology.parent], model=str(smooth), engine="standalone",
                          output=tmp_path / "e2", seed=3, progress=False, r_max=5.5, nbins=40, adaptive_prior=0.5)
    assert value != expected and report["cases"][tiny_case.case_id]["rollout"]["prior_scale"] == {"Li": value}
    assert main(["adaptive-prior", str(smooth), str(tiny_case.topology.parent), "--reference-ps", "0.5"]) == 0
    out = capsys.readouterr().out
    assert f"prior_scale Li {value:g}" in out and "before rounding" not in out
    # `adaptive-rule` switches the rounding of a trained model (same weights), both ways
    from engine_plugins.export.artifact import read_metadata

    switched = tmp_path / "switched.pt"
    assert main(["adaptive-rule", str(model), "--continuous", "on", "--output", str(switched)]) == 0
    assert "continuous = True" in capsys.readouterr().out
    meta = read_metadata(switched)
    assert meta.role_fields["prior"]["adaptive"]["continuous"] is True and "itself" in \
        meta.role_fields["prior"]["adaptive"]["rule"]
    assert meta.role_fields["prior"]["adaptive"]["choices"] == {"Li": choices}
    assert meta.content_hash != read_metadata(model).content_hash
    assert measure_case_prior(switched, tiny_case, 0.5) == {"Li": value}
    assert main(["adaptive-rule", str(switched), "--continuous", "off", "--output", str(tmp_path / "back.pt")]) == 0
    assert measure_case_prior(tmp_path / "back.pt", tiny_case, 0.5) == {"Li": expected}
    # ... and sets the rule's factor and exponent (e.g. refitted on training cases), keeping the rounding
    refit = tmp_path / "refit.pt"
    assert main(["adaptive-rule", str(switched), "--width-factor", "2", "--width-exponent", "0.5", "--output",
                 str(refit)]) == 0
    assert "width_factor = 2, width_exponent = 0.5" in capsys.readouterr().out
    adaptive = read_metadata(refit).role_fields["prior"]["adaptive"]
    assert adaptive["continuous"] is True and (adaptive["width_factor"], adaptive["width_exponent"]) == (2.0, 0.5)
    assert measure_case_prior(refit, tiny_case, 0.5) == {"Li": round(min(max(2 * (rms / width) ** 0.5, choices[0]),
                                                                             choices[-1]), 4)}
    for bad, says in ((["--width-factor", "-1"], "width_factor must be a finite number > 0"),
                      (["--width-exponent", "nan"], "width_exponent must be a finite number > 0"),
                      ([], "nothing to change")):
        assert main(["adaptive-rule", str(switched), *bad, "--output", str(tmp_path / "bad.pt")]) == 2
        assert says in capsys.readouterr().err and not (tmp_path / "bad.pt").exists()
    (tmp_path / "fixed2").mkdir()
    assert main(["adaptive-rule", str(_propagator_stub(tmp_path / "fixed2")), "--continuous", "on", "--output",
                 str(tmp_path / "x.pt")]) == 2
    assert "prior is not adaptive" in capsys.readouterr().err and not (tmp_path / "x.pt").exists()
    # a model without an adaptive prior, and a window shorter than delta_tau, are clear errors
    (tmp_path / "fixed").mkdir()
    assert main(["adaptive-prior", str(_propagator_stub(tmp_path / "fixed")), str(tiny_case.topology.parent)]) == 2
    assert "prior is not adaptive" in capsys.readouterr().err
    assert main(["adaptive-prior", str(model), str(tiny_case.topology.parent), "--reference-ps", "0.05"]) == 2
    assert "is not longer than delta_tau" in capsys.readouterr().err
    assert main(["adaptive-prior", str(REPO / "exported_models" / "lj_argon.pt"), str(tiny_case.topology.parent)]) == 2
    assert "role 'pseudo_force' has no adaptive prior" in capsys.readouterr().err
    assert main(["evaluate", str(tiny_case.topology.parent), "--model", str(model), "--prior-scale", "Li"]) == 2
    assert "--prior-scale 'Li': expected TYPE=SCALE" in capsys.readouterr().err


def test_bad_inputs(tiny_case, tmp_path, capsys):
    from engine_plugins.cli import main

    assert main(["evaluate", str(tmp_path / "missing"), "--model", str(REPO / "exported_models" / "lj_argon.pt")]) == 2
    assert "does not exist" in capsys.readouterr().err
    case_dir = str(tiny_case.topology.parent)
    assert main(["evaluate", case_dir, "--model", str(REPO / "exported_models" / "lj_argon.pt"),
                 "--output", str(tmp_path / "e")]) == 2
    err = capsys.readouterr().err
    assert "'pseudo_force' artifact" in err and "'propagator'" in err
    with pytest.raises(RolloutError, match="corrector"):
        check_roles(_propagator_stub(tmp_path), REPO / "exported_models" / "lj_argon.pt")
    with pytest.raises(RolloutError, match="not among the model's type names"):
        rollout_start(tiny_case, ["Ar"])
    with pytest.raises(EvaluationError, match="records no provenance.split"):
        evaluate([case_dir], model=str(_propagator_stub(tmp_path)), output=tmp_path / "x", progress=False, split="test")
    with pytest.raises(EvaluationError, match="--model"):
        evaluate([case_dir], output=tmp_path / "x", progress=False)
    with pytest.raises(EvaluationError, match="set the prior of new rollouts"):
        evaluate([case_dir], rollouts=tmp_path, output=tmp_path / "x", progress=False, adaptive_prior=10.0)



def _case_copy(src: Path, dest: Path, case_id: str) -> Path:
    """The reference case ``src`` copied to ``dest`` under another case id (its paths are relative)."""
    import shutil

    shutil.copytree(src, dest)
    meta = json.loads((dest / "case.json").read_text())
    (dest / "case.json").write_text(json.dumps({**meta, "case_id": case_id}))
    return dest


def test_rollouts_pooled_from_several_folders_and_a_case_found_twice_is_an_error(tiny_case, tmp_path):
    """``--rollouts X Y``: each case's rollout is taken from the one folder that holds it (here the
    reference itself, so the MSD error is exactly 0); the same case in two folders is refused, not
    silently taken from the first."""
    from engine_plugins.cli import main

    src = tiny_case.topology.parent
    refs = [_case_copy(src, tmp_path / "refs" / cid, cid) for cid in ("caseA", "caseB")]
    x = tmp_path / "x" / "rollouts" / "standalone"  # the layout evaluate writes
    _case_copy(src, x / "caseA", "caseA")
    y = tmp_path / "y"
    _case_copy(src, y / "caseB", "caseB")
    out = tmp_path / "pool"
    rc = main(["evaluate", *map(str, refs), "--rollouts", str(tmp_path / "x"), str(y), "--output", str(out),
               "--r-max", "5.5", "--nbins", "40", "--no-progress"])
    assert rc == 0
    report = json.loads((out / "evaluation.json").read_text())
    assert set(report["cases"]) == {"caseA", "caseB"}
    assert report["cases"]["caseA"]["rollout"]["case_json"] == str(x / "caseA" / "case.json")
    assert report["cases"]["caseB"]["rollout"]["case_json"] == str(y / "caseB" / "case.json")
    for case in report["cases"].values():
        assert case["species"]["Li"]["relative_error"] == 0.0 and case["rdf"]["jsd_mean"] == pytest.approx(0.0, abs=1e-12)
    _case_copy(src, y / "again" / "caseA", "caseA")
    with pytest.raises(EvaluationError, match=r"case caseA has 2 rollouts: .*x/rollouts/standalone/caseA.*y/again/caseA"):
        evaluate([str(refs[0])], rollouts=[tmp_path / "x", y], output=tmp_path / "e", progress=False)
    with pytest.raises(EvaluationError, match="--rollouts folder .*nowhere does not exist"):
        evaluate([str(refs[0])], rollouts=[y, tmp_path / "nowhere"], output=tmp_path / "e", progress=False)
    with pytest.raises(EvaluationError, match="names no folder"):
        evaluate([str(refs[0])], rollouts=[], output=tmp_path / "e", progress=False)
    with pytest.raises(EvaluationError, match="no rollout for case caseA"):
        evaluate([str(refs[0])], rollouts=[tmp_path / "refs" / "caseB"], output=tmp_path / "e", progress=False)

def _propagator_stub(tmp_path: Path, delta_tau: float = 0.1, temperature_range=(600.0, 1200.0),
                     split: dict | None = None, adaptive: dict | None = None, **role_fields) -> Path:
    """A real propagator artifact (the closed-form test vector field of the contract)."""
    import torch

    from engine_plugins.export.artifact import export_artifact
    from engine_plugins.export.metadata import ArtifactMetadata
    from engine_plugins.methods.propagator.analytic import PairRelaxPropagator

    meta = ArtifactMetadata(role="propagator", method="pair_relax", type_names=["Fw", "Li"], cutoff=4.0,
                            num_message_passing_layers=2, units={"length": "angstrom", "energy": "eV", "time": "ps"},
                            role_fields={"delta_tau": delta_tau, "temperature_range": list(temperature_range), "flow_steps": 2,
                                         "solver": "euler", "prior": {"kind": "maxwell_boltzmann",
                                                                      "scale": {"Fw": 1.0, "Li": 1.0},
                                                                      "mass": {"Fw": 100.0, "Li": 6.94},
                                                                      **({"adaptive": adaptive} if adaptive else {})},
                                         **role_fields},
                            provenance={"split": split} if split else {})
    return export_artifact(torch.jit.script(PairRelaxPropagator()), meta, tmp_path / f"prop_{delta_tau:g}.pt")


def test_contact_command_measures_the_training_runs_and_every_engine_redraws_alike(tiny_case, tmp_path,
                                                                                   lammps_plugin, capsys):
    """`engine-plugins contact`: the shortest distance per species pair over the model's train cases
    (against numpy minimum-image distances), written into a copy of the artifact; its contact redraw
    then runs alike in the standalone sampler, OpenMM and LAMMPS."""
    from engine_plugins.analysis.rollout import run
    from engine_plugins.cli import main
    from engine_plugins.export.artifact import read_metadata
    from engine_plugins.methods.propagator.sampler import propagate

    model = _propagator_stub(tmp_path, split={"train": [tiny_case.case_id], "test": ["other"]})
    out = tmp_path / "with_contact.pt"
    assert main(["contact", str(model), str(tiny_case.topology.parent), "--output", str(out), "--every", "1",
                 "--fraction", "1.2", "--rounds", "2"]) == 0
    contact = read_metadata(out).role_fields["contact"]
    ref = read_reference(tiny_case)
    sp = np.array(ref.species)
    expected: dict[str, float] = {}
    for x, box in zip(ref.positions, ref.boxes):
        length = np.diag(box)
        d = x[:, None] - x[None]
        d = np.linalg.norm(d - length * np.round(d / length), axis=-1)
        np.fill_diagonal(d, np.inf)
        for a, b in (("Fw", "Fw"), ("Fw", "Li"), ("Li", "Li")):
            key = f"{a}-{b}"
            expected[key] = min(expected.get(key, np.inf), d[np.ix_(sp == a, sp == b)].min())
    assert set(contact["min_distance"]) == set(expected) and contact["rounds"] == 2
    for key, value in expected.items():
        assert contact["min_distance"][key] == pytest.approx(1.2 * value, abs=1e-3)
    # 1.2 x the reference's own shortest distances: the crystal has contacts, so every jump redraws
    direct = propagate(out, ref.positions[0], ref.species, ref.boxes[0], tiny_case.temperature, n_jumps=3, seed=5,
                       progress=False)
    assert direct.contact["contact_rounds"] >= 3
    plain = propagate(model, ref.positions[0], ref.species, ref.boxes[0], tiny_case.temperature, n_jumps=3, seed=5,
                      progress=False)
    assert np.abs(plain.positions - direct.positions).max() > 1e-3
    for engine in ("openmm", "lammps"):
        ro = run(engine, out, tiny_case, 3, seed=5, out_dir=tmp_path / "ro", progress=False, reference=ref)
        got = ro.read()
        assert np.abs(got.positions - got.positions[0] - (direct.positions - direct.positions[0])).max() < 1e-3, engine
    assert ro.info["contact_rounds"] == direct.contact["contact_rounds"]   # LAMMPS's f_prop[6] in thermo
    assert ro.info["contact_left"] == direct.contact["contact_left"]
    # a model that records no split needs --split all
    bare = _propagator_stub(tmp_path, delta_tau=0.2)
    assert main(["contact", str(bare), str(tiny_case.topology.parent), "--output", str(tmp_path / "x.pt")]) == 2
    assert "records no provenance.split" in capsys.readouterr().err


def test_contact_distances_of_a_cg_case_are_between_beads():
    """A CG case (all-atom OpenMM water, residue mapping) is measured as the model sees it: between the
    bead centres (numpy minimum image over the mapped reference), not between atoms (O-H ~1 Å)."""
    from _md_runs import water_run
    from engine_plugins.methods.propagator.contact import measure_min_distances

    case = load_cases(water_run())[0]
    ref = read_reference(case)
    assert set(ref.species) == {"HOH"}
    got = measure_min_distances([case], every=1)
    expected = np.inf
    for x, box in zip(ref.positions, ref.boxes):
        length = np.diag(box)
        d = x[:, None] - x[None]
        d = np.linalg.norm(d - length * np.round(d / length), axis=-1)
        np.fill_diagonal(d, np.inf)
        expected = min(expected, d.min())
    assert list(got) == ["HOH-HOH"] and got["HOH-HOH"] == pytest.approx(expected, abs=1e-3)
    assert got["HOH-HOH"] > 2.0


def test_compare_engines_reports_the_largest_case_difference_beside_the_median():
    """Engines that agree on three cases and differ by 10 % on a fourth (trajectories that part
    after many jumps): the median says 0, the max must say 10 %."""
    def report(msds):
        return {"cases": {f"c{i}": {"species": {"Li": {"msd_learned": m}}} for i, m in enumerate(msds)}}
    out = compare_engines({"a": report([1.0, 2.0, 3.0, 4.4]), "b": report([1.0, 2.0, 3.0, 4.0])})["a vs b"]
    assert out["median_relative_msd_difference"]["Li"] == 0.0
    assert out["max_relative_msd_difference"]["Li"] == pytest.approx(0.1)
