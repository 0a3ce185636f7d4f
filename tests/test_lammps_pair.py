"""LAMMPS pair_style ep/torch: exact against lj/cut, 1 rank = 2 ranks = standalone torch for a
2-layer message-passing model, unit factors equal to Python's, and a clear error for every bad input.

1-rank runs use the lammps module in this process; 2-rank runs use ``mpiexec -n 2 lmp``.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from engine_plugins import units as U
from engine_plugins.data.systems import fcc_lattice
from engine_plugins.engines import lammps_backend as lb
from engine_plugins.engines.lammps_build import BUILD_DIR, STAMP_NAME, is_up_to_date
from engine_plugins.export import ArtifactMetadata, export_artifact
from engine_plugins.export.metadata import METADATA_FILE
from engine_plugins.methods.lennard_jones import LennardJones, lennard_jones_metadata
from engine_plugins.nn.forces import local_energy_forces
from engine_plugins.nn.graph import neighbor_graph

pytestmark = pytest.mark.usefixtures("lammps_plugin")

NAMES = ["Ar", "Kr"]
EPS_KCAL = [0.238, 0.32]   # kcal/mol
SIGMA_A = [3.405, 3.6]     # Å
CUTOFF_A = 8.5             # Å
TOL = 1e-10

#: LAMMPS units -> units the LJ model is declared in (a conversion of length and/or energy each)
MODEL_UNITS = {
    "real": {"length": "nm", "energy": "kJ/mol", "time": "ps"},
    "metal": {"length": "angstrom", "energy": "kcal/mol", "time": "fs"},
}


def rel_err(a, b) -> float:
    a, b = np.asarray(a, float), np.asarray(b, float)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


@pytest.fixture(scope="module")
def system():
    """500 atoms of Ar/Kr on a jittered fcc lattice in a periodic 27 Å box."""
    return fcc_lattice(5, a=5.4, jitter=0.1, seed=1, type_names=tuple(NAMES), fractions=(0.7, 0.3))


def lj_model_path(directory: Path, lammps_units: str, dtype: str = "float64") -> Path:
    mu = MODEL_UNITS[lammps_units]
    lf, ef = U.length_factor("angstrom", mu["length"]), U.energy_factor("kcal/mol", mu["energy"])
    model = LennardJones([e * ef for e in EPS_KCAL], [s * lf for s in SIGMA_A], CUTOFF_A * lf,
                         dtype=getattr(torch, dtype))
    meta = lennard_jones_metadata(NAMES, CUTOFF_A * lf, units=dict(mu), periodicity="periodic", dtype=dtype)
    return export_artifact(model, meta, directory / f"lj_{lammps_units}_{dtype}.pt")


def lj_cut_commands(lammps_units: str) -> list[str]:
    """LAMMPS's own lj/cut with the model's parameters and mixing (geometric eps, arithmetic sigma)."""
    ef = U.energy_factor("kcal/mol", "eV" if lammps_units == "metal" else "kcal/mol")
    lines = [f"pair_style lj/cut {CUTOFF_A!r}", "pair_modify shift no"]
    for i in range(len(NAMES)):
        for j in range(i, len(NAMES)):
            eps = math.sqrt(EPS_KCAL[i] * ef * EPS_KCAL[j] * ef)
            lines.append(f"pair_coeff {i + 1} {j + 1} {eps!r} {0.5 * (SIGMA_A[i] + SIGMA_A[j])!r}")
    return lines


def assert_same(result: lb.LammpsResult, ref: lb.LammpsResult, tol: float = TOL) -> None:
    assert rel_err(result.energy, ref.energy) <= tol, (result.energy, ref.energy)
    assert rel_err(result.forces, ref.forces) <= tol
    assert rel_err(result.atom_energy, ref.atom_energy) <= tol
    if np.isfinite(result.pressure).all():
        assert rel_err(result.pressure, ref.pressure) <= tol, (result.pressure, ref.pressure)


def assert_explicit_ghosts(result: lb.LammpsResult, natoms: int) -> None:
    """On a step with virial (run 0 with a pressure compute) ghosts are explicit graph nodes."""
    d = result.diagnostics
    assert d["explicit_evaluations"] >= 1 and d["folded_evaluations"] == 0
    assert d["graph_nodes"] > natoms and d["graph_folded_edges"] == 0


def assert_folded_images(diagnostics: dict, natoms: int, nprocs: int) -> None:
    """On a plain MD step, periodic images of owned atoms are folded onto their owners (on 1 rank
    all ghosts: the graph has exactly the atoms as nodes, like a standalone periodic call)."""
    assert diagnostics["graph_folded_edges"] > 0
    if nprocs == 1:
        assert diagnostics["graph_nodes"] == natoms


NPROCS = pytest.mark.parametrize("nprocs", [1, pytest.param(2, marks=pytest.mark.mpi)])


# ------------------------------------------------------------------------------ LJ vs lj/cut
@pytest.fixture(scope="module")
def lj_cases(system, tmp_path_factory):
    """Per LAMMPS units: the exported model and LAMMPS lj/cut's result (1 rank, in process)."""
    d = tmp_path_factory.mktemp("lj")
    cases = {}
    for units in MODEL_UNITS:
        ref = lb.run_lammps_static(lj_cut_commands(units), system.positions, system.types, system.box,
                                   len(NAMES), units)
        cases[units] = (lj_model_path(d, units), ref)
    return cases


@pytest.mark.parametrize("units", list(MODEL_UNITS))
def test_lj_one_rank_matches_lj_cut(units, system, lj_cases):
    model, ref = lj_cases[units]
    assert abs(ref.energy) > 1.0 and np.abs(ref.pressure).max() > 1.0  # a non-trivial reference
    res = lb.run_lammps_energy_forces(model, system.positions, system.types, system.box, NAMES, units, nprocs=1)
    assert_explicit_ghosts(res, system.n_atoms)
    assert_same(res, ref)


@pytest.mark.mpi
@pytest.mark.parametrize("units", list(MODEL_UNITS))
def test_lj_two_ranks_matches_lj_cut(units, system, lj_cases):
    model, ref = lj_cases[units]
    res = lb.run_lammps_energy_forces(model, system.positions, system.types, system.box, NAMES, units, nprocs=2)
    assert re.search(r"(2 by 1 by 1|1 by 2 by 1|1 by 1 by 2) MPI processor grid", res.log)
    assert_same(res, ref)


@NPROCS
@pytest.mark.parametrize("units", list(MODEL_UNITS))
def test_lj_md_step_with_folded_images_matches_lj_cut(units, nprocs, system, lj_cases):
    model, ref = lj_cases[units]
    forces, diag = lb.run_lammps_step_forces(lb.ep_torch_commands(model, NAMES), system.positions, system.types,
                                             system.box, len(NAMES), units, nprocs)
    assert_folded_images(diag, system.n_atoms, nprocs)
    assert rel_err(forces, ref.forces) <= TOL


def test_float32_model_runs_in_float32(system, lj_cases, tmp_path):
    _, ref = lj_cases["metal"]
    model = lj_model_path(tmp_path, "metal", dtype="float32")
    res = lb.run_lammps_energy_forces(model, system.positions, system.types, system.box, NAMES, "metal")
    err = rel_err(res.forces, ref.forces)
    assert 1e-12 < err < 1e-4  # float32 arithmetic: close, but not float64-exact
    assert rel_err(res.energy, ref.energy) < 1e-4


# ----------------------------------------------------------------------- unit factors C++ = Python
def _resave(src: Path, dst: Path, **changes) -> Path:
    """Copy an artifact with changed metadata fields (no re-export; the plugin does not check hashes)."""
    extra = {METADATA_FILE: ""}
    module = torch.jit.load(str(src), _extra_files=extra)
    meta = json.loads(extra[METADATA_FILE])
    meta.update(changes)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(module, str(dst), _extra_files={METADATA_FILE: json.dumps(meta)})
    return dst


def _box_lines(units: str, ntypes: int = 2, boundary: str = "p p p", newton: str = "on") -> list[str]:
    return [f"units {units}", "atom_style atomic", f"boundary {boundary}", f"newton {newton}",
            "region box block 0 20 0 20 0 20", f"create_box {ntypes} box",
            "create_atoms 1 random 40 12345 NULL overlap 3.0", "create_atoms 2 random 10 54321 NULL overlap 3.0",
            "mass * 1.0"]


def test_unit_factors_match_python(tmp_path, lj_cases):
    base, _ = lj_cases["metal"]
    lengths, energies = sorted(U.LENGTH_TO_NM), sorted(U.ENERGY_TO_KJ_PER_MOL)
    combos = [(lu, eu) for lu in lengths for eu in energies]
    models = [_resave(base, tmp_path / f"m{k}.pt", units={"length": lu, "energy": eu, "time": "ps"})
              for k, (lu, eu) in enumerate(combos)]
    for lammps_units in ("real", "metal"):
        log = tmp_path / f"log.{lammps_units}"
        with lb.make_lammps(["-screen", "none", "-log", str(log), "-nocite"]) as lmp:
            lb.commands(lmp, _box_lines(lammps_units) + [f"pair_style ep/torch {m}" for m in models])
        found = re.findall(r"length_factor (\S+) energy_factor (\S+)", log.read_text())
        assert len(found) == len(combos)
        lmp_len, lmp_en = U.LAMMPS_UNITS[lammps_units]["length"], U.LAMMPS_UNITS[lammps_units]["energy"]
        for (lu, eu), (lf, ef) in zip(combos, found):
            assert float(lf) == U.length_factor(lmp_len, lu), (lammps_units, lu)
            assert float(ef) == U.energy_factor(eu, lmp_en), (lammps_units, eu)


def test_reduced_units_model_under_units_lj(tmp_path, lj_cases):
    base, _ = lj_cases["metal"]
    model = _resave(base, tmp_path / "reduced.pt", units={"length": "lj", "energy": "lj", "time": "lj"})
    log = tmp_path / "log.lj"
    with lb.make_lammps(["-screen", "none", "-log", str(log), "-nocite"]) as lmp:
        lb.commands(lmp, _box_lines("lj") + [f"pair_style ep/torch {model}", "pair_coeff * * Ar Kr", "run 0"])
    assert "length_factor 1 energy_factor 1" in log.read_text()


# ------------------------------------------------------------------ 2-layer message passing
class TwoLayerMessagePassing(torch.nn.Module):
    """Learning-free invariant message passing with 2 layers (energy of i depends on 2-hop neighbours):
    h1 = tanh(W1 (h0_i + sum_j w(r_ij) h0_j)), h2 = tanh(W2 (h1_i + sum_j w(r_ij) h1_j)), E_i = v . h2_i."""

    def __init__(self, ntypes: int, cutoff: float, features: int = 8, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        f64 = torch.float64
        self.register_buffer("embed", torch.randn(ntypes, features, generator=g, dtype=f64))
        self.register_buffer("w1", torch.randn(features, features, generator=g, dtype=f64) / math.sqrt(features))
        self.register_buffer("w2", torch.randn(features, features, generator=g, dtype=f64) / math.sqrt(features))
        self.register_buffer("v", torch.randn(features, generator=g, dtype=f64))
        self.cutoff = float(cutoff)

    def forward(self, pos: torch.Tensor, types: torch.Tensor, edge_index: torch.Tensor, edge_shift: torch.Tensor,
                n_local: int):
        pos = pos.detach().requires_grad_(True)
        i, j = edge_index[0], edge_index[1]
        vec = pos[j] - pos[i] + edge_shift
        r = torch.sqrt((vec * vec).sum(-1))
        fc = 0.5 * (torch.cos(math.pi * r / self.cutoff) + 1.0)
        w = torch.where(r < self.cutoff, fc * torch.exp(-0.5 * r), torch.zeros_like(r)).unsqueeze(-1)
        h = self.embed[types]
        h = torch.tanh((h + torch.zeros_like(h).index_add(0, i, w * h[j])) @ self.w1)
        h = torch.tanh((h + torch.zeros_like(h).index_add(0, i, w * h[j])) @ self.w2)
        atom_energy = h @ self.v
        forces = local_energy_forces(atom_energy, pos, n_local)
        return atom_energy.detach(), forces.detach()


MP_CUTOFF = 5.0  # Å


def _mp_metadata(layers: int) -> ArtifactMetadata:
    return ArtifactMetadata(role="pseudo_force", method="test_two_layer_mp", type_names=list(NAMES),
                            cutoff=MP_CUTOFF, num_message_passing_layers=layers,
                            units={"length": "angstrom", "energy": "eV", "time": "ps"},
                            periodicity="periodic", role_fields={"conservative": True})


@pytest.fixture(scope="module")
def mp_case(system, tmp_path_factory):
    """The 2-layer model exported (and mis-declared as 1 layer), and its standalone torch result."""
    d = tmp_path_factory.mktemp("mp")
    model = TwoLayerMessagePassing(len(NAMES), MP_CUTOFF)
    path2 = export_artifact(model, _mp_metadata(2), d / "mp2.pt")
    path1 = export_artifact(model, _mp_metadata(1), d / "mp1_wrong.pt")
    pos = torch.tensor(system.positions, dtype=torch.float64)
    edge_index, edge_shift = neighbor_graph(pos, MP_CUTOFF, torch.tensor(system.box, dtype=torch.float64))
    atom_energy, forces = model(pos, torch.tensor(system.types), edge_index, edge_shift, len(pos))
    return path2, path1, atom_energy.numpy(), forces.numpy()


def _assert_matches_standalone(res: lb.LammpsResult, atom_energy: np.ndarray, forces: np.ndarray) -> None:
    assert rel_err(res.energy, atom_energy.sum()) <= TOL
    assert rel_err(res.atom_energy, atom_energy) <= TOL
    assert rel_err(res.forces, forces) <= TOL


def test_two_layer_model_one_rank_matches_standalone(system, mp_case):
    path2, _, atom_energy, forces = mp_case
    res = lb.run_lammps_energy_forces(path2, system.positions, system.types, system.box, NAMES, "metal")
    assert_explicit_ghosts(res, system.n_atoms)
    _assert_matches_standalone(res, atom_energy, forces)


@pytest.mark.mpi
def test_two_layer_model_two_ranks_matches_standalone(system, mp_case):
    path2, _, atom_energy, forces = mp_case
    res = lb.run_lammps_energy_forces(path2, system.positions, system.types, system.box, NAMES, "metal", nprocs=2)
    assert "ghost cutoff set to 12" in res.log  # 2 layers x 5 Å + skin 2 Å
    _assert_matches_standalone(res, atom_energy, forces)


@NPROCS
def test_two_layer_model_md_step_with_folded_images_matches_standalone(nprocs, system, mp_case):
    path2, _, _, forces = mp_case
    got, diag = lb.run_lammps_step_forces(lb.ep_torch_commands(path2, NAMES), system.positions, system.types,
                                          system.box, len(NAMES), "metal", nprocs)
    assert_folded_images(diag, system.n_atoms, nprocs)
    assert rel_err(got, forces) <= TOL


def test_layer_count_matters(system, mp_case):
    """Negative control: declared with 1 layer, the halo and graph are too small and results differ."""
    _, path1, atom_energy, _ = mp_case
    res = lb.run_lammps_energy_forces(path1, system.positions, system.types, system.box, NAMES, "metal")
    assert rel_err(res.atom_energy, atom_energy) > 1e-3


# ------------------------------------------------------------------------------- bad inputs
@pytest.fixture(scope="module")
def lj_any(tmp_path_factory):
    """An LJ artifact in metal units with periodicity 'any'."""
    path = tmp_path_factory.mktemp("bad") / "lj_any.pt"
    meta = lennard_jones_metadata(NAMES, 6.0, units={"length": "angstrom", "energy": "eV", "time": "ps"})
    return export_artifact(LennardJones([0.01, 0.02], [3.4, 3.6], 6.0), meta, path)


def lammps_error(lines: list[str], error=lb.LammpsError, **make_kwargs) -> str:
    with lb.make_lammps(**make_kwargs) as lmp:
        with pytest.raises(error) as info:
            lb.commands(lmp, lines)
    return str(info.value)


def test_missing_model_file(tmp_path):
    msg = lammps_error(_box_lines("metal") + [f"pair_style ep/torch {tmp_path / 'nope.pt'}"])
    assert "cannot read model file" in msg and "nope.pt" in msg


def test_corrupt_model_file(tmp_path, lj_any):
    bad = tmp_path / "truncated.pt"
    bad.write_bytes(lj_any.read_bytes()[:1000])
    msg = lammps_error(_box_lines("metal") + [f"pair_style ep/torch {bad}"])
    assert "is not a TorchScript model file (corrupt or truncated" in msg
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"this is not a model\n" * 50)
    assert "is not a TorchScript model file" in lammps_error(_box_lines("metal") + [f"pair_style ep/torch {junk}"])


def test_torchscript_file_that_is_not_an_artifact(tmp_path):
    path = tmp_path / "plain.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(LennardJones([1.0], [1.0], 2.5)), str(path))
    msg = lammps_error(_box_lines("metal") + [f"pair_style ep/torch {path}"])
    assert "without engine_plugins_metadata.json, so not an artifact of engine_plugins" in msg


def test_newer_schema_version(tmp_path, lj_any):
    path = _resave(lj_any, tmp_path / "v2.pt", schema_version=2)
    msg = lammps_error(_box_lines("metal") + [f"pair_style ep/torch {path}"])
    assert "'schema_version' is 2, newer than this plugin reads (up to 1)" in msg


def test_wrong_format_marker(tmp_path, lj_any):
    path = _resave(lj_any, tmp_path / "other.pt", format="someone.else")
    msg = lammps_error(_box_lines("metal") + [f"pair_style ep/torch {path}"])
    assert "'format' is 'someone.else'" in msg and "not an engine_plugins artifact" in msg


def test_wrong_role(tmp_path, lj_any):
    path = _resave(lj_any, tmp_path / "prop.pt", role="propagator")
    msg = lammps_error(_box_lines("metal") + [f"pair_style ep/torch {path}"])
    assert "has role 'propagator', which LAMMPS runs with 'fix ep/propagate'" in msg
    path = _resave(lj_any, tmp_path / "cg.pt", role="backmapper")
    msg = lammps_error(_box_lines("metal") + [f"pair_style ep/torch {path}"])
    assert "no LAMMPS style of engine_plugins runs role 'backmapper' yet" in msg


def test_unknown_type_name(lj_any):
    msg = lammps_error(_box_lines("metal") + [f"pair_style ep/torch {lj_any}", "pair_coeff * * Ar Xe"])
    assert "LAMMPS type 2 is mapped to 'Xe', which is not a type of model" in msg
    assert "Model type names: Ar Kr" in msg


@pytest.mark.parametrize("names", ["Ar", "Ar Kr Ar"])
def test_wrong_number_of_type_names(lj_any, names):
    msg = lammps_error(_box_lines("metal") + [f"pair_style ep/torch {lj_any}", f"pair_coeff * * {names}"])
    assert f"got {len(names.split())} type name(s) for 2 LAMMPS atom type(s)" in msg


def test_pair_coeff_must_be_star_star(lj_any):
    msg = lammps_error(_box_lines("metal") + [f"pair_style ep/torch {lj_any}", "pair_coeff 1 1 Ar"])
    assert "Pair_coeff must start with * * for pair style ep/torch" in msg  # LAMMPS checks it (one_coeff)


def test_unknown_keyword(lj_any):
    msg = lammps_error(_box_lines("metal") + [f"pair_style ep/torch {lj_any} gpu yes"])
    assert "Unknown pair_style ep/torch keyword 'gpu'" in msg


def test_reduced_model_under_real_units(tmp_path, lj_any):
    path = _resave(lj_any, tmp_path / "reduced.pt", units={"length": "lj", "energy": "lj", "time": "lj"})
    msg = lammps_error(_box_lines("real") + [f"pair_style ep/torch {path}"])
    assert "is in reduced (lj) units, so it runs only under 'units lj', but this input uses 'units real'" in msg


def test_physical_model_under_lj_units(lj_any):
    msg = lammps_error(_box_lines("lj") + [f"pair_style ep/torch {lj_any}"])
    assert "cannot run under 'units lj'" in msg


def test_unsupported_lammps_units(lj_any):
    msg = lammps_error(_box_lines("si") + [f"pair_style ep/torch {lj_any}"])
    assert "not 'units si'" in msg


def test_periodic_model_in_nonperiodic_box(tmp_path, lj_any):
    path = _resave(lj_any, tmp_path / "periodic.pt", periodicity="periodic")
    msg = lammps_error(_box_lines("metal", boundary="p p f") + [f"pair_style ep/torch {path}", "pair_coeff * * Ar Kr",
                                                                 "run 0"])
    assert "declared for periodic systems" in msg and "non-periodic in z" in msg


def test_nonperiodic_model_in_periodic_box(tmp_path, lj_any):
    path = _resave(lj_any, tmp_path / "molecule.pt", periodicity="nonperiodic")
    msg = lammps_error(_box_lines("metal") + [f"pair_style ep/torch {path}", "pair_coeff * * Ar Kr", "run 0"])
    assert "declared for non-periodic systems" in msg and "periodic in x y z" in msg
    # and the same model runs in a non-periodic box
    with lb.make_lammps() as lmp:
        lb.commands(lmp, _box_lines("metal", boundary="f f f") + [f"pair_style ep/torch {path}",
                                                                  "pair_coeff * * Ar Kr", "run 0"])


def test_newton_pair_off(lj_any):
    msg = lammps_error(_box_lines("metal", newton="off") + [f"pair_style ep/torch {lj_any}", "pair_coeff * * Ar Kr",
                                                             "run 0"])
    assert "requires newton pair on" in msg


def test_nan_position_names_step_and_atom(lj_any):
    with lb.make_lammps() as lmp:
        lb.commands(lmp, _box_lines("metal") + [f"pair_style ep/torch {lj_any}", "pair_coeff * * Ar Kr", "run 0"])
        x = lmp.numpy.extract_atom("x")
        tag = int(lmp.numpy.extract_atom("id")[7])
        x[7, 1] = np.nan
        with pytest.raises(lb.LammpsError) as info:
            lb.commands(lmp, ["run 1 pre no"])  # no re-neighbouring: the pair style sees the NaN first
    msg = str(info.value)
    assert f"atom {tag} (type" in msg and "non-finite position" in msg and "at step 1" in msg


# ---------------------------------------------------------------------------- plugin loading
def test_build_is_up_to_date(lammps_plugin):
    assert lammps_plugin.is_file() and is_up_to_date()


def run_fresh(code: str, **values) -> dict:
    """Run ``code`` in a fresh Python process (LAMMPS keeps a loaded plugin for the whole process and
    restores it into every later instance, so 'not loaded' can only be tested in a new one).
    ``values`` are passed as JSON in ``ARGS``; the code fills the dict ``OUT``, returned here."""
    script = ("import json, sys\nfrom engine_plugins.engines import lammps_backend as lb\n"
              f"ARGS = json.loads({json.dumps(json.dumps(values))})\nOUT = {{}}\n" + code
              + "\nprint('@@OUT@@' + json.dumps(OUT))\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = json.loads(proc.stdout.split("@@OUT@@")[-1])
    out["stderr"] = proc.stderr
    return out


def test_missing_plugin_gives_build_instructions(lj_any):
    out = run_fresh("""
try:
    lb.make_lammps(plugin_path=[])
except lb.PluginNotFoundError as exc:
    OUT["make"] = str(exc)
lmp = lb.make_lammps(plugin_path=[], require_plugin=False)
try:
    lb.commands(lmp, ARGS["lines"])
except lb.PluginNotFoundError as exc:
    OUT["command"] = str(exc)
""", lines=_box_lines("metal") + [f"pair_style ep/torch {lj_any}"])
    assert "pair style ep/torch is not available" in out["make"]
    assert "python -m engine_plugins.engines.lammps_build" in out["make"]
    # what LAMMPS says, and what the driver makes of it
    assert "Unrecognized pair style 'ep/torch'" in out["command"]
    assert "python -m engine_plugins.engines.lammps_build" in out["command"]


def test_explicit_plugin_load(lammps_plugin, lj_any):
    lines = _box_lines("metal") + [f"pair_style ep/torch {lj_any}", "pair_coeff * * Ar Kr", "run 0"]
    out = run_fresh("""
lmp = lb.make_lammps(plugin_path=[], require_plugin=False)
OUT["before"] = lmp.has_style("pair", "ep/torch")
lb.load_plugin(lmp, ARGS["plugin"])
lb.commands(lmp, ARGS["lines"])
OUT["pe"] = lmp.get_thermo("pe")
""", plugin=str(lammps_plugin), lines=lines)
    assert out["before"] is False
    with lb.make_lammps() as lmp:  # auto-loaded from the lammps.plugins entry point
        lb.commands(lmp, lines)
        assert out["pe"] == lmp.get_thermo("pe") != 0.0


def _old_lammps_plugin(tmp_path: Path) -> Path | None:
    """Our plugin, relinked as if built for LAMMPS 19990101 (epplugin.cpp recompiled, ~2 s)."""
    stamp = json.loads((BUILD_DIR / STAMP_NAME).read_text())["config"]
    objs = [o for o in sorted((BUILD_DIR / "CMakeFiles" / "epplugin.dir" / "src").glob("*.cpp.o"))
            if o.name != "epplugin.cpp.o"]  # the styles, without the registration
    cxx = shutil.which("c++") or shutil.which("g++")
    if cxx is None or not objs:
        return None
    torch_lib = Path(stamp["torch_dir"]) / "lib"
    old = tmp_path / "oldplugin.so"
    cmd = [cxx, "-shared", "-fPIC", "-std=c++17", "-O0", "-fvisibility=hidden", "-DLAMMPS_SMALLBIG",
           f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}",
           '-DEP_LAMMPS_VERSION="1 Jan 1999"', "-DEP_LAMMPS_VERSION_NUMBER=19990101",
           f"-I{stamp['lammps_include_dir']}", f"-I{stamp['mpi_include_dir']}",
           str(Path(__file__).resolve().parents[1] / "lammps" / "src" / "epplugin.cpp"), *map(str, objs),
           f"-L{torch_lib}", "-Wl,--no-as-needed", "-ltorch", "-ltorch_cpu", "-lc10", f"-Wl,-rpath,{torch_lib}",
           "-o", str(old)]
    subprocess.run(cmd, check=True, capture_output=True)
    return old


def test_plugin_load_of_files_that_are_no_plugin(tmp_path, lj_any):
    """Non-ELF file, ELF without lammpsplugin_init, our plugin built for another LAMMPS: each gives a
    clear error from the driver; LAMMPS itself only logs and the style stays unknown; nothing crashes."""
    junk = tmp_path / "junkplugin.so"
    junk.write_bytes(b"\0not an ELF file" * 10)
    files = {"junk": str(junk), "noinit": str(Path(torch.__file__).parent / "lib" / "libshm.so")}
    old = _old_lammps_plugin(tmp_path)
    if old is not None:
        files["old"] = str(old)
    out = run_fresh("""
lmp = lb.make_lammps(plugin_path=[], require_plugin=False)
for key, path in ARGS["files"].items():
    try:
        lb.load_plugin(lmp, path)
    except lb.PluginNotFoundError as exc:
        OUT[key] = str(exc)
    lb.commands(lmp, [f"plugin load {path}"])  # LAMMPS itself: logs only
    OUT[key + "_registered"] = lmp.has_style("pair", "ep/torch")
try:
    lb.commands(lmp, ARGS["lines"])
except lb.PluginNotFoundError as exc:
    OUT["pair_style"] = str(exc)
""", files=files, lines=_box_lines("metal") + [f"pair_style ep/torch {lj_any}"])
    assert "it is not a shared library (no ELF header)" in out["junk"]
    assert "without lammpsplugin_init(), so not a LAMMPS plugin" in out["noinit"]
    assert "Unrecognized pair style 'ep/torch'" in out["pair_style"]
    assert not any(v for k, v in out.items() if k.endswith("_registered"))
    if old is None:
        pytest.skip("no C++ compiler or build/lammps objects: the version guard was not exercised")
    assert "did not register pair style ep/torch" in out["old"]
    assert "built for LAMMPS 19990101 and is loaded into LAMMPS 20250722" in out["stderr"]
    assert "python -m engine_plugins.engines.lammps_build --force" in out["stderr"]


def test_run_lammps_script_with_a_relative_workdir(tmp_path, monkeypatch):
    """A relative ``workdir`` (as ``make demo``'s ``--output out/demo`` gives) runs: lmp starts in
    that directory, so its log path must not be relative to the caller's."""
    from engine_plugins.engines.lammps_backend import run_lammps_script

    monkeypatch.chdir(tmp_path)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "in.t").write_text("units lj\natom_style atomic\nregion b block 0 2 0 2 0 2\n"
                                            "create_box 1 b\nprint \"relative-ok\"\n")
    run = run_lammps_script("run/in.t", workdir="run")
    assert "relative-ok" in run.log
    assert (tmp_path / "run" / "log.lammps").is_file()


def test_run_lammps_script_past_its_timeout_is_a_clear_error_that_keeps_the_log(tmp_path):
    """A run past its wall-clock limit is stopped and says so (a LammpsError, so callers that keep a
    failed rollout's frames keep these too), not a bare subprocess.TimeoutExpired traceback."""
    from engine_plugins.engines.lammps_backend import LammpsError, LammpsTimeoutError, run_lammps_script

    (tmp_path / "in.long").write_text(
        "units lj\natom_style atomic\nlattice fcc 0.8442\nregion b block 0 6 0 6 0 6\ncreate_box 1 b\n"
        "create_atoms 1 box\nmass 1 1.0\nvelocity all create 1.0 1\npair_style lj/cut 2.5\npair_coeff 1 1 1.0 1.0\n"
        "fix 1 all nve\nthermo 100\nprint \"started\"\nrun 100000000\n")
    with pytest.raises(LammpsTimeoutError, match=r"did not finish in\.long within 3 s") as info:
        run_lammps_script(tmp_path / "in.long", timeout=3)
    assert isinstance(info.value, LammpsError)
    assert "larger timeout" in str(info.value)
    assert (tmp_path / "log.lammps").is_file()
