"""Reference MD of the built-in example families, run in the engines themselves.

Two families, each written as cases any MDAnalysis reader opens (a topology, a trajectory and a
``case.json`` describing temperature, composition, species, masses, timestep, frame interval and
units), plus a ``manifest.json`` listing the cases:

* ``transport`` (LAMMPS, ``units metal``: Å, ps, eV, g/mol): a mobile species ``Li`` diffusing
  through a framework ``Fw`` - a model superionic conductor. The framework is an fcc crystal of
  heavy atoms (Lennard-Jones, each atom weakly tethered to its lattice site with
  ``fix spring/self`` so the crystal stays ordered at every temperature); the mobile atoms start
  on randomly chosen octahedral interstitial sites and hop oct -> tet -> oct through the
  triangular windows of the framework. Mobile-framework and mobile-mobile interactions are purely
  repulsive (Weeks-Chandler-Andersen: LJ cut at its minimum and shifted). The hop barrier grows
  steeply with the mobile-framework size ``sigma_mf``; each built-in *material* is a loading
  (mobile atoms per octahedral site) and a ``sigma_mf``. Four materials x four temperatures
  (600-1200 K; eight more in the ``extra`` set) span about three orders of magnitude in the mobile species' diffusivity
  (``summary.json`` lists D per case; README of the data: docstring of :data:`TRANSPORT_MATERIALS`).
  Protocol: velocities at T, Langevin thermostat + NVE for equilibration, then production either
  NVT (Nose-Hoover, default) or NVE; trajectory = LAMMPS dump ``id type x y z ix iy iz`` (wrapped
  positions and image flags, sorted by id) with a LAMMPS data file as topology; LAMMPS's own
  ``compute msd`` of each species (from the first production frame, unwrapped, no centre-of-mass
  correction) is written to ``msd.txt`` as an independent reference and gives D per case.

* ``cg`` (OpenMM): all-atom MD of a box of rigid TIP3P water (amber14/tip3p.xml shipped with
  OpenMM, ``Modeller.addSolvent``, PME, LangevinMiddleIntegrator, 2 fs), written as DCD + PDB
  topology (with CONECT records for every bond). A coarse-grained propagator learns the dynamics
  of the molecules' centres of mass (``engine_plugins.data.cg_mapping``, mapping ``residue``).

Sizes: presets ``tiny`` (tests: a second or two per case), ``standard`` (default; seconds to
minutes per case on 2 cores) and ``large`` (real runs); see :data:`TRANSPORT_PRESETS` and
:data:`CG_PRESETS`. Every setting can be overridden.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from engine_plugins.data.systems import ExampleSystem

#: k_B in eV/K
KB_EV = 8.617333262e-5
MANIFEST = "manifest.json"
CASE_FILE = "case.json"


class SimulationError(RuntimeError):
    """A reference MD run could not be set up or failed."""


# ===================================================================================== transport
@dataclass(frozen=True)
class TransportMaterial:
    """One parameter set of the transport family (a "composition").

    ``loading``: mobile atoms per octahedral site of the fcc framework (= per framework atom);
    ``sigma_mf`` (Å) and ``eps_mf`` (eV): WCA repulsion between mobile and framework atoms.
    """

    name: str
    loading: float
    sigma_mf: float
    eps_mf: float = 0.10
    description: str = ""

    def __post_init__(self) -> None:
        if not 0.0 < self.loading <= 1.0:
            raise ValueError(f"material {self.name!r}: loading must be in (0, 1], got {self.loading}")
        if self.sigma_mf <= 0 or self.eps_mf <= 0:
            raise ValueError(f"material {self.name!r}: sigma_mf and eps_mf must be > 0")


@dataclass(frozen=True)
class TransportModel:
    """Fixed parts of the transport model (metal units)."""

    framework: str = "Fw"
    mobile: str = "Li"
    framework_mass: float = 100.0
    mobile_mass: float = 6.94
    lattice: float = 4.0          # fcc lattice constant, Å (framework nearest neighbours 2.83 Å)
    eps_ff: float = 0.25          # framework LJ well, eV (an LJ crystal that melts near 2000 K)
    cutoff_ff: float = 6.0        # framework LJ cutoff, Å (shifted)
    tether: float = 0.2           # fix spring/self constant on framework atoms, eV/Å^2
    sigma_mm: float = 2.0         # mobile-mobile WCA size, Å
    eps_mm: float = 0.05          # mobile-mobile WCA strength, eV

    @property
    def sigma_ff(self) -> float:
        """Framework LJ sigma: its minimum at the fcc nearest-neighbour distance."""
        return self.lattice / np.sqrt(2.0) / 2.0 ** (1.0 / 6.0)


#: Built-in materials: loading x (Li per framework atom) and mobile size. Measured with the
#: ``standard`` preset at 600/800/1000/1200 K (LAMMPS compute msd, 50 ps NVT, seed 1), D(Li) in Å^2/ps:
#: Li0.25-s1.55 0.45/0.69/1.04/1.40; Li0.50-s1.60 0.078/0.19/0.34/0.47;
#: Li0.125-s1.68 0.0086/0.067/0.14/0.33; Li0.375-s1.72 0.00072/0.0083/0.030/0.066:
#: 7.2e-4 .. 1.4, 3.3 orders of magnitude (framework D ~ 0 within +-1e-5: it stays crystalline).
#: The ``extra`` set (run on its own, ``--materials extra``, seeds 1..32) fills the same range with
#: more loadings and sizes, so a propagator sees more than two hopping materials per temperature:
#: Li0.125-s1.60, Li0.25-s1.65, Li0.375-s1.62, Li0.50-s1.68, Li0.25-s1.74, Li0.125-s1.76,
#: Li0.375-s1.58, Li0.1875-s1.70; D(Li) < 1e-4 (Li0.125-s1.76 at 600 K, no hop in 50 ps) .. 0.89.
#: The ``grid`` set (``--materials grid --seed 101``, seeds 101..148): loading 1/8, 1/4, 3/8, 1/2 x ion
#: size 1.57, 1.64, 1.71 A, between the materials above, so that every loading comes with a small, a
#: medium and a large ion; D(Li) 5.6e-4 (Li0.50-s1.71, 600 K) .. 1.6 (Li0.125-s1.57, 1200 K).
_GRID_MATERIALS = tuple(TransportMaterial(f"Li{name}-s{s:.2f}", x, s, description=f"grid: loading {x}, ion size {s} A")
                        for name, x in (("0.125", 0.125), ("0.25", 0.25), ("0.375", 0.375), ("0.50", 0.5))
                        for s in (1.57, 1.64, 1.71))
TRANSPORT_MATERIALS: dict[str, TransportMaterial] = {m.name: m for m in (
    TransportMaterial("Li0.25-s1.55", 0.25, 1.55, description="fast conductor: small mobile ion, quarter loading"),
    TransportMaterial("Li0.50-s1.60", 0.50, 1.60, description="half loading, small ion"),
    TransportMaterial("Li0.125-s1.68", 0.125, 1.68, description="dilute, larger ion"),
    TransportMaterial("Li0.375-s1.72", 0.375, 1.72, description="slow conductor: large ion, 3/8 loading"),
    TransportMaterial("Li0.125-s1.60", 0.125, 1.60, description="dilute, small ion"),
    TransportMaterial("Li0.25-s1.65", 0.25, 1.65, description="quarter loading, medium ion"),
    TransportMaterial("Li0.375-s1.62", 0.375, 1.62, description="3/8 loading, small ion"),
    TransportMaterial("Li0.50-s1.68", 0.50, 1.68, description="half loading, larger ion"),
    TransportMaterial("Li0.25-s1.74", 0.25, 1.74, description="quarter loading, large ion (slow)"),
    TransportMaterial("Li0.125-s1.76", 0.125, 1.76, description="dilute, largest ion (slowest)"),
    TransportMaterial("Li0.375-s1.58", 0.375, 1.58, description="3/8 loading, smallest-but-one ion (fast)"),
    TransportMaterial("Li0.1875-s1.70", 0.1875, 1.70, description="3/16 loading, large ion"),
    *_GRID_MATERIALS,
)}
#: Named sets for ``--materials``: ``standard`` (the default 4 x 4 cases), ``extra`` (8 more
#: materials, for training propagators on more than the standard set), ``wide`` (both, 12).
TRANSPORT_MATERIAL_SETS: dict[str, tuple[str, ...]] = {
    "standard": ("Li0.25-s1.55", "Li0.50-s1.60", "Li0.125-s1.68", "Li0.375-s1.72"),
    "extra": ("Li0.125-s1.60", "Li0.25-s1.65", "Li0.375-s1.62", "Li0.50-s1.68", "Li0.25-s1.74", "Li0.125-s1.76",
              "Li0.375-s1.58", "Li0.1875-s1.70"),
}
TRANSPORT_MATERIAL_SETS["wide"] = TRANSPORT_MATERIAL_SETS["standard"] + TRANSPORT_MATERIAL_SETS["extra"]
#: ``grid``: 12 more materials on a regular grid (loading 1/8, 1/4, 3/8, 1/2 x ion size 1.57, 1.64,
#: 1.71 A) between those of ``wide``, so that every loading is seen with small, medium and large ions.
TRANSPORT_MATERIAL_SETS["grid"] = tuple(m.name for m in _GRID_MATERIALS)
TRANSPORT_TEMPERATURES = (600.0, 800.0, 1000.0, 1200.0)


@dataclass(frozen=True)
class TransportSettings:
    """Run settings of one transport case (steps are MD steps of ``timestep`` ps)."""

    n_cells: int = 4              # fcc cells per edge: 4 n^3 framework atoms
    equil_steps: int = 5000
    steps: int = 50000
    dump_every: int = 100
    timestep: float = 0.001       # ps (1 fs)
    ensemble: str = "nvt"         # production: "nvt" (Nose-Hoover) or "nve"
    t_damp: float = 0.1           # ps, Langevin (equilibration) and Nose-Hoover damping
    seed: int = 1
    ranks: int = 1                # MPI ranks per case (mpiexec -n)
    unwrapped_reference: bool = False  # also dump LAMMPS's own xu yu zu (ref_unwrapped.lammpstrj)

    def __post_init__(self) -> None:
        if self.ensemble not in ("nvt", "nve"):
            raise ValueError(f"ensemble must be 'nvt' or 'nve', got {self.ensemble!r}")
        if self.n_cells < 2:
            raise ValueError("n_cells must be >= 2")
        if min(self.steps, self.dump_every) <= 0 or self.equil_steps < 0 or self.steps % self.dump_every:
            raise ValueError("steps and dump_every must be > 0 and steps a multiple of dump_every")


#: Size presets. tiny: tests (3^3 cells, 0.5 + 1 ps, 21 frames; ~1.5 s per case with lmp start-up);
#: standard: 4^3 cells (288-384 atoms), 5 ps + 50 ps, 501 frames: ~8 s per case on an idle core
#: (25-35 s measured with the 2 cores shared, 16 cases in 4 min with --jobs 2); large: 6^3 cells
#: (1,000-1,300 atoms), 20 ps + 500 ps, 5,001 frames: roughly 5 min per case per core.
TRANSPORT_PRESETS: dict[str, TransportSettings] = {
    "tiny": TransportSettings(n_cells=3, equil_steps=500, steps=1000, dump_every=50),
    "standard": TransportSettings(),
    "large": TransportSettings(n_cells=6, equil_steps=20000, steps=500000, dump_every=100),
}

_OCT_BASIS = np.array([[0.5, 0, 0], [0, 0.5, 0], [0, 0, 0.5], [0.5, 0.5, 0.5]])
_FCC_BASIS = np.array([[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])


def transport_system(material: TransportMaterial, n_cells: int, seed: int = 0,
                     model: TransportModel = TransportModel()) -> ExampleSystem:
    """Framework atoms on fcc sites, then mobile atoms on ``round(loading * n_sites)`` random
    octahedral sites (type 0 = framework, type 1 = mobile; positions in Å)."""
    a = model.lattice
    grid = np.array([[i, j, k] for i in range(n_cells) for j in range(n_cells) for k in range(n_cells)], float)
    frame = (grid[:, None, :] + _FCC_BASIS[None]).reshape(-1, 3) * a
    sites = (grid[:, None, :] + _OCT_BASIS[None]).reshape(-1, 3) * a
    n_mobile = int(round(material.loading * len(sites)))
    if n_mobile < 1:
        raise SimulationError(f"material {material.name}: loading {material.loading} leaves no mobile atom in "
                              f"{n_cells}^3 cells; use more cells")
    rng = np.random.default_rng(seed)
    mobile = sites[np.sort(rng.choice(len(sites), n_mobile, replace=False))]
    pos = np.concatenate([frame, mobile])
    types = np.concatenate([np.zeros(len(frame), np.int64), np.ones(n_mobile, np.int64)])
    return ExampleSystem(pos, np.diag([n_cells * a] * 3), types, [model.framework, model.mobile],
                         [model.framework_mass, model.mobile_mass])


def transport_input(material: TransportMaterial, temperature: float, settings: TransportSettings,
                    model: TransportModel = TransportModel(), seed: int = 1) -> str:
    """The LAMMPS input script of one case (reads ``system.data`` in the working directory)."""
    w = 2.0 ** (1.0 / 6.0)
    s = settings
    T = f"{temperature:g}"
    lines = [
        f"# engine_plugins transport case: material {material.name}, T = {temperature:g} K",
        "units metal", "atom_style atomic", "boundary p p p", "atom_modify map array",
        "read_data system.data",
        "group framework type 1", "group mobile type 2",
        f"pair_style lj/cut {model.cutoff_ff}",
        f"pair_coeff 1 1 {model.eps_ff} {model.sigma_ff:.10g} {model.cutoff_ff}",
        f"pair_coeff 1 2 {material.eps_mf} {material.sigma_mf} {material.sigma_mf * w:.10g}",
        f"pair_coeff 2 2 {model.eps_mm} {model.sigma_mm} {model.sigma_mm * w:.10g}",
        "pair_modify shift yes",
        "neighbor 1.0 bin", "neigh_modify every 1 delay 0 check yes",
        f"timestep {s.timestep}",
        f"velocity all create {T} {seed} dist gaussian mom yes rot no",
        f"fix tether framework spring/self {model.tether}",
        # equilibration: Langevin + NVE
        f"fix eq_lang all langevin {T} {T} {s.t_damp} {seed + 1} zero yes",
        "fix eq_nve all nve",
        "thermo_style custom step temp pe etotal press",
        f"thermo {max(s.equil_steps // 10, 1)}",
        f"run {s.equil_steps}",
        "unfix eq_lang", "unfix eq_nve",
        "reset_timestep 0",
        # production
        (f"fix prod all nvt temp {T} {T} {s.t_damp}" if s.ensemble == "nvt"
         else "fix prod all nve"),
        "compute msd_fw framework msd com no",
        "compute msd_mob mobile msd com no",
        "compute pe_all all pe",
        f"fix msd_out all ave/time {s.dump_every} 1 {s.dump_every} c_msd_fw[4] c_msd_mob[4] c_thermo_temp "
        "c_pe_all file msd.txt format \" %.10g\"",
        f"dump traj all custom {s.dump_every} traj.lammpstrj id type x y z ix iy iz",
        "dump_modify traj sort id format float %.10g",
    ]
    if s.unwrapped_reference:
        lines += [f"dump ref all custom {s.dump_every} ref_unwrapped.lammpstrj id type xu yu zu",
                  "dump_modify ref sort id format float %.10g"]
    lines += [f"thermo {max(s.steps // 10, 1)}", f"run {s.steps}"]
    return "\n".join(lines) + "\n"


def diffusion_coefficient(time: np.ndarray, msd: np.ndarray, fit_from: float = 0.2) -> float:
    """D = slope / 6 of a straight-line fit of MSD(t) over ``t >= fit_from * t_max`` (units of
    msd / time; Å^2/ps here: 1 Å^2/ps = 1e-4 cm^2/s). Below the resolution of a run (no hops)
    the slope is noise around zero and may be negative."""
    time, msd = np.asarray(time, float), np.asarray(msd, float)
    sel = time >= fit_from * time.max()
    if sel.sum() < 2:
        raise ValueError("need at least two MSD points to fit a diffusion coefficient")
    return float(np.polyfit(time[sel], msd[sel], 1)[0] / 6.0)


def case_id_for(material: str, temperature: float) -> str:
    return f"{material}_T{int(round(temperature)):04d}"


def _lammps_cmd(settings: TransportSettings) -> list[str]:
    from engine_plugins.engines.lammps_backend import BIN_DIR

    cmd = [str(BIN_DIR / "lmp"), "-in", "in.transport", "-log", "log.lammps", "-screen", "none", "-nocite"]
    if settings.ranks > 1:
        cmd = [str(BIN_DIR / "mpiexec"), "-n", str(settings.ranks), *cmd]
    return cmd


def _progress_steps(path: Path) -> int:
    """Last step written to a LAMMPS ``fix ave/time`` file (0 if none yet)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(f.tell() - 400, 0))
            lines = [ln for ln in f.read().decode(errors="replace").splitlines() if ln and not ln.startswith("#")]
        return int(lines[-1].split()[0]) if len(lines) > 0 else 0
    except (OSError, ValueError, IndexError):
        return 0


def run_transport_case(material: TransportMaterial, temperature: float, settings: TransportSettings,
                       workdir: str | os.PathLike, *, seed: int | None = None,
                       model: TransportModel = TransportModel()) -> dict[str, Any]:
    """Run one transport case in ``workdir`` with the venv's ``lmp``; return (and write) its case JSON."""
    from engine_plugins.data.lammps_data import write_lammps_data
    from engine_plugins.engines.lammps_backend import error_lines, explain

    wd = Path(workdir)
    wd.mkdir(parents=True, exist_ok=True)
    seed = settings.seed if seed is None else seed
    system = transport_system(material, settings.n_cells, seed=seed, model=model)
    write_lammps_data(wd / "system.data", system)
    (wd / "in.transport").write_text(transport_input(material, temperature, settings, model, seed=seed))
    for stale in ("msd.txt", "traj.lammpstrj", "ref_unwrapped.lammpstrj", CASE_FILE):
        (wd / stale).unlink(missing_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    t0 = time.perf_counter()
    proc = subprocess.run(_lammps_cmd(settings), cwd=wd, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
    wall = time.perf_counter() - t0
    log = (wd / "log.lammps").read_text(errors="replace") if (wd / "log.lammps").is_file() else ""
    if proc.returncode != 0 or "ERROR" in proc.stdout or "ERROR" in log:
        raise explain(f"LAMMPS transport case {case_id_for(material.name, temperature)} failed (exit code "
                      f"{proc.returncode}) in {wd}: {error_lines(proc.stdout + chr(10) + log) or proc.stdout[-2000:]}",
                      log)
    table = np.loadtxt(wd / "msd.txt", comments="#", ndmin=2)
    t_ps = table[:, 0] * settings.timestep
    n_fw = int((system.types == 0).sum())
    n_mob = int((system.types == 1).sum())
    case = {
        "schema": "engine_plugins.case/1",
        "case_id": case_id_for(material.name, temperature),
        "family": "transport",
        "engine": "lammps",
        "units": {"style": "metal", "length": "angstrom", "time": "ps", "energy": "eV", "mass": "g/mol"},
        "temperature": float(temperature),
        "composition": material.name,
        "formula": {model.framework: n_fw, model.mobile: n_mob},
        "material": asdict(material),
        "model": asdict(model),
        "species": [model.framework, model.mobile],
        "type_map": {"1": model.framework, "2": model.mobile},
        "masses": {model.framework: model.framework_mass, model.mobile: model.mobile_mass},
        "mobile_species": [model.mobile],
        "n_atoms": int(system.n_atoms),
        "box": np.diag(system.box).tolist(),
        "timestep": settings.timestep,
        "dump_every": settings.dump_every,
        "frame_interval": settings.timestep * settings.dump_every,
        "n_frames": int(settings.steps // settings.dump_every + 1),
        "equilibration": {"steps": settings.equil_steps, "thermostat": "langevin + nve", "damp": settings.t_damp},
        "production": {"steps": settings.steps, "ensemble": settings.ensemble,
                       "thermostat": "nose-hoover" if settings.ensemble == "nvt" else None, "damp": settings.t_damp},
        "seed": seed,
        "ranks": settings.ranks,
        "topology": "system.data",
        "trajectory": "traj.lammpstrj",
        "universe_kwargs": {"topology_format": "DATA", "format": "LAMMPSDUMP", "atom_style": "id type x y z",
                            "dt": settings.timestep},
        "reference_msd": {"file": "msd.txt", "columns": ["step", f"msd_{model.framework}", f"msd_{model.mobile}",
                                                         "temperature", "pe"], "com_correction": False},
        "diffusion": {
            model.mobile: diffusion_coefficient(t_ps, table[:, 2]),
            model.framework: diffusion_coefficient(t_ps, table[:, 1]),
            "units": "angstrom^2/ps", "method": "LAMMPS compute msd, single time origin, linear fit t >= 0.2 t_max",
        },
        "msd_final": {model.framework: float(table[-1, 1]), model.mobile: float(table[-1, 2])},
        "mean_temperature": float(table[:, 3].mean()),
        "wall_seconds": wall,
    }
    if settings.unwrapped_reference:
        case["reference_unwrapped"] = "ref_unwrapped.lammpstrj"
    (wd / CASE_FILE).write_text(json.dumps(case, indent=1))
    return case


def _resolve_materials(materials: Iterable[str | TransportMaterial | dict] | None) -> list[TransportMaterial]:
    if materials is None:
        materials = ["standard"]
    out = []
    for m in materials:
        if isinstance(m, TransportMaterial):
            out.append(m)
        elif isinstance(m, dict):
            out.append(TransportMaterial(**m))
        elif m in TRANSPORT_MATERIAL_SETS:
            out.extend(TRANSPORT_MATERIALS[name] for name in TRANSPORT_MATERIAL_SETS[m])
        elif m in TRANSPORT_MATERIALS:
            out.append(TRANSPORT_MATERIALS[m])
        else:
            raise SimulationError(f"unknown transport material {m!r}; built-in: {', '.join(TRANSPORT_MATERIALS)}; "
                                  f"sets: {', '.join(TRANSPORT_MATERIAL_SETS)} "
                                  "(or give a JSON file of {name, loading, sigma_mf[, eps_mf]} objects)")
    return out


def simulate_transport(output: str | os.PathLike, *, materials: Iterable[str | TransportMaterial | dict] | None = None,
                       temperatures: Sequence[float] = TRANSPORT_TEMPERATURES,
                       settings: TransportSettings = TRANSPORT_PRESETS["standard"], jobs: int = 1,
                       progress: bool = True) -> dict[str, Any]:
    """Run every (material, temperature) case into ``output/<case_id>/`` (``jobs`` at a time) and
    write ``output/manifest.json`` and ``output/summary.json`` (D of each species per case)."""
    mats = _resolve_materials(materials)
    if not temperatures or min(temperatures) <= 0:
        raise SimulationError("temperatures must be positive (K)")
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    todo = [(m, float(T), i) for i, (m, T) in enumerate((m, T) for m in mats for T in temperatures)]
    ids = [case_id_for(m.name, T) for m, T, _ in todo]
    if len(set(ids)) != len(ids):
        raise SimulationError(f"duplicate case ids {sorted({i for i in ids if ids.count(i) > 1})}")

    def work(item: tuple[TransportMaterial, float, int]) -> dict[str, Any]:
        m, T, i = item
        return run_transport_case(m, T, settings, out / case_id_for(m.name, T), seed=settings.seed + i)

    cases = _run_with_progress(work, todo, [out / i / "msd.txt" for i in ids], settings.steps, jobs, progress,
                               "transport (LAMMPS)")
    return _write_manifest(out, "transport", cases, {"settings": asdict(settings)})


def _run_with_progress(work, items: list, progress_files: list[Path], steps_per_item: int, jobs: int,
                       progress: bool, desc: str) -> list[dict[str, Any]]:
    """Run ``work`` over items in a thread pool; a tqdm bar counts production steps (polled files)."""
    from tqdm.auto import tqdm

    results: list[dict[str, Any] | None] = [None] * len(items)
    bar = tqdm(total=len(items) * steps_per_item, desc=desc, unit="step", disable=not progress, smoothing=0.1)
    done = threading.Event()
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        futures = [pool.submit(work, it) for it in items]
        try:
            while not done.is_set():
                finished = [f.done() for f in futures]
                count = sum(steps_per_item if fin else min(_progress_steps(p), steps_per_item)
                            for fin, p in zip(finished, progress_files))
                bar.update(count - bar.n)
                if all(finished):
                    break
                time.sleep(0.5)
            for k, f in enumerate(futures):
                results[k] = f.result()
        finally:
            bar.close()
    return [r for r in results if r is not None]


def _write_manifest(out: Path, family: str, cases: list[dict[str, Any]], extra: dict[str, Any]) -> dict[str, Any]:
    manifest = {"schema": "engine_plugins.manifest/1", "family": family,
                "cases": [f"{c['case_id']}/{CASE_FILE}" for c in cases], **extra}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1))
    summary = {"family": family, "cases": {}}
    for c in cases:
        summary["cases"][c["case_id"]] = {"composition": c["composition"], "temperature": c["temperature"],
                                          "diffusion": c.get("diffusion"), "wall_seconds": c.get("wall_seconds")}
    mobile = {sp for c in cases for sp in c.get("mobile_species", [])}
    for sp in sorted(mobile):
        d = np.array([c["diffusion"][sp] for c in cases if sp in c.get("diffusion", {})])
        pos = d[d > 0]
        if len(pos):
            summary[f"spread_{sp}"] = {"min": float(pos.min()), "max": float(pos.max()),
                                       "orders_of_magnitude": float(np.log10(pos.max() / pos.min())),
                                       "non_positive": int((d <= 0).sum()), "units": "angstrom^2/ps"}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    manifest["summary"] = summary
    return manifest


def format_summary(manifest: dict[str, Any]) -> str:
    """A plain-text table of the cases of a run (D per species, wall time)."""
    summary = manifest["summary"]
    lines = []
    species: list[str] = []
    for c in summary["cases"].values():
        for k in (c.get("diffusion") or {}):
            if k not in ("units", "method") and k not in species:
                species.append(k)
    cols = " ".join(f"{'D_' + s + ' (A2/ps)':>16}" for s in species)
    lines.append(f"{'case':<24} {'T (K)':>7} {cols} {'wall (s)':>9}")
    for cid, c in summary["cases"].items():
        d = c.get("diffusion") or {}
        values = " ".join(f"{d.get(s, float('nan')):>16.4g}" for s in species)
        lines.append(f"{cid:<24} {c['temperature']:>7.1f} {values} {c.get('wall_seconds') or 0:>9.1f}")
    for k, v in summary.items():
        if k.startswith("spread_"):
            lines.append(f"{k[7:]} diffusion spread: {v['min']:.3g} .. {v['max']:.3g} {v['units']} "
                         f"({v['orders_of_magnitude']:.2f} orders of magnitude; {v['non_positive']} case(s) "
                         "below resolution)")
    return "\n".join(lines)


# ============================================================================================ cg
@dataclass(frozen=True)
class CGSettings:
    """Run settings of one all-atom water case in OpenMM (steps of ``timestep`` ps)."""

    box: float = 2.5              # cubic box edge, nm (addSolvent fills it with TIP3P)
    equil_steps: int = 5000
    steps: int = 50000
    report_every: int = 100
    timestep: float = 0.002       # ps
    friction: float = 1.0         # 1/ps (LangevinMiddleIntegrator; weak, to keep the dynamics)
    cutoff: float = 0.9           # nm, PME real-space cutoff
    seed: int = 1
    platform: str = "CPU"
    threads: int | None = None    # CPU platform threads (None: OpenMM's default, all cores)

    def __post_init__(self) -> None:
        if self.box < 2 * self.cutoff:
            raise ValueError(f"box {self.box} nm must be at least twice the cutoff ({self.cutoff} nm)")
        if min(self.steps, self.report_every) <= 0 or self.equil_steps < 0 or self.steps % self.report_every:
            raise ValueError("steps and report_every must be > 0 and steps a multiple of report_every")


#: tiny: tests (1.8 nm box, 185 waters, 0.2 + 0.4 ps, 21 frames; ~4 s with set-up); standard:
#: 2.5 nm box (~500 waters, 1,500 atoms), 10 ps + 100 ps, frames every 0.2 ps: ~3 min on 2 idle
#: cores (7 min measured with the cores shared; D(water COM) 0.48 Å^2/ps at 300 K); large: 4 nm box
#: (~2,100 waters), 50 ps + 1 ns, frames every 0.5 ps: hours on 2 cores, minutes with platform CUDA.
CG_PRESETS: dict[str, CGSettings] = {
    "tiny": CGSettings(box=1.8, equil_steps=100, steps=200, report_every=10),
    "standard": CGSettings(),
    "large": CGSettings(box=4.0, equil_steps=25000, steps=500000, report_every=250),
}
CG_SYSTEMS = ("water",)


def water_box(box_nm: float):
    """(topology, positions, system) of a cubic box of rigid TIP3P water (amber14/tip3p.xml)."""
    import openmm as mm
    import openmm.app as app
    import openmm.unit as u

    ff = app.ForceField("amber14-all.xml", "amber14/tip3p.xml")
    modeller = app.Modeller(app.Topology(), [])
    modeller.addSolvent(ff, model="tip3p", boxSize=mm.Vec3(box_nm, box_nm, box_nm) * u.nanometer)
    return ff, modeller.topology, modeller.positions


def write_pdb_with_bonds(path: str | os.PathLike, topology, positions) -> Path:
    """PDB topology with CONECT records for every bond (OpenMM writes them only for hetero
    residues; MDAnalysis reads them as the bond graph)."""
    import openmm.app as app

    path = Path(path)
    n = topology.getNumAtoms()
    with open(path, "w") as f:
        app.PDBFile.writeHeader(topology, f)
        app.PDBFile.writeModel(topology, positions, f, keepIds=False)
        if n < 100000:
            partners: dict[int, list[int]] = {}
            for b in topology.bonds():
                i, j = b[0].index + 1, b[1].index + 1
                partners.setdefault(i, []).append(j)
                partners.setdefault(j, []).append(i)
            for i in sorted(partners):
                js = sorted(partners[i])
                for k in range(0, len(js), 4):
                    f.write("CONECT" + f"{i:5d}" + "".join(f"{j:5d}" for j in js[k:k + 4]) + "\n")
        f.write("END\n")
    return path


def run_cg_case(system_name: str, temperature: float, settings: CGSettings, workdir: str | os.PathLike, *,
                seed: int | None = None, progress: bool = False) -> dict[str, Any]:
    """All-atom MD of one CG-family case in OpenMM; writes system.pdb, traj.dcd, thermo.csv, case.json."""
    import openmm as mm
    import openmm.app as app
    import openmm.unit as u
    from tqdm.auto import tqdm

    if system_name not in CG_SYSTEMS:
        raise SimulationError(f"unknown CG system {system_name!r}; built-in: {', '.join(CG_SYSTEMS)}")
    wd = Path(workdir)
    wd.mkdir(parents=True, exist_ok=True)
    seed = settings.seed if seed is None else seed
    ff, topology, positions = water_box(settings.box)
    system = ff.createSystem(topology, nonbondedMethod=app.PME, nonbondedCutoff=settings.cutoff * u.nanometer,
                             constraints=app.HBonds, rigidWater=True)
    integrator = mm.LangevinMiddleIntegrator(temperature * u.kelvin, settings.friction / u.picosecond,
                                             settings.timestep * u.picosecond)
    integrator.setRandomNumberSeed(seed)
    platform = mm.Platform.getPlatformByName(settings.platform)
    props = {"Threads": str(settings.threads)} if settings.threads and settings.platform == "CPU" else {}
    context = mm.Context(system, integrator, platform, props)
    context.setPositions(positions)
    mm.LocalEnergyMinimizer.minimize(context, 10.0, 500)
    context.setVelocitiesToTemperature(temperature * u.kelvin, seed)
    t0 = time.perf_counter()
    integrator.step(settings.equil_steps)
    masses = np.array([system.getParticleMass(i).value_in_unit(u.dalton) for i in range(system.getNumParticles())])
    state = context.getState(getPositions=True, enforcePeriodicBox=True)
    write_pdb_with_bonds(wd / "system.pdb", topology, state.getPositions())
    np.save(wd / "atom_masses.npy", masses)
    n_frames = settings.steps // settings.report_every + 1
    dof = 3 * system.getNumParticles() - system.getNumConstraints() - 3 * any(
        isinstance(system.getForce(k), mm.CMMotionRemover) for k in range(system.getNumForces()))
    thermo = []
    with open(wd / "traj.dcd", "wb") as fh:
        dcd = app.DCDFile(fh, topology, settings.timestep * u.picosecond, 0, settings.report_every)
        bar = tqdm(total=settings.steps, desc=f"cg {system_name} {temperature:g} K (OpenMM)", unit="step",
                   disable=not progress)
        for k in range(n_frames):
            if k:
                integrator.step(settings.report_every)
                bar.update(settings.report_every)
            st = context.getState(getPositions=True, getEnergy=True, enforcePeriodicBox=True)
            dcd.writeModel(st.getPositions(), periodicBoxVectors=st.getPeriodicBoxVectors())
            ke = st.getKineticEnergy().value_in_unit(u.kilojoule_per_mole)
            thermo.append((k * settings.report_every, 2 * ke / (dof * 0.00831446261815324),
                           st.getPotentialEnergy().value_in_unit(u.kilojoule_per_mole)))
        bar.close()
    wall = time.perf_counter() - t0
    thermo_arr = np.array(thermo)
    np.savetxt(wd / "thermo.csv", thermo_arr, delimiter=",", header="step,temperature_K,potential_kJ_per_mol",
               comments="")
    elements = sorted({a.element.symbol for a in topology.atoms()})
    species_mass = {}
    for a in topology.atoms():
        species_mass.setdefault(a.element.symbol, float(masses[a.index]))
    n_mol = topology.getNumResidues()
    case = {
        "schema": "engine_plugins.case/1",
        "case_id": f"{system_name}_T{int(round(temperature)):04d}",
        "family": "cg",
        "engine": "openmm",
        "system": system_name,
        "force_field": ["amber14-all.xml", "amber14/tip3p.xml"],
        "units": {"length": "angstrom", "time": "ps", "energy": "kJ/mol", "mass": "g/mol",
                  "note": "OpenMM runs in nm; MDAnalysis reads the DCD in angstrom"},
        "temperature": float(temperature),
        "composition": f"{system_name}{n_mol}",
        "formula": {"HOH": n_mol},
        "species": elements,
        "masses": species_mass,
        "atom_masses": "atom_masses.npy",
        "n_atoms": int(topology.getNumAtoms()),
        "box": [10.0 * settings.box] * 3,
        "timestep": settings.timestep,
        "dump_every": settings.report_every,
        "frame_interval": settings.timestep * settings.report_every,
        "n_frames": int(n_frames),
        "equilibration": {"steps": settings.equil_steps, "thermostat": "langevin-middle",
                          "friction": settings.friction},
        "production": {"steps": settings.steps, "ensemble": "nvt", "thermostat": "langevin-middle",
                       "friction": settings.friction},
        "electrostatics": {"method": "PME", "cutoff_nm": settings.cutoff},
        "constraints": "rigid water",
        "seed": seed,
        "topology": "system.pdb",
        "trajectory": "traj.dcd",
        "universe_kwargs": {"topology_format": "PDB", "format": "DCD"},
        "cg_mapping": "residue",
        "mean_temperature": float(thermo_arr[1:, 1].mean()) if len(thermo_arr) > 1 else float(thermo_arr[0, 1]),
        "platform": context.getPlatform().getName(),
        "wall_seconds": wall,
    }
    (wd / CASE_FILE).write_text(json.dumps(case, indent=1))
    return case


def simulate_cg(output: str | os.PathLike, *, system: str = "water", temperatures: Sequence[float] = (300.0,),
                settings: CGSettings = CG_PRESETS["standard"], progress: bool = True) -> dict[str, Any]:
    """Run the CG family's all-atom reference MD at each temperature into ``output/<case_id>/``,
    then map each case to beads (molecule centres of mass) to report the bead diffusivity."""
    if not temperatures or min(temperatures) <= 0:
        raise SimulationError("temperatures must be positive (K)")
    out = Path(output)
    cases = []
    for i, T in enumerate(temperatures):
        case = run_cg_case(system, float(T), settings, out / f"{system}_T{int(round(T)):04d}",
                           seed=settings.seed + i, progress=progress)
        case["diffusion"] = _bead_diffusion(out / case["case_id"] / CASE_FILE)
        case["mobile_species"] = ["HOH"]
        (out / case["case_id"] / CASE_FILE).write_text(json.dumps(case, indent=1))
        cases.append(case)
    return _write_manifest(out, "cg", cases, {"settings": asdict(settings), "system": system})


def _bead_diffusion(case_json: Path) -> dict[str, Any]:
    """D of the molecule centres of mass (residue beads) from the written trajectory."""
    from engine_plugins.data.cg_mapping import residue_mapping
    from engine_plugins.data.trajectories import TrajectoryCase, msd_curve

    case = TrajectoryCase.load(case_json)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="DCDReader currently makes", category=DeprecationWarning)
        traj = case.read(mapping=residue_mapping)
    lags = np.unique(np.linspace(1, traj.n_frames - 1, min(20, traj.n_frames - 1)).astype(int))
    msd = msd_curve(traj.positions, lags)
    return {"HOH": diffusion_coefficient(lags * case.frame_interval, msd), "units": "angstrom^2/ps",
            "method": "molecule centre of mass, all time origins, linear fit t >= 0.2 t_max"}


# =========================================================================================== CLI
def _load_materials(values: Sequence[str] | None) -> list[Any] | None:
    if not values:
        return None
    out: list[Any] = []
    for v in values:
        if v.endswith(".json"):
            path = Path(v)
            if not path.is_file():
                raise FileNotFoundError(f"materials file {path} does not exist")
            data = json.loads(path.read_text())
            items = list(data.values()) if isinstance(data, dict) and "name" not in data else \
                (data if isinstance(data, list) else [data])
            for item in items:
                try:
                    out.append(TransportMaterial(**item))
                except TypeError as exc:
                    raise SimulationError(f"materials file {path}: {exc} (fields: name, loading, sigma_mf, "
                                          "eps_mf, description)") from None
        else:
            out.append(v)
    return out


def run_simulate_command(args: Any) -> int:
    """``engine-plugins simulate transport|cg ...`` (arguments from engine_plugins.cli)."""
    import sys

    from engine_plugins.engines.lammps_backend import LammpsError

    def overrides(names: dict[str, str]) -> dict[str, Any]:
        return {field: getattr(args, attr) for attr, field in names.items() if getattr(args, attr, None) is not None}

    try:
        if args.family == "transport":
            settings = replace(TRANSPORT_PRESETS[args.preset], **overrides(
                {"n_cells": "n_cells", "equil_steps": "equil_steps", "steps": "steps", "dump_every": "dump_every",
                 "timestep": "timestep", "ensemble": "ensemble", "seed": "seed", "ranks": "ranks"}))
            if args.unwrapped_reference:
                settings = replace(settings, unwrapped_reference=True)
            manifest = simulate_transport(args.output, materials=_load_materials(args.materials),
                                          temperatures=args.temperatures or TRANSPORT_TEMPERATURES,
                                          settings=settings, jobs=args.jobs, progress=args.progress)
        else:
            settings = replace(CG_PRESETS[args.preset], **overrides(
                {"box": "box", "equil_steps": "equil_steps", "steps": "steps", "report_every": "report_every",
                 "timestep": "timestep", "platform": "platform", "threads": "threads", "seed": "seed"}))
            manifest = simulate_cg(args.output, system=args.system, temperatures=args.temperatures or (300.0,),
                                   settings=settings, progress=args.progress)
    except (SimulationError, LammpsError, ValueError) as exc:
        print(f"engine-plugins simulate: error: {exc}", file=sys.stderr)
        return 2
    print(format_summary(manifest))
    print(f"wrote {len(manifest['cases'])} case(s) to {args.output} ({MANIFEST}, summary.json, <case>/{CASE_FILE})")
    return 0
