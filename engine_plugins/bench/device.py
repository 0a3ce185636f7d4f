"""``engine-plugins bench device``: every standalone path and every training loop, on the CPU and on
CUDA, in one run, with the agreement between the two.

Why: the engines' GPU paths (OpenMM's CUDA platform, a TorchScript model on a CUDA tensor) and
training on a GPU are where users get their speed, and a GPU result is only worth having if it is
the CPU's result. Each task runs once per device (``cpu``, and ``cuda`` when torch sees one):

* ``propagate-transport`` / ``propagate-cg``: learned jumps (propagator + corrector) of the built-in
  transport material and of the CG water box (``bench propagate``'s systems), tiled ``r x r x r``
  for each ``--replicas`` r. Figures: jumps per second, simulated ns per day. Agreement: largest
  ``|x_cuda - x_cpu|`` after 3 jumps of ``propagate()`` with the same seed (the per-atom noise is a
  counter-based hash of (seed, step, atom), the same numbers on every device).
* ``md-cg``: the all-atom OpenMM TIP3P reference of the CG system on the ``CPU`` and ``CUDA``
  platforms (needs OpenMM; the CUDA platform needs OpenMM's CUDA plugin).
* ``openmm-cg``: the learned OpenMM integrator (TorchForce + CustomIntegrator) on those platforms
  (needs openmm-torch built for the installed torch).
* ``generate``: GPFF generation of held-out molecules (``--molecules`` of them, all in one batch),
  deterministic ancestral sampler (eta 0). Figures: molecules per second. Agreement: largest
  ``|x_cuda - x_cpu|``.
* ``relax``: response-matching FIRE relaxations (standalone, ASE) of every crystal prototype from
  0.1 Å / 0.02-strain noise. Figures: seconds per relaxation. Agreement: largest difference of
  the final pseudo-energy per atom.
* ``train-propagator`` / ``train-gpff`` / ``train-rm``: optimizer steps per second of the shipped
  training configs (``engine_plugins/train/configs``), timed over ``--train-steps`` steps after 5
  warm-up steps, exported to a temporary folder (never over ``exported_models/``); the loss must
  stay finite, and the CUDA-trained artifact must load and run on the CPU.

A task whose data or package is missing is reported as skipped, with the fix. CPU rows use torch's
default thread count (printed). Output: a table; with ``--output`` also JSON and a PNG beside it
(throughput relative to the CPU per task and device).
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent.parent
CONFIGS = REPO / "engine_plugins" / "train" / "configs"
MODELS = REPO / "exported_models"
TASKS = ("propagate-transport", "propagate-cg", "md-cg", "openmm-cg", "train-propagator", "train-gpff", "train-rm",
         "generate", "relax")


class Skip(Exception):
    """A task that cannot run here (missing data or package); the message says how to fix it."""


def devices() -> List[str]:
    """``cpu``, and ``cuda`` when torch sees a CUDA device."""
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


# ------------------------------------------------------------------------------------ propagation
def tiled(pos: np.ndarray, box: np.ndarray, names: Sequence[str], r: int):
    """The periodic system repeated r x r x r (box rows = cell vectors): a bigger system with the same
    local structure, to see how each device scales with size."""
    shifts = np.array([[i, j, k] for i in range(r) for j in range(r) for k in range(r)], float) @ box
    return (pos[None] + shifts[:, None]).reshape(-1, 3), box * r, list(names) * len(shifts)


def _system(system: str):
    from engine_plugins.bench.propagate import transport_start, water_beads

    if system == "transport":
        pos, box, names, _ = transport_start("Li0.25-s1.55", 4)
        return pos, box, names, 800.0
    try:
        import openmm  # noqa: F401
    except ImportError as exc:
        raise Skip("the CG water start is built with OpenMM's Modeller; install openmm") from exc
    from engine_plugins.data.simulate import CG_PRESETS

    pos, box, names, _ = water_beads(CG_PRESETS["standard"].box)
    return pos, box, names, 300.0


def bench_propagation(system: str, device: str, replicas: Sequence[int], jumps: int) -> List[Dict[str, Any]]:
    """Learned jumps per second of the shipped propagator + corrector, one row per tiling."""
    from engine_plugins.bench.propagate import DEFAULT_MODELS, learned_standalone

    model, corrector = DEFAULT_MODELS[system]
    pos, box, names, temp = _system(system)
    rows = []
    for r in replicas:
        p, b, n = tiled(np.asarray(pos), np.asarray(box), names, r)
        row = learned_standalone(model, corrector, p, b, n, temp, jumps, device=device)
        row.update(task=f"propagate-{system}", replicas=r, rate=row["steps"] / row["wall_s"], unit="jumps/s",
                   ns_per_day=row["step_ps"] * row["steps"] / row["wall_s"] * 86400 / 1000)
        rows.append(row)
    return rows


def propagation_positions(system: str, device: str, jumps: int = 3) -> np.ndarray:
    """Positions after ``jumps`` jumps of :func:`propagate` (seed 7) on ``device``."""
    from engine_plugins.bench.propagate import DEFAULT_MODELS
    from engine_plugins.methods.propagator.sampler import propagate

    model, corrector = DEFAULT_MODELS[system]
    pos, box, names, temp = _system(system)
    r = propagate(str(model), pos, names, box, temp, n_jumps=jumps, seed=7, corrector=str(corrector),
                  device=device, progress=False)
    return r.positions[-1]


# ------------------------------------------------------------------------------------ OpenMM
def _platform(device: str) -> str:
    import openmm as mm

    name = "CUDA" if device == "cuda" else "CPU"
    names = [mm.Platform.getPlatform(i).getName() for i in range(mm.Platform.getNumPlatforms())]
    if name not in names:
        raise Skip(f"OpenMM has no {name} platform here (platforms: {', '.join(names)}); for CUDA install "
                   f"OpenMM's CUDA plugin (OpenMM-CUDA-13)")
    return name


def bench_md_cg(device: str, steps: int) -> List[Dict[str, Any]]:
    """The all-atom reference the CG propagator replaces, on the OpenMM platform of ``device``."""
    try:
        import openmm  # noqa: F401
    except ImportError as exc:
        raise Skip("install openmm") from exc
    from engine_plugins.bench.propagate import reference_water

    row = reference_water(300.0, steps, torch.get_num_threads(), platform=_platform(device))
    row.update(task="md-cg", device=device, replicas=1, rate=row["steps"] / row["wall_s"], unit="MD steps/s",
               ns_per_day=row["step_ps"] * row["steps"] / row["wall_s"] * 86400 / 1000)
    return [row]


def bench_openmm_cg(device: str, jumps: int) -> List[Dict[str, Any]]:
    """The learned OpenMM integrator on the platform of ``device`` (needs a loadable openmm-torch)."""
    from engine_plugins.engines.openmm_backend import import_openmmtorch

    try:
        import_openmmtorch()
    except Exception as exc:  # an ABI mismatch raises ImportError or OSError
        raise Skip(f"openmm-torch does not load ({type(exc).__name__}: {str(exc)[:160]}); install the "
                   f"openmm-torch build for this torch") from exc
    from engine_plugins.bench.propagate import DEFAULT_MODELS, learned_openmm

    model, corrector = DEFAULT_MODELS["cg"]
    pos, box, names, temp = _system("cg")
    row = learned_openmm(model, corrector, pos, box, names, temp, jumps, torch.get_num_threads(),
                         platform=_platform(device))
    row.update(task="openmm-cg", replicas=1, rate=row["steps"] / row["wall_s"], unit="jumps/s",
               ns_per_day=row["step_ps"] * row["steps"] / row["wall_s"] * 86400 / 1000)
    return [row]


# ------------------------------------------------------------------------------------ GPFF, RM
def _tasks(molecules_dir: str, n: int):
    from engine_plugins.methods.gpff.commands import dataset_tasks

    if not (Path(molecules_dir) / "test.extxyz").is_file():
        raise Skip(f"no molecule set at {molecules_dir}. Fix: engine-plugins data molecules {molecules_dir}")
    return dataset_tasks(molecules_dir, "test", n, 0)


def generated_positions(device: str, molecules_dir: str, n: int, nfe: int) -> tuple[list, float]:
    """GPFF positions of ``n`` held-out molecules (deterministic sampler) and the timed seconds."""
    from engine_plugins.methods.gpff.generate import generate

    tasks = _tasks(molecules_dir, n)
    model = MODELS / "gpff_qm9like.pt"
    generate(str(model), tasks[:2], nfe=2, sampler="ancestral", eta=0.0, seed=0, device=device)  # warm-up
    _sync(device)
    t0 = time.perf_counter()
    res = generate(str(model), tasks, nfe=nfe, sampler="ancestral", eta=0.0, seed=0, device=device)
    _sync(device)
    return res.positions, time.perf_counter() - t0


def bench_relax(device: str, names: Optional[Sequence[str]] = None) -> tuple[Dict[str, Any], np.ndarray]:
    """RM relaxations of every prototype from seeded noise; the final energies are the agreement check."""
    from engine_plugins.data.crystals import CRYSTAL_PROTOTYPES, build_crystal, perturb_crystal
    from engine_plugins.methods.response_matching.relax import relax_structure

    model = MODELS / "rm_crystals.pt"
    energies, t = [], 0.0
    for k, name in enumerate(names or CRYSTAL_PROTOTYPES):
        s = perturb_crystal(build_crystal(name), 0.1, 0.02, seed=k)
        t0 = time.perf_counter()
        r = relax_structure(str(model), s.symbols, s.positions, s.cell, device=device)
        t += time.perf_counter() - t0
        energies.append(r.energy / len(s.symbols))
    n = len(energies)
    return {"task": "relax", "path": f"RM FIRE relaxation, standalone ({device})", "device": device, "replicas": 1,
            "steps": n, "wall_s": t, "rate": n / t, "unit": "relaxations/s"}, np.array(energies)


# ------------------------------------------------------------------------------------ training
def _train_config(method: str, out: Path, device: str, steps: int, data: Dict[str, Optional[str]]) -> Dict[str, Any]:
    from engine_plugins.train.gpff import read_config_file

    name = {"propagator": "propagator_transport.json", "gpff": "gpff_qm9like.json", "rm": "rm_crystals.json"}[method]
    cfg = read_config_file(CONFIGS / name)
    cfg["output_dir"] = str(out)
    cfg["device"] = device
    export = {k: v for k, v in cfg.get("export", {}).items() if k != "copy_to"}  # never over exported_models/
    export["path"] = str(out / "model.pt")
    cfg["export"] = export
    tr = cfg.setdefault("train", {})
    tr.update(steps=steps, checkpoint_every=10 ** 9, val_every=10 ** 9, progress=False, max_minutes=None,
              resume=False, threads=torch.get_num_threads())
    tr.pop("init_from", None)
    if method == "propagator":
        cases = data.get("transport")
        if not cases or not Path(cases).exists():
            raise Skip(f"no transport trajectories at {cases}. Fix: engine-plugins simulate transport --output DIR, "
                       f"then --transport DIR")
        cfg["data"]["cases"] = cases
        cfg["data"]["split"] = {}
        cfg["data"]["max_val_pairs"] = 4
        tr["val_jump_frames"] = 1
    if method == "gpff":
        mols = data.get("molecules")
        if not mols or not (Path(mols) / "train.extxyz").is_file():
            raise Skip(f"no molecule set at {mols}. Fix: engine-plugins data molecules {mols}")
        cfg["data"]["dir"] = mols
        cfg["data"]["max_val"] = 8
        tr["val_repeats"] = 1
    return cfg


def bench_training(method: str, device: str, steps: int, data: Dict[str, Optional[str]], workdir: Path,
                   warmup: int = 5) -> Dict[str, Any]:
    from engine_plugins.train.gpff import train_gpff
    from engine_plugins.train.propagator import train_flow
    from engine_plugins.train.response_matching import train_rm

    out = workdir / f"train_{method}_{device}"
    cfg = _train_config(method, out, device, warmup + steps, data)
    stamps: Dict[int, float] = {}
    losses: List[float] = []

    def callback(step: int, stats: Dict[str, float]) -> None:
        _sync(device)
        stamps[step] = time.perf_counter()
        losses.append(float(stats.get("loss", math.nan)))

    train = {"propagator": train_flow, "gpff": train_gpff, "rm": train_rm}[method]
    artifact = train(cfg, callback=callback)
    timed = sorted(stamps)[warmup - 1:]
    wall = stamps[timed[-1]] - stamps[timed[0]]
    row = {"task": f"train-{method}", "path": f"training, {CONFIGS.name}/{method} config ({device})", "device": device,
           "replicas": 1, "steps": len(timed) - 1, "wall_s": wall, "rate": (len(timed) - 1) / wall,
           "unit": "optimizer steps/s", "loss_finite": bool(np.isfinite(losses).all()),
           "final_loss": losses[-1] if losses else None}
    row["artifact_runs_on_cpu"] = _artifact_runs_on_cpu(method, Path(artifact), data) if artifact else None
    return row


def _artifact_runs_on_cpu(method: str, path: Path, data: Dict[str, Optional[str]]) -> bool:
    """The exported file (trained on any device) loads and runs on the CPU: one relaxation step, one
    sampler step or one jump, with finite results."""
    if method == "rm":
        from engine_plugins.data.crystals import build_crystal, perturb_crystal
        from engine_plugins.methods.response_matching.relax import relax_structure

        s = perturb_crystal(build_crystal("NaCl-rocksalt"), 0.1, 0.02, seed=0)
        r = relax_structure(str(path), s.symbols, s.positions, s.cell, max_steps=2, device="cpu")
        return bool(np.isfinite(r.energy) and np.isfinite(r.positions).all())
    if method == "gpff":
        from engine_plugins.methods.gpff.samplers import sample

        r = sample(str(path), ["C", "H", "H", "H", "H"], nfe=2, device="cpu")
        return bool(torch.isfinite(r.positions).all())
    from engine_plugins.methods.propagator.sampler import propagate

    pos, box, names, temp = _system("transport")
    r = propagate(str(path), pos, names, box, temp, n_jumps=1, device="cpu", progress=False)
    return bool(np.isfinite(r.positions).all())


# ------------------------------------------------------------------------------------ driver
def run_bench(tasks: Sequence[str] = TASKS, *, replicas: Sequence[int] = (1, 3), jumps: int = 10, md_steps: int = 500,
              molecules: int = 64, nfe: int = 32, train_steps: int = 20, molecules_dir: str = "out/molecules",
              transport: Optional[str] = None, progress: bool = True,
              partial: Optional[Callable[[Dict[str, Any]], None]] = None) -> Dict[str, Any]:
    """Every task on every device; returns rows, skips, failures and agreement figures. A task that
    raises is reported under ``failed`` and the others still run; ``partial`` gets the rows so far
    after each task (so a run cut short keeps its figures)."""
    from tqdm.auto import tqdm

    devs = devices()
    rows: List[Dict[str, Any]] = []
    skipped: Dict[str, str] = {}
    failed: Dict[str, str] = {}
    agreement: Dict[str, Any] = {}
    data = {"transport": transport, "molecules": molecules_dir}
    with tempfile.TemporaryDirectory(prefix="ep_bench_device_") as tmp:
        work = Path(tmp)
        params = dict(replicas=replicas, jumps=jumps, md_steps=md_steps, molecules=molecules, nfe=nfe,
                      train_steps=train_steps, molecules_dir=molecules_dir, data=data, work=work)
        for task in tasks:
            if task not in TASKS:
                raise ValueError(f"unknown task {task!r}; choose from {', '.join(TASKS)}")
        jobs = [(task, d) for task in tasks for d in devs]
        results: Dict[tuple[str, str], Any] = {}
        for task, d in tqdm(jobs, desc="bench device", unit="task", disable=not progress):
            if task in skipped:
                continue
            try:
                results[(task, d)] = _run_task(task, d, params)
            except Skip as exc:
                skipped[task] = str(exc)
                continue
            except Exception as exc:  # noqa: BLE001 - one broken path must not hide the others' figures
                failed[f"{task} ({d})"] = f"{type(exc).__name__}: {exc}"
                continue
            rows += results[(task, d)]["rows"]
            if partial is not None:
                _add_vs_cpu(rows)
                partial({"devices": devs, "rows": rows, "skipped": skipped, "failed": failed})
        if "cuda" in devs:
            for task in tasks:
                a, b = results.get((task, "cpu")), results.get((task, "cuda"))
                if a is not None and b is not None and a.get("check") is not None:
                    agreement[task] = _compare(a["check"], b["check"])
    _add_vs_cpu(rows)
    return {"devices": devs, "cpu_threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name(0) if "cuda" in devs else None, "torch": torch.__version__,
            "rows": rows, "skipped": skipped, "failed": failed, "agreement": agreement}


def _add_vs_cpu(rows: List[Dict[str, Any]]) -> None:
    """Each row's rate over the CPU row of the same task and tiling (None without one)."""
    for r in rows:
        cpu = next((c for c in rows if c["task"] == r["task"] and c["device"] == "cpu"
                    and c.get("replicas") == r.get("replicas")), None)
        r["vs_cpu"] = r["rate"] / cpu["rate"] if cpu else None


def _compare(a: Any, b: Any) -> Dict[str, Any]:
    if isinstance(a, list):  # one array per molecule
        return {"max_abs_diff": max(float(np.abs(np.asarray(x) - np.asarray(y)).max()) for x, y in zip(a, b))}
    return {"max_abs_diff": float(np.abs(np.asarray(a) - np.asarray(b)).max())}


def _run_task(task: str, device: str, v: Dict[str, Any]) -> Dict[str, Any]:
    if task.startswith("propagate-"):
        system = task.split("-", 1)[1]
        rows = bench_propagation(system, device, v["replicas"], v["jumps"])
        return {"rows": rows, "check": propagation_positions(system, device)}
    if task == "md-cg":
        return {"rows": bench_md_cg(device, v["md_steps"])}
    if task == "openmm-cg":
        return {"rows": bench_openmm_cg(device, v["jumps"])}
    if task == "generate":
        pos, wall = generated_positions(device, v["molecules_dir"], v["molecules"], v["nfe"])
        n = len(pos)
        row = {"task": "generate", "path": f"GPFF generation, standalone ({device})", "device": device,
               "replicas": 1, "steps": n, "wall_s": wall, "rate": n / wall, "unit": "molecules/s",
               "atoms": int(sum(len(p) for p in pos)), "nfe": v["nfe"]}
        return {"rows": [row], "check": pos}
    if task == "relax":
        row, energies = bench_relax(device)
        return {"rows": [row], "check": energies}
    method = task.split("-", 1)[1]
    return {"rows": [bench_training(method, device, v["train_steps"], v["data"], v["work"])]}


def format_table(res: Dict[str, Any]) -> str:
    lines = [f"devices: {', '.join(res['devices'])}" + (f" ({res['gpu']})" if res["gpu"] else "")
             + f"; CPU threads {res['cpu_threads']}; torch {res['torch']}",
             f"{'task':<20}{'dev':<6}{'tile':>5}{'atoms':>8}{'rate':>12} {'unit':<20}{'ns/day':>10}{'vs cpu':>9}"]
    for r in res["rows"]:
        ns = f"{r['ns_per_day']:.4g}" if r.get("ns_per_day") is not None else ""
        vs = f"{r['vs_cpu']:.3g}x" if r.get("vs_cpu") is not None else ""
        atoms = str(r.get("atoms") or "")
        lines.append(f"{r['task']:<20}{r['device']:<6}{r.get('replicas', 1):>5}{atoms:>8}{r['rate']:>12.4g} "
                     f"{r['unit']:<20}{ns:>10}{vs:>9}")
        if "loss_finite" in r:
            lines.append(f"{'':<26}loss finite: {r['loss_finite']}, final loss {r['final_loss']:.4g}, "
                         f"artifact loads on the CPU: {r['artifact_runs_on_cpu']}")
    for t, a in res["agreement"].items():
        unit = "eV/atom" if t == "relax" else "Å"
        lines.append(f"agreement {t}: max |cuda - cpu| = {a['max_abs_diff']:.3g} {unit}")
    for t, why in res["skipped"].items():
        lines.append(f"skipped {t}: {why}")
    for t, why in res.get("failed", {}).items():
        lines.append(f"FAILED {t}: {why}")
    return "\n".join(lines)


def plot(res: Dict[str, Any], path: Path) -> Path:
    """Bars of each row's rate relative to its CPU row (log scale), one bar per device."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = []
    for r in res["rows"]:
        k = (r["task"], r.get("replicas", 1))
        if k not in keys:
            keys.append(k)
    labels = [f"{t}" + (f" x{rep}^3" if rep > 1 else "") for t, rep in keys]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.8 * len(keys) + 2), 4.0))
    width = 0.8 / max(1, len(res["devices"]))
    for i, dev in enumerate(res["devices"]):
        vals = [next((r.get("vs_cpu") or math.nan for r in res["rows"] if (r["task"], r.get("replicas", 1)) == k
                      and r["device"] == dev), math.nan) for k in keys]
        ax.bar(np.arange(len(keys)) + i * width, vals, width, label=dev)
    ax.set_yscale("log")
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xticks(np.arange(len(keys)) + 0.4 - width / 2, labels, rotation=35, ha="right")
    ax.set_ylabel("throughput relative to the CPU")
    ax.set_title(f"bench device: {res['gpu'] or 'CPU only'}, CPU {res['cpu_threads']} threads")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(tasks: Sequence[str] = TASKS, *, replicas: Sequence[int] = (1, 3), jumps: int = 10, md_steps: int = 500,
         molecules: int = 64, nfe: int = 32, train_steps: int = 20, molecules_dir: str = "out/molecules",
         transport: Optional[str] = None, output: Optional[str] = None, progress: bool = True) -> int:
    def partial(res: Dict[str, Any]) -> None:
        if output:
            Path(output).parent.mkdir(parents=True, exist_ok=True)
            Path(output).write_text(json.dumps(dict(res, partial=True), indent=1, default=str))

    try:
        res = run_bench(tasks, replicas=replicas, jumps=jumps, md_steps=md_steps, molecules=molecules, nfe=nfe,
                        train_steps=train_steps, molecules_dir=molecules_dir, transport=transport, progress=progress,
                        partial=partial)
    except ValueError as exc:
        print(f"engine-plugins bench device: error: {exc}", file=sys.stderr)
        return 2
    print(format_table(res))
    if res["failed"]:
        print("some tasks failed (above)", file=sys.stderr)
    if output:
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        Path(output).write_text(json.dumps(res, indent=1, default=str))
        png = plot(res, Path(output).with_suffix(".png"))
        print(f"wrote {output}, {png}")
    return 1 if res["failed"] else 0
