"""GPFF generation (issue 4): the engines run the standalone schedule exactly, the generate /
evaluate-gpff / bench generate commands write readable files, and bad inputs give clear errors.

The reference model is the exact quadratic pseudo-force around ethanol (analytic.py): generation
from any start must end at ethanol, so validity is known (100 %) without a trained model."""

from __future__ import annotations

import json

import ase.io
import numpy as np
import pytest
import torch
from ase.build import molecule

from engine_plugins.cli import main as cli_main
from engine_plugins.export import ArtifactMetadata, export_artifact
from engine_plugins.methods.gpff.analytic import script_quadratic
from engine_plugins.methods.gpff.generate import (GenerationError, GenerationTask, check_generated,
                                                  engine_ancestral_noise, engine_coefficients, formula_symbols,
                                                  generate)
from engine_plugins.methods.gpff.noise import rmsd

FORMULA = "C2H6O"


@pytest.fixture(scope="module")
def ethanol_model(tmp_path_factory):
    """Quadratic GPFF model of ethanol, atoms in the order of formula_symbols('C2H6O')."""
    mol = molecule("CH3CH2OH")
    sym = mol.get_chemical_symbols()
    order = sorted(range(len(sym)), key=lambda i: ["C", "H", "O"].index(sym[i]))
    x0 = torch.tensor(mol.positions[order])
    assert [sym[i] for i in order] == formula_symbols(FORMULA)
    meta = ArtifactMetadata(role="pseudo_force", method="gpff_quadratic_reference", type_names=["C", "H", "O"],
                            cutoff=12.0, num_message_passing_layers=1, periodicity="nonperiodic",
                            units={"length": "angstrom", "energy": "eV", "time": "ps"},
                            role_fields={"conservative": True, "sigma_min": 0.05, "sigma_max": 2.0,
                                         "default_sampler": "heun", "default_nfe": 8,
                                         "prior": {"kind": "gaussian", "coord_var_coeff": 0.27}})
    path = export_artifact(script_quadratic(x0), meta, tmp_path_factory.mktemp("gen") / "ethanol.pt",
                           check_role=False)
    return path, formula_symbols(FORMULA), x0


@pytest.mark.parametrize("sampler", ["ancestral", "denoise"])
def test_engines_run_the_standalone_schedule_exactly(lammps_plugin, ethanol_model, sampler):
    path, sym, x0 = ethanol_model
    given = np.full((len(sym), 3), np.nan)
    given[:3] = x0[:3].numpy()
    fixed = np.zeros(len(sym), bool)
    fixed[:3] = True
    tasks = [GenerationTask(sym, name="noise"), GenerationTask(sym, init=given, fixed=fixed, name="scaffold")]
    out = {e: generate(path, tasks, engine=e, sampler=sampler, nfe=12, sigma_start=1.5, eta=0.0, seed=3)
           for e in ("standalone", "openmm", "lammps")}
    for e in ("openmm", "lammps"):
        assert out[e].nfe == 12
        for a, b in zip(out[e].positions, out["standalone"].positions):
            assert np.abs(a - b).max() < 1e-8, e
    std = out["standalone"].positions
    assert np.abs(std[1][:3] - x0[:3].numpy()).max() == 0.0  # the scaffold held exactly
    if sampler == "ancestral":  # the deterministic ODE schedule ends at the clean structure
        assert float(rmsd(torch.tensor(std[0]), x0)) < 1e-6
        summary, _ = check_generated([GenerationTask(sym, source="CCO")], std[:1])
        assert summary["valid"] == 1.0 and summary["valid_and_same_graph"] == 1.0


def test_engine_coefficients_match_the_sigma_ladder():
    c = engine_coefficients("ancestral", 4, 2.0, 0.05, "geometric")
    sig = np.exp(np.linspace(np.log(2.0), np.log(0.05), 4)).tolist() + [0.0]
    assert np.allclose(c, [1 - sig[k + 1] / sig[k] for k in range(4)]) and c[-1] == 1.0
    assert engine_coefficients("denoise", 3, 1.0, 0.05, step=0.4) == [0.4] * 3
    with pytest.raises(GenerationError, match="does not run inside the engines"):
        engine_coefficients("heun", 4, 1.0, 0.05)


def test_stochastic_ancestral_in_openmm_injects_the_ladder_noise(ethanol_model):
    c, up = engine_ancestral_noise(6, 1.5, 0.05, 1.0, "geometric")
    sig = np.exp(np.linspace(np.log(1.5), np.log(0.05), 6)).tolist() + [0.0]
    for k in range(5):  # sigma_down^2 + s_up^2 = sigma_{k+1}^2, sigma_down = (1 - c) sigma_k
        assert abs(((1 - c[k]) * sig[k]) ** 2 + up[k] ** 2 - sig[k + 1] ** 2) < 1e-12 and up[k] > 0
    assert c[-1] == 1.0 and up[-1] == 0.0
    c0, up0 = engine_ancestral_noise(6, 1.5, 0.05, 0.0, "geometric")
    assert np.allclose(c0, engine_coefficients("ancestral", 6, 1.5, 0.05, "geometric")) and not any(up0)
    path, sym, x0 = ethanol_model
    tasks = [GenerationTask(sym, name="noise")]
    a, b = (generate(path, tasks, engine="openmm", sampler="ancestral", nfe=8, sigma_start=1.5, eta=1.0, seed=s)
            for s in (1, 2))
    # the same prior draw (seed 1) without noise
    det = generate(path, tasks, engine="openmm", sampler="ancestral", nfe=8, sigma_start=1.5, eta=0.0, seed=1)
    assert a.info["stochastic"] and not det.info["stochastic"]
    # the exact model ends every path at ethanol, in an orientation set by the path: noise was injected
    for r in (a, b, det):
        assert float(rmsd(torch.tensor(r.positions[0]), x0)) < 1e-5
    assert np.abs(a.positions[0] - det.positions[0]).max() > 1e-3
    with pytest.raises(GenerationError, match="injects noise"):
        generate(path, tasks, engine="lammps", sampler="ancestral", nfe=4, sigma_start=1.5, eta=1.0)


@pytest.mark.parametrize("suffix,engine", [(".xyz", "standalone"), (".sdf", "openmm")])
def test_generate_cli_writes_a_readable_file(tmp_path, ethanol_model, capsys, suffix, engine):
    path, sym, x0 = ethanol_model
    out = tmp_path / f"gen{suffix}"
    sampler = ["--sampler", "heun"] if engine == "standalone" else ["--sampler", "ancestral", "--eta", "0"]
    rc = cli_main(["generate", str(path), "--formula", FORMULA, "--n-samples", "2", "--nfe", "8", *sampler,
                   "--engine", engine, "-o", str(out), "--json", str(tmp_path / "v.json")])
    text = capsys.readouterr().out
    assert rc == 0
    assert "valid (sanitizes, neutral, no radicals, one fragment): 100.0% of 2" in text
    if suffix == ".xyz":
        frames = ase.io.read(str(out), index=":")
        assert len(frames) == 2 and all(f.get_chemical_formula() == "C2H6O" for f in frames)
        assert float(rmsd(torch.tensor(frames[0].positions), x0)) < 1e-6
    else:
        from rdkit import Chem

        mols = [m for m in Chem.SDMolSupplier(str(out), removeHs=False)]
        assert len(mols) == 2 and all(m is not None and m.GetNumAtoms() == 9 for m in mols)
        assert Chem.MolToSmiles(Chem.RemoveHs(mols[0])) == "CCO"
    summary = json.loads((tmp_path / "v.json").read_text())["summary"]
    assert summary["valid"] == 1.0 and summary["n"] == 2


def test_generate_cli_completes_a_scaffold(tmp_path, ethanol_model, capsys):
    path, sym, x0 = ethanol_model
    scaffold = tmp_path / "scaffold.xyz"  # the two carbons given and held; H6O generated around them
    ase.io.write(str(scaffold), ase.Atoms(sym[:2], positions=x0[:2].numpy()), format="xyz")
    out = tmp_path / "done.extxyz"
    rc = cli_main(["generate", str(path), "--structure", str(scaffold), "--fixed", "given", "--add", "H6O",
                   "--sampler", "heun", "--nfe", "16", "--sigma-start", "1.0", "-o", str(out), "--quiet"])
    assert rc == 0, capsys.readouterr().err
    got = ase.io.read(str(out))
    assert got.get_chemical_symbols() == sym
    assert np.abs(got.positions[:2] - x0[:2].numpy()).max() < 1e-12


def _write(path, text):
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("case,match", [
    ("element", "S not known to the model"),
    ("empty", "no atoms|empty"),
    ("overlap", "overlap"),
    ("nan", "NaN|non-finite"),
    ("cell", "periodic cell but the model is non-periodic"),
    ("bad_sampler_for_engine", "does not run inside lammps"),
    ("noise_in_engine", "eta"),
])
def test_generate_bad_inputs_give_clear_errors(tmp_path, ethanol_model, capsys, case, match):
    path, sym, x0 = ethanol_model
    args = ["generate", str(path), "-o", str(tmp_path / "x.xyz")]
    if case == "element":
        args += ["--formula", "C2H6S"]
    elif case == "empty":
        args += ["--structure", _write(tmp_path / "e.xyz", "0\nempty\n")]
    elif case == "overlap":
        args += ["--structure", _write(tmp_path / "o.xyz", "2\n\nC 0 0 0\nO 0.1 0 0\n")]
    elif case == "nan":
        args += ["--structure", _write(tmp_path / "n.xyz", "2\n\nC 0 0 0\nO nan 0 0\n")]
    elif case == "cell":
        args += ["--structure", _write(tmp_path / "c.extxyz", '2\nLattice="8 0 0 0 8 0 0 0 8" Properties=species:S:1:'
                                       'pos:R:3 pbc="T T T"\nC 0 0 0\nO 1.2 0 0\n')]
    elif case == "bad_sampler_for_engine":
        args += ["--formula", FORMULA, "--engine", "lammps", "--sampler", "heun"]
    else:
        args += ["--formula", FORMULA, "--engine", "lammps", "--sampler", "ancestral", "--eta", "1"]
    assert cli_main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("engine-plugins generate: error:")
    assert __import__("re").search(match, err), err


def test_evaluate_and_bench_generate_on_the_exact_model(tmp_path, lammps_plugin, ethanol_model):
    from engine_plugins.bench.generate import bench_generate
    from engine_plugins.methods.gpff.commands import evaluate_validity, markdown_table, plot_validity

    path, sym, x0 = ethanol_model
    tasks = [GenerationTask(sym, source="CCO", name=f"e{k}") for k in range(3)]
    rows = evaluate_validity(path, tasks, ["heun", "denoise"], [6, 16], engines=["standalone", "openmm"],
                             engine_nfes=[6], sigma_start=1.5)
    assert [(r["engine"], r["sampler"], r["nfe"]) for r in rows] == [
        ("standalone", "heun", 6), ("standalone", "heun", 16), ("standalone", "denoise", 6),
        ("standalone", "denoise", 16), ("openmm", "ancestral (eta=0)", 6)]
    by = {(r["engine"], r["sampler"], r["nfe"]): r for r in rows}
    assert by[("standalone", "heun", 6)]["valid"] == 1.0 and by[("openmm", "ancestral (eta=0)", 6)]["valid"] == 1.0
    # denoise halves the residual each step: after 6 steps from sigma 1.5 ethanol is not yet reached
    assert by[("standalone", "denoise", 16)]["valid"] >= by[("standalone", "denoise", 6)]["valid"]
    png = plot_validity(rows, tmp_path / "v.png", "test")
    assert png.stat().st_size > 1000
    assert "| standalone | heun | 100 % (100 %) | 100 % (100 %) |" in markdown_table(rows)
    res = bench_generate(str(path), tasks=tasks, nfe=8, rounds=1, sigma_start=1.5)
    for e in ("standalone", "openmm", "lammps"):
        r = res["engines"][e]
        assert r["molecules_per_s"] > 0 and r["valid"] == 1.0 and r["nfe"] == 8
        assert r["max_abs_dx_vs_standalone_A"] < 1e-8
        per_mol = r["abs_dx_vs_standalone_A_per_molecule"]
        assert len(per_mol) == 3 and max(per_mol) == r["max_abs_dx_vs_standalone_A"]


def test_evaluate_takes_the_denoise_step(lammps_plugin, ethanol_model):
    """With the exact pseudo-force F = x0 - x, one denoise step of 1 lands on the molecule in every engine;
    1/2 only halves the way."""
    from engine_plugins.methods.gpff.commands import evaluate_validity
    from engine_plugins.methods.gpff.noise import rmsd

    path, sym, x0 = ethanol_model
    tasks = [GenerationTask(sym, source="CCO", name=f"e{k}") for k in range(3)]
    full = evaluate_validity(path, tasks, ["denoise"], [1], engines=["standalone", "openmm", "lammps"],
                             engine_samplers=["denoise"], sigma_start=1.5, step=1.0)
    half = evaluate_validity(path, tasks, ["denoise"], [1], sigma_start=1.5, step=0.5)
    assert [(r["engine"], r["valid"]) for r in full] == [("standalone", 1.0), ("openmm", 1.0), ("lammps", 1.0)]
    assert half[0]["valid"] < 1.0
    for engine in ("standalone", "openmm", "lammps"):
        res = generate(path, tasks[:1], engine=engine, sampler="denoise", nfe=1, sigma_start=1.5, step=1.0)
        assert float(rmsd(torch.as_tensor(res.positions[0]), torch.as_tensor(x0))) < 1e-6, engine
    from engine_plugins.bench.generate import bench_generate

    b = bench_generate(str(path), tasks=tasks, nfe=1, rounds=1, sigma_start=1.5, sampler="denoise", step=1.0)
    assert b["denoise_step"] == 1.0 and all(r["valid"] == 1.0 for r in b["engines"].values())


def test_evaluate_renoise_reaches_the_standalone_denoise_rows_only(ethanol_model, monkeypatch):
    """evaluate-gpff --renoise: the standalone denoise sampler re-noises, the engines (which cannot)
    run as before instead of failing, and validity.json records the setting."""
    from pathlib import Path

    from engine_plugins.methods.gpff import commands

    path, sym, x0 = ethanol_model
    tasks = [GenerationTask(sym, source="CCO", name="e0")]
    seen = []
    real = commands.generate

    def spy(*a, **k):
        seen.append((k["engine"], k["renoise"]))
        return real(*a, **k)

    monkeypatch.setattr(commands, "generate", spy)
    rows = commands.evaluate_validity(path, tasks, ["denoise"], [2], engines=["standalone", "openmm"],
                                      engine_samplers=["denoise"], sigma_start=1.5, renoise=0.3)
    assert seen == [("standalone", 0.3), ("openmm", 0.0)]
    assert [r["engine"] for r in rows] == ["standalone", "openmm"]
    # re-noising changes the standalone result (same seed), so the setting is not silently dropped
    a = real(path, tasks, sampler="denoise", nfe=2, sigma_start=1.5, step=0.5, seed=1)
    b = real(path, tasks, sampler="denoise", nfe=2, sigma_start=1.5, step=0.5, seed=1, renoise=0.3)
    assert float(np.abs(a.positions[0] - b.positions[0]).max()) > 1e-3
    monkeypatch.setattr(commands, "dataset_tasks", lambda *a: tasks)
    from engine_plugins.cli import main as cli_main

    out = Path(path).parent / "ev_renoise"
    assert cli_main(["evaluate-gpff", str(path), "--data", "unused", "--samplers", "denoise", "--nfe", "2",
                     "--renoise", "0.3", "--output", str(out)]) == 0
    assert json.loads((out / "validity.json").read_text())["meta"]["denoise_renoise_standalone"] == 0.3


def test_evaluate_from_the_reference_measures_where_the_learned_minimum_is(ethanol_model):
    """--start reference: each sampler starts at the source molecule itself. With the exact ethanol
    pseudo-force, ethanol stays put (valid, same graph, RMSD 0), while dimethyl ether (same formula)
    is pulled onto ethanol: valid, another graph, and the RMSD is the ether-ethanol RMSD computed
    independently. A formula alone has no reference structure: a clear error."""
    from engine_plugins.data.molecules import Structure
    from engine_plugins.methods.gpff.commands import evaluate_validity

    path, sym, x0 = ethanol_model
    ether = molecule("CH3OCH3")
    es = ether.get_chemical_symbols()
    order = sorted(range(len(es)), key=lambda i: ["C", "H", "O"].index(es[i]))
    xe = ether.positions[order]
    tasks = [GenerationTask(sym, source=Structure(sym, x0.numpy().copy(), smiles="CCO"), name="ethanol"),
             GenerationTask(sym, source=Structure(sym, xe.copy(), smiles="COC"), name="ether")]
    rows = evaluate_validity(path, tasks, ["denoise"], [2], step=1.0, start="reference")
    assert rows[0]["start"] == "reference" and rows[0]["valid"] == 1.0
    assert rows[0]["same_graph"] == 0.5  # ethanol kept, the ether became ethanol
    expected = float(rmsd(torch.as_tensor(xe), x0))
    assert expected > 0.5
    assert rows[0]["rmsd_from_reference_max"] == pytest.approx(expected, abs=1e-4)
    assert rows[0]["rmsd_from_reference_median"] == pytest.approx(expected / 2, abs=1e-4)  # median of (0, expected)
    with pytest.raises(GenerationError, match="source molecule's coordinates"):
        evaluate_validity(path, [GenerationTask(sym, source="CCO", name="f")], ["denoise"], [2], start="reference")
    with pytest.raises(GenerationError, match="start 'sideways'"):
        evaluate_validity(path, tasks, ["denoise"], [2], start="sideways")
