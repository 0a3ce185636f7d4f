"""Train a response-matching (RM) pseudo-force model on periodic crystals and export it.

Usage::

    engine-plugins train rm CONFIG.json              # --steps, --output-dir, --fresh, --max-minutes
    python -m engine_plugins.train.response_matching CONFIG.json

Config (JSON or YAML; every section optional, unknown keys are errors)::

    {"output_dir": "out/rm", "seed": 0, "device": "auto",
     "data":  {"source": "prototypes", "names": null, "train_min_width": 7.0},
     "model": {"r_max": 4.0, "num_layers": 2, "num_features": 16, ...},   # RMModelConfig
     "noise": {"sigma_min": 0.1, "sigma_max": 3.2, "strain_max": 0.1, ...}, # RMNoiseConfig
     "train": {"steps": 3000, "batch_size": 4, "lr": 5e-3, ...},
     "relax": {"fmax": 0.01, ...},                                        # RelaxDefaults (artifact)
     "export": {"path": "model.pt", "dtype": "float64"}}

Data: ``prototypes`` (the built-in crystal prototypes of ``engine_plugins.data.crystals``, each
as a supercell at least ``train_min_width`` A thick; the neighbour list takes every periodic image,
so cells thinner than twice the cutoff are fine in training) or ``files`` (``files``: periodic
structure files ASE reads, e.g. extxyz/cif/POSCAR, each frame a reference crystal). RM restores the
structures it was trained on: validation uses fresh noise on the same crystals, not held-out ones.

Training runs in ``model.model_dtype`` (float32 by default here, twice as fast on a CPU); the export
re-builds the network in ``export.dtype`` (float64 default) and copies the EMA weights into it, so
engines get a float64 model (exact virial checks, stable line searches).

Checkpoints (``checkpoints/last.pt`` every ``checkpoint_every`` steps and on exit, Ctrl-C or SIGTERM;
``step_XXXXXXXX.pt`` kept ``keep_checkpoints`` deep) hold model, EMA, optimizer, scheduler, the
noise generator's state, step and history; running the same command resumes, and an interrupted +
resumed run gives bit-identical weights to an uninterrupted one (tests/test_response_matching.py).
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch

from engine_plugins.methods.response_matching.noise import (
    CrystalRecord,
    NoisyCrystal,
    RMNoiseConfig,
    make_noisy_crystal,
    repulsion_radii,
    rm_loss,
)
from engine_plugins.options import check_known, options_from_dict
from engine_plugins.train.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from engine_plugins.train.gpff import read_config_file

CHECKPOINT_VERSION = 1


@dataclass
class RMDataOptions:
    source: str = "prototypes"
    names: Optional[List[str]] = None  # source "prototypes": a subset
    files: Optional[List[str]] = None  # source "files"
    train_min_width: float = 7.0


@dataclass
class RMTrainOptions:
    steps: int = 3000
    batch_size: int = 4
    lr: float = 5e-3
    lr_min_factor: float = 0.02
    warmup_steps: int = 50
    weight_decay: float = 0.0
    grad_clip: float = 10.0
    ema_decay: float = 0.99
    checkpoint_every: int = 200
    keep_checkpoints: int = 2
    val_every: int = 250
    val_sigmas: List[float] = field(default_factory=lambda: [0.1, 0.3, 1.0])
    val_strain: float = 0.02
    val_seed: int = 12345
    resume: Union[str, bool] = "auto"
    threads: Optional[int] = 1
    progress: bool = True
    max_minutes: Optional[float] = None


@dataclass
class RMTrainConfig:
    output_dir: str = "out/rm"
    seed: int = 0
    device: str = "auto"
    data: RMDataOptions = field(default_factory=RMDataOptions)
    model: Dict[str, Any] = field(default_factory=dict)
    noise: RMNoiseConfig = field(default_factory=RMNoiseConfig)
    train: RMTrainOptions = field(default_factory=RMTrainOptions)
    relax: Dict[str, Any] = field(default_factory=dict)
    export: Dict[str, Any] = field(default_factory=lambda: {"path": "model.pt", "dtype": "float64"})

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "RMTrainConfig":
        check_known(cls, d, "RM config")
        d = dict(d)
        data = options_from_dict(RMDataOptions, d.pop("data", {}) or {}, "RM config section 'data'")
        train = options_from_dict(RMTrainOptions, d.pop("train", {}) or {}, "RM config section 'train'")
        noise = RMNoiseConfig.from_dict(d.pop("noise", {}) or {})
        cfg = cls(data=data, train=train, noise=noise, **d)
        from engine_plugins.methods.response_matching.model import RelaxDefaults, RMModelConfig

        RMModelConfig.from_dict(cfg.model)
        RelaxDefaults.from_dict(cfg.relax)
        if cfg.export.get("dtype", "float64") not in ("float32", "float64"):
            raise ValueError(f"export.dtype '{cfg.export.get('dtype')}': use float32 or float64")
        return cfg

    @classmethod
    def load(cls, path: Union[str, Path]) -> "RMTrainConfig":
        return cls.from_dict(read_config_file(path))

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d["noise"] = asdict(self.noise)
        return d


# ------------------------------------------------------------------------------------------------
# data
# ------------------------------------------------------------------------------------------------
def _record(structure: Any, name: str) -> CrystalRecord:
    if structure.cell is None or not structure.periodic:
        raise ValueError(f"structure '{name}' has no periodic cell; RM crystal training needs periodic structures")
    cell = torch.tensor(structure.cell, dtype=torch.float64)
    frac = torch.tensor(structure.positions, dtype=torch.float64) @ torch.linalg.inv(cell)
    return CrystalRecord(name, list(structure.symbols), frac - torch.floor(frac), cell)


def load_crystals(opts: RMDataOptions) -> Tuple[List[CrystalRecord], str]:
    """Reference crystals (as supercells at least ``train_min_width`` thick) and a description."""
    from engine_plugins.data.crystals import CRYSTAL_PROTOTYPES, DATASET_NAME, build_crystal, supercell_repeats

    if opts.source == "prototypes":
        names = opts.names or list(CRYSTAL_PROTOTYPES)
        recs = [_record(build_crystal(n, cutoff=0.5 * opts.train_min_width, factor=2.0), n) for n in names]
        desc = f"{DATASET_NAME}: {', '.join(names)}"
    elif opts.source == "files":
        if not opts.files:
            raise ValueError("data.source 'files' needs data.files (periodic structure files)")
        from engine_plugins.data.molecules import read_structures

        recs = []
        for p in opts.files:
            for k, s in enumerate(read_structures(p)):
                if s.cell is None or not s.periodic:
                    raise ValueError(f"{p} frame {k}: not periodic; RM crystal training needs cells")
                reps = supercell_repeats(s.cell, 0.5 * opts.train_min_width)
                atoms = s.to_ase().repeat(reps)
                from engine_plugins.data.molecules import Structure

                recs.append(_record(Structure.from_ase(atoms), s.name or f"{Path(p).stem}_{k}"))
        desc = f"files: {opts.files}"
    else:
        raise ValueError(f"data.source '{opts.source}': use prototypes or files")
    if not recs:
        raise ValueError("no training crystals")
    return recs, desc


class CrystalBatcher:
    """Noisy batches of reference crystals as one disjoint graph."""

    def __init__(self, records: Sequence[CrystalRecord], type_names: Sequence[str], cutoff: float,
                 noise: RMNoiseConfig) -> None:
        self.records = list(records)
        index = {t: i for i, t in enumerate(type_names)}
        self.types = []
        for r in self.records:
            unknown = sorted({s for s in r.symbols if s not in index})
            if unknown:
                raise ValueError(f"crystal '{r.name}' has element(s) {unknown} not in model.type_names "
                                 f"{list(type_names)}. Fix: add them to model.type_names or drop the crystal")
            self.types.append(torch.tensor([index[s] for s in r.symbols], dtype=torch.long))
        self.cutoff = float(cutoff)
        self.noise = noise
        self.radii = repulsion_radii(type_names, noise.repulsion_radius_factor)

    def noisy(self, k: int, gen: torch.Generator, sigma: Optional[float] = None,
              strain: Optional[float] = None) -> NoisyCrystal:
        return make_noisy_crystal(self.records[k], self.types[k], self.cutoff, self.radii, self.noise, gen,
                                  sigma=sigma, strain_scale=strain)

    @staticmethod
    def collate(batch: Sequence[NoisyCrystal], device: torch.device, dtype: torch.dtype
                ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(x, types, edge_index, edge_shift, node_batch) of the disjoint union."""
        xs, ts, eis, ess, nb = [], [], [], [], []
        off = 0
        for b, nc in enumerate(batch):
            xs.append(nc.x)
            ts.append(nc.types)
            eis.append(nc.edge_index + off)
            ess.append(nc.edge_shift)
            nb.append(torch.full((nc.x.shape[0],), b, dtype=torch.long))
            off += nc.x.shape[0]
        return (torch.cat(xs).to(device, dtype), torch.cat(ts).to(device), torch.cat(eis, 1).to(device),
                torch.cat(ess).to(device, dtype), torch.cat(nb).to(device))

    def avg_num_neighbors(self) -> float:
        from engine_plugins.methods.response_matching.noise import periodic_neighbor_list

        total, atoms = 0, 0
        for r in self.records:
            ei, _ = periodic_neighbor_list(r.ref_frac @ r.ref_cell, r.ref_cell, self.cutoff)
            total += ei.shape[1]
            atoms += r.n_atoms
        return total / max(1, atoms)


def predict_batch(model: torch.nn.Module, batch: Sequence[NoisyCrystal], device: torch.device, dtype: torch.dtype
                  ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(atom_energy, forces, D = dE/d eta per structure [B, 3, 3], node_batch) from one model call."""
    x, types, ei, es, nb = CrystalBatcher.collate(batch, device, dtype)
    e, f, gs = model.edge_gradients(x, types, ei, es, x.shape[0])
    vec = (x[ei[1]] - x[ei[0]] + es).to(gs.dtype)
    outer = (vec.unsqueeze(2) * gs.unsqueeze(1)).reshape(-1, 9)
    dmat = torch.zeros(len(batch), 9, dtype=gs.dtype, device=device).index_add_(0, nb[ei[0]], outer).view(-1, 3, 3)
    return e, f, dmat, nb


# ------------------------------------------------------------------------------------------------
# training
# ------------------------------------------------------------------------------------------------
class _EMA:
    """Exponential moving average of the parameters (warm-up ``min(decay, (1+t)/(10+t))``)."""

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        self.decay = float(decay)
        self.shadow = {k: p.detach().clone() for k, p in model.named_parameters()}

    def update(self, model: torch.nn.Module, step: int) -> None:
        d = min(self.decay, (1.0 + step) / (10.0 + step))
        with torch.no_grad():
            for k, p in model.named_parameters():
                self.shadow[k].mul_(d).add_(p.detach(), alpha=1.0 - d)

    def swap(self, model: torch.nn.Module) -> None:
        with torch.no_grad():
            for k, p in model.named_parameters():
                tmp = p.detach().clone()
                p.copy_(self.shadow[k])
                self.shadow[k].copy_(tmp)


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _lr_lambda(opts: RMTrainOptions) -> Callable[[int], float]:
    def f(step: int) -> float:
        if step < opts.warmup_steps:
            return (step + 1) / max(1, opts.warmup_steps)
        t = min(1.0, (step - opts.warmup_steps) / max(1, opts.steps - opts.warmup_steps))
        return opts.lr_min_factor + (1 - opts.lr_min_factor) * 0.5 * (1 + math.cos(math.pi * t))
    return f


def validate(model: torch.nn.Module, batcher: CrystalBatcher, sigmas: Sequence[float], strain: float, seed: int,
             device: torch.device, dtype: torch.dtype) -> Dict[str, Any]:
    """Per sigma: loss, force RMSE relative to the target RMS, and relative error of the strain derivative."""
    was = model.training
    model.eval()
    g = torch.Generator().manual_seed(int(seed))
    out: Dict[str, Any] = {"per_sigma": {}}
    losses = []
    for s in sigmas:
        batch = [batcher.noisy(k, g, sigma=float(s), strain=float(strain)) for k in range(len(batcher.records))]
        _, f, dmat, nb = predict_batch(model, batch, device, dtype)
        f, dmat = f.detach().double().cpu(), dmat.detach().double().cpu()
        loss, parts = rm_loss(f, dmat, batch, batcher.noise, nb.cpu())
        tf = torch.cat([b.forces for b in batch])
        td = torch.stack([b.dmat for b in batch])
        out["per_sigma"][f"{s:g}"] = {
            "loss": float(loss),
            "force_rmse": float((f - tf).square().mean().sqrt()),
            "force_rel_rmse": float((f - tf).square().mean().sqrt() / tf.square().mean().sqrt()),
            "stress_rel_err": float((dmat - td).norm() / td.norm()),
        }
        losses.append(float(loss))
    out["loss"] = sum(losses) / len(losses)
    model.train(was)
    return out


def _same_run(saved: Dict[str, Any], cfg: RMTrainConfig) -> None:
    now = cfg.to_dict()
    for key in ("seed", "data", "model", "noise"):
        if saved["config"].get(key) != now.get(key):
            raise ValueError(f"cannot resume: config '{key}' differs from the checkpoint's "
                             f"({saved['config'].get(key)!r} vs {now.get(key)!r}). Fix: use a new output_dir "
                             "or train.resume: false")
    for key in ("batch_size", "lr", "lr_min_factor", "warmup_steps", "weight_decay", "ema_decay"):
        if saved["config"]["train"].get(key) != now["train"].get(key):
            raise ValueError(f"cannot resume exactly: train.{key} differs from the checkpoint's. Fix: keep it, "
                             "or start a new output_dir")


def train_rm(config: Union[RMTrainConfig, Dict[str, Any], str, Path], *,
             callback: Optional[Callable[[int, Dict[str, float]], None]] = None) -> Path:
    """Train (or resume) and export; returns the artifact path.

    ``callback(step, stats)`` runs after every optimizer step (tests use it to interrupt a run).
    ``train.threads`` (default 1) sets torch's CPU threads for the run and is restored afterwards.
    """
    if isinstance(config, (str, Path)):
        cfg = RMTrainConfig.load(config)
    elif isinstance(config, dict):
        cfg = RMTrainConfig.from_dict(config)
    else:
        cfg = config
    threads_before = torch.get_num_threads()
    if cfg.train.threads:
        torch.set_num_threads(int(cfg.train.threads))
    try:
        return _train(cfg, callback)
    finally:
        torch.set_num_threads(threads_before)


def _train(cfg: RMTrainConfig, callback: Optional[Callable[[int, Dict[str, float]], None]]) -> Path:
    from engine_plugins.export.artifact import export_artifact
    from engine_plugins.methods.response_matching.model import (
        RelaxDefaults,
        RMModelConfig,
        build_rm_model,
        rm_metadata,
        script_rm_model,
    )

    opts = cfg.train
    out = Path(cfg.output_dir)
    ckpt_dir = out / "checkpoints"
    device = _device(cfg.device)

    records, data_name = load_crystals(cfg.data)
    model_opts = dict(cfg.model)
    model_opts.setdefault("model_dtype", "float32")
    if not model_opts.get("type_names"):
        model_opts["type_names"] = sorted({s for r in records for s in r.symbols})
    mcfg = RMModelConfig.from_dict(model_opts)
    batcher = CrystalBatcher(records, mcfg.type_names, mcfg.r_max, cfg.noise)
    if mcfg.avg_num_neighbors is None:
        mcfg.avg_num_neighbors = round(batcher.avg_num_neighbors(), 4)
    relax_defaults = RelaxDefaults.from_dict(cfg.relax)
    dtype = getattr(torch, mcfg.model_dtype)

    resume_path: Optional[Path] = None
    if isinstance(opts.resume, str) and opts.resume != "auto":
        resume_path = Path(opts.resume)
    elif opts.resume is True or opts.resume == "auto":
        if (ckpt_dir / "last.pt").is_file():
            resume_path = ckpt_dir / "last.pt"
        elif opts.resume is True:
            raise FileNotFoundError(f"train.resume is true but {ckpt_dir / 'last.pt'} does not exist")
    saved = load_checkpoint(resume_path) if resume_path is not None else None
    if saved is not None:
        _same_run(saved, cfg)
        mcfg = RMModelConfig.from_dict(saved["model_config"])

    model = build_rm_model(mcfg, cfg.noise).to(device)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=opts.lr, weight_decay=opts.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(opts))
    ema = _EMA(model, opts.ema_decay)
    gen = torch.Generator().manual_seed(int(cfg.seed))
    history: List[Dict[str, Any]] = []
    step = 0
    if saved is not None:
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        sched.load_state_dict(saved["scheduler"])
        sched.lr_lambdas[0] = _lr_lambda(opts)
        for k, v in saved["ema"].items():
            ema.shadow[k].copy_(v)
        set_rng_state(saved["rng"], {"train": gen})
        step = int(saved["step"])
        history = list(saved["history"])

    def checkpoint(periodic: bool) -> None:
        state = {"version": CHECKPOINT_VERSION, "step": step, "model": model.state_dict(),
                 "ema": {k: v.clone() for k, v in ema.shadow.items()}, "optimizer": opt.state_dict(),
                 "scheduler": sched.state_dict(), "rng": rng_state({"train": gen}), "config": cfg.to_dict(),
                 "model_config": mcfg.to_dict(), "history": history}
        save_checkpoint(state, ckpt_dir / "last.pt")
        if periodic:
            save_checkpoint(state, ckpt_dir / f"step_{step:08d}.pt")
            for p in sorted(ckpt_dir.glob("step_*.pt"))[:-max(1, opts.keep_checkpoints)]:
                p.unlink(missing_ok=True)
        (out / "history.json").write_text(json.dumps(history, indent=1))

    def run_validation() -> Dict[str, Any]:
        ema.swap(model)
        try:
            return validate(model, batcher, opts.val_sigmas, opts.val_strain, opts.val_seed, device, dtype)
        finally:
            ema.swap(model)

    from tqdm.auto import tqdm

    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
    t_start = time.time()
    bar = tqdm(total=opts.steps, initial=step, desc="rm", unit="step", disable=not opts.progress, dynamic_ncols=True)
    running: Optional[float] = None
    last_val = history[-1].get("val_loss") if history else None
    stopped_early = False
    try:
        while step < opts.steps:
            idx = torch.randint(len(records), (opts.batch_size,), generator=gen).tolist()
            batch = [batcher.noisy(k, gen) for k in idx]
            _, f, dmat, nb = predict_batch(model, batch, device, dtype)
            loss, parts = rm_loss(f, dmat, batch, cfg.noise, nb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            gnorm = torch.nn.utils.clip_grad_norm_(params, opts.grad_clip) if opts.grad_clip else torch.tensor(0.0)
            opt.step()
            sched.step()
            step += 1
            ema.update(model, step)
            lv = float(loss.detach())
            if not math.isfinite(lv):
                raise FloatingPointError(f"loss is {lv} at step {step}; lower train.lr or check the data")
            running = lv if running is None else 0.98 * running + 0.02 * lv
            stats = {"step": step, "loss": lv, "lr": sched.get_last_lr()[0], "grad_norm": float(gnorm),
                     "force_loss": float(parts["force_loss"]), "stress_loss": float(parts["stress_loss"])}
            if step % opts.val_every == 0 or step == opts.steps:
                res = run_validation()
                last_val = res["loss"]
                history.append({**stats, "loss_avg": running, "val_loss": last_val, "val": res["per_sigma"],
                                "elapsed_s": round(time.time() - t_start, 2)})
            bar.update(1)
            bar.set_postfix(loss=f"{running:.3g}", lr=f"{stats['lr']:.2g}",
                            val="-" if last_val is None else f"{last_val:.3g}")
            if step % opts.checkpoint_every == 0:
                checkpoint(periodic=True)
            if callback is not None:
                callback(step, stats)
            if opts.max_minutes is not None and time.time() - t_start > 60 * opts.max_minutes:
                stopped_early = True
                break
    except KeyboardInterrupt:
        bar.close()
        checkpoint(periodic=False)
        print(f"\nrm: interrupted at step {step}; checkpoint {ckpt_dir / 'last.pt'} saved, run the same command "
              "to resume", file=sys.stderr)
        raise
    bar.close()
    checkpoint(periodic=False)

    # export the EMA weights, re-built in the export dtype
    export_dtype = cfg.export.get("dtype", "float64")
    ecfg = RMModelConfig.from_dict({**mcfg.to_dict(), "model_dtype": export_dtype})
    emodel = build_rm_model(ecfg, cfg.noise)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    state.update({k: v.detach().cpu() for k, v in ema.shadow.items()})
    emodel.load_state_dict(state)
    emodel.eval()
    final_val = history[-1] if history else {}
    provenance = {
        "data_set": data_name, "crystals": [r.name for r in records], "steps": step, "stopped_early": stopped_early,
        "train_dtype": mcfg.model_dtype, "train_config": cfg.to_dict(), "ema_decay": opts.ema_decay,
        "train_minutes": round((time.time() - t_start) / 60.0, 2),
        "metrics": {"val_loss": final_val.get("val_loss"), "val": final_val.get("val")},
    }
    meta = rm_metadata(ecfg, cfg.noise, relax_defaults, provenance=provenance)
    path = Path(cfg.export.get("path", "model.pt"))
    path = path if path.is_absolute() else out / path
    export_artifact(script_rm_model(emodel), meta, path)
    return path


# ------------------------------------------------------------------------------------------------
# command line
# ------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="engine-plugins train rm",
                                description="train a response-matching crystal pseudo-force model and export it "
                                            "(resumes by default)")
    p.add_argument("config", help="JSON or YAML config (see engine_plugins.train.response_matching)")
    p.add_argument("--steps", type=int, help="override train.steps (extends a finished run when larger)")
    p.add_argument("--output-dir", help="override output_dir")
    p.add_argument("--fresh", action="store_true", help="do not resume from output_dir/checkpoints/last.pt")
    p.add_argument("--max-minutes", type=float, help="stop with a checkpoint after this wall time")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    raw = read_config_file(args.config)
    raw.setdefault("train", {})
    if args.steps is not None:
        raw["train"]["steps"] = args.steps
    if args.output_dir:
        raw["output_dir"] = args.output_dir
    if args.fresh:
        raw["train"]["resume"] = False
    if args.max_minutes is not None:
        raw["train"]["max_minutes"] = args.max_minutes
    if args.no_progress:
        raw["train"]["progress"] = False
    cfg = RMTrainConfig.from_dict(raw)

    def _term(signum, frame):  # noqa: ARG001 - SIGTERM: checkpoint like Ctrl-C
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, _term)
    try:
        path = train_rm(cfg)
    except KeyboardInterrupt:
        return 130
    finally:
        signal.signal(signal.SIGTERM, old)
    print(f"wrote {path}")
    hist = json.loads((Path(cfg.output_dir) / "history.json").read_text())
    if hist:
        print(json.dumps({k: hist[-1][k] for k in ("step", "loss_avg", "val_loss", "val") if k in hist[-1]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
