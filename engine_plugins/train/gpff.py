"""Train a GPFF pseudo-force model on clean molecules and export it as a ``pseudo_force`` artifact.

Usage::

    engine-plugins train gpff CONFIG.json            # or .yaml; --steps, --output-dir, --fresh
    python -m engine_plugins.train.gpff CONFIG.json

    from engine_plugins.train.gpff import train_gpff
    artifact_path = train_gpff("config.json")        # or a dict / GPFFTrainConfig

Config (JSON or YAML; every section optional, unknown keys are errors)::

    {"output_dir": "out/gpff", "seed": 0, "device": "auto",
     "data":    {"source": "ase_g2", "max_heavy": 9, "val_fraction": 0.15},
     "model":   {"head": "conservative", "r_max": 12.0, "num_layers": 3, ...},   # GPFFModelConfig
     "noise":   {"sigma_min": 0.05, "sigma_max": 3.0, ...},                      # NoiseConfig
     "train":   {"steps": 2000, "batch_size": 8, "lr": 2e-3, ...},               # TrainOptions
     "sampler": {"sampler": "heun", "nfe": 32},                                  # SamplerDefaults
     "export":  {"path": "model.pt"}}

Data sources: ``ase_g2`` (closed-shell C/H/N/O/F molecules of ASE's G2 collection, its own
geometries; split by molecule), ``ase`` (``names``: ``ase.build.molecule`` names), ``files``
(``train``/``val`` lists of structure files), ``qm9like`` (``dir``: a set built by
``python -m engine_plugins.data.molecules``; its train/val splits).

Every ``checkpoint_every`` steps and on exit (end, Ctrl-C, SIGTERM under the CLI) the loop writes
``checkpoints/last.pt`` (model, EMA, optimizer, scheduler, RNG states, step, history); periodic
checkpoints are also kept as ``checkpoints/step_XXXXXXXX.pt`` (the newest ``keep_checkpoints``).
Running the same command again resumes from ``last.pt`` (``resume: "auto"``), and training
k steps, being killed and resuming gives bit-identical weights to training straight through (all
randomness comes from one seeded ``torch.Generator`` whose state is checkpointed).
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

from engine_plugins.methods.gpff.noise import (
    NoiseConfig,
    gpff_loss,
    make_noisy_batch,
    rmsd,
)
from engine_plugins.options import check_known, options_from_dict
from engine_plugins.train.checkpoint import (load_checkpoint, load_init_state, read_init_source, rng_state,
                                             save_checkpoint, set_rng_state)

CHECKPOINT_VERSION = 1
ALLOWED_ELEMENTS = ("H", "C", "N", "O", "F")


# ------------------------------------------------------------------------------------------------
# configuration
# ------------------------------------------------------------------------------------------------
@dataclass
class DataOptions:
    source: str = "ase_g2"
    names: Optional[List[str]] = None  # source "ase"
    train: Optional[List[str]] = None  # source "files"
    val: Optional[List[str]] = None  # source "files"
    dir: Optional[str] = None  # source "qm9like"
    max_heavy: int = 9
    max_atoms: int = 29
    val_fraction: float = 0.15
    split_seed: int = 0
    max_train: Optional[int] = None
    max_val: Optional[int] = None


@dataclass
class TrainOptions:
    steps: int = 2000
    batch_size: int = 8
    lr: float = 2e-3
    lr_min_factor: float = 0.05
    warmup_steps: int = 50
    weight_decay: float = 0.0
    grad_clip: float = 10.0
    ema_decay: float = 0.995
    energy_weight: float = 0.1  # auxiliary energy term (direct head only)
    checkpoint_every: int = 200
    keep_checkpoints: int = 3
    val_every: int = 200
    val_sigmas: List[float] = field(default_factory=lambda: [0.05, 0.1, 0.3, 1.0, 3.0])
    val_repeats: int = 2
    val_seed: int = 12345
    resume: Union[str, bool] = "auto"  # "auto" | True | False | a checkpoint path
    threads: Optional[int] = None
    progress: bool = True
    max_minutes: Optional[float] = None  # stop (with a checkpoint) after this wall time
    # a new run that starts from another run's (EMA) weights, a training checkpoint or an exported
    # gpff artifact: a curriculum stage with another noise ladder or data set; the model config comes
    # from that source (a model section that contradicts it is an error), optimizer and steps start afresh
    init_from: Optional[str] = None


@dataclass
class GPFFTrainConfig:
    output_dir: str = "out/gpff"
    seed: int = 0
    device: str = "auto"
    data: DataOptions = field(default_factory=DataOptions)
    model: Dict[str, Any] = field(default_factory=dict)
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    train: TrainOptions = field(default_factory=TrainOptions)
    sampler: Dict[str, Any] = field(default_factory=dict)
    export: Dict[str, Any] = field(default_factory=lambda: {"path": "model.pt"})

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "GPFFTrainConfig":
        check_known(cls, d, "GPFF config")
        d = dict(d)
        data = options_from_dict(DataOptions, d.pop("data", {}) or {}, "GPFF config section 'data'")
        train = options_from_dict(TrainOptions, d.pop("train", {}) or {}, "GPFF config section 'train'")
        noise = NoiseConfig.from_dict(d.pop("noise", {}) or {})
        cfg = cls(data=data, train=train, noise=noise, **d)
        from engine_plugins.methods.gpff.model import GPFFModelConfig, SamplerDefaults

        GPFFModelConfig.from_dict(cfg.model)  # validate early
        SamplerDefaults.from_dict(cfg.sampler)
        return cfg

    @classmethod
    def load(cls, path: Union[str, Path]) -> "GPFFTrainConfig":
        return cls.from_dict(read_config_file(path))

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d["noise"] = asdict(self.noise)
        return d


def read_config_file(path: Union[str, Path]) -> Dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file '{path}' does not exist")
    text = path.read_text()
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError as exc:  # pragma: no cover - pyyaml comes with nequip's dependencies
            raise RuntimeError("reading a YAML config needs PyYAML (pip install pyyaml); or use JSON") from exc
        data = yaml.safe_load(text) or {}
    else:
        data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError(f"config file '{path}' does not hold a mapping")
    return data


# ------------------------------------------------------------------------------------------------
# data
# ------------------------------------------------------------------------------------------------
@dataclass
class Molecule:
    name: str
    symbols: List[str]
    positions: torch.Tensor  # [N, 3] float64, A


def _closed_shell_g2(max_heavy: int, max_atoms: int) -> List[Molecule]:
    from ase.collections import g2

    out = []
    for atoms in g2:
        sym = atoms.get_chemical_symbols()
        if not set(sym) <= set(ALLOWED_ELEMENTS) or len(sym) < 2 or len(sym) > max_atoms:
            continue
        if abs(atoms.get_initial_magnetic_moments()).sum() > 0 or atoms.get_initial_charges().any():
            continue
        if sum(s != "H" for s in sym) > max_heavy:
            continue
        out.append(Molecule(atoms.info.get("name", atoms.get_chemical_formula()), sym,
                            torch.tensor(atoms.positions, dtype=torch.float64)))
    return sorted(out, key=lambda m: m.name)


def _split(mols: List[Molecule], frac: float, seed: int) -> Tuple[List[Molecule], List[Molecule]]:
    if len(mols) < 2:
        return mols, []
    g = torch.Generator().manual_seed(int(seed))
    perm = torch.randperm(len(mols), generator=g).tolist()
    n_val = max(1, int(round(frac * len(mols)))) if frac > 0 else 0
    val = [mols[i] for i in sorted(perm[:n_val])]
    train = [mols[i] for i in sorted(perm[n_val:])]
    return train, val


def _from_structures(structs: Sequence[Any], prefix: str) -> List[Molecule]:
    out = []
    for k, s in enumerate(structs):
        if hasattr(s, "symbols") and hasattr(s, "positions") and not callable(getattr(s, "positions")):
            sym, pos, name = list(s.symbols), s.positions, getattr(s, "name", "") or getattr(s, "smiles", "")
        else:  # ase.Atoms
            sym, pos, name = s.get_chemical_symbols(), s.positions, s.info.get("name", "")
        if getattr(s, "pbc", None) is not None and any(bool(p) for p in (s.pbc if hasattr(s, "pbc") else ())):
            raise ValueError(f"{prefix}[{k}] is periodic; GPFF molecule training takes molecules (no cell)")
        out.append(Molecule(str(name or f"{prefix}{k}"), [str(x) for x in sym],
                            torch.as_tensor(pos, dtype=torch.float64).reshape(-1, 3).clone()))
    return out


def _read_files(paths: Sequence[str], prefix: str) -> List[Molecule]:
    structs: List[Any] = []
    for p in paths:
        try:
            from engine_plugins.data.molecules import read_structures  # the project's reader, when present
        except ImportError:
            import ase.io

            structs += list(ase.io.read(p, index=":"))
        else:
            structs += list(read_structures(p))
    return _from_structures(structs, prefix)


def load_molecules(opts: DataOptions) -> Tuple[List[Molecule], List[Molecule], str]:
    """(train, val, description) for the data options (split by molecule)."""
    if opts.source == "ase_g2":
        mols = _closed_shell_g2(opts.max_heavy, opts.max_atoms)
        train, val = _split(mols, opts.val_fraction, opts.split_seed)
        desc = "ASE G2 collection, closed-shell CHNOF molecules (ASE geometries)"
    elif opts.source == "ase":
        from ase.build import molecule

        if not opts.names:
            raise ValueError("data.source 'ase' needs data.names (ase.build.molecule names)")
        mols = [Molecule(n, molecule(n).get_chemical_symbols(), torch.tensor(molecule(n).positions))
                for n in opts.names]
        train, val = _split(mols, opts.val_fraction, opts.split_seed)
        desc = f"ase.build.molecule: {', '.join(opts.names)}"
    elif opts.source == "files":
        if not opts.train:
            raise ValueError("data.source 'files' needs data.train (structure files)")
        train = _read_files(opts.train, "train")
        val = _read_files(opts.val, "val") if opts.val else []
        if not val:
            train, val = _split(train, opts.val_fraction, opts.split_seed)
        desc = f"files: train {opts.train}, val {opts.val or 'split from train'}"
    elif opts.source == "qm9like":
        if not opts.dir:
            raise ValueError("data.source 'qm9like' needs data.dir (built by python -m engine_plugins.data.molecules)")
        try:
            from engine_plugins.data.molecules import DATASET_NAME, load_molecule_dataset
        except ImportError as exc:
            raise RuntimeError("data.source 'qm9like' needs engine_plugins.data.molecules") from exc
        train = _from_structures(load_molecule_dataset(opts.dir, "train"), "train")
        val = _from_structures(load_molecule_dataset(opts.dir, "val"), "val")
        desc = f"{DATASET_NAME} from {opts.dir}"
    else:
        raise ValueError(f"data.source '{opts.source}': use ase_g2, ase, files or qm9like")
    if opts.max_train is not None:
        train = train[: opts.max_train]
    if opts.max_val is not None:
        val = val[: opts.max_val]
    for m in train + val:
        if m.positions.shape[0] > opts.max_atoms:
            raise ValueError(f"molecule '{m.name}' has {m.positions.shape[0]} atoms > data.max_atoms={opts.max_atoms}")
        if not bool(torch.isfinite(m.positions).all()):
            raise ValueError(f"molecule '{m.name}' has non-finite coordinates")
    if not train:
        raise ValueError("no training molecules")
    return train, val, desc


class MoleculeBatcher:
    """Flat batches of molecules (types, clean positions, molecule index) and their all-pairs graphs."""

    def __init__(self, mols: Sequence[Molecule], type_names: Sequence[str], cutoff: float) -> None:
        self.mols = list(mols)
        self.cutoff = float(cutoff)
        index = {t: i for i, t in enumerate(type_names)}
        self.types: List[torch.Tensor] = []
        for m in self.mols:
            unknown = sorted({s for s in m.symbols if s not in index})
            if unknown:
                raise ValueError(f"molecule '{m.name}' has element(s) {unknown} not in model.type_names "
                                 f"{list(type_names)}. Fix: add them to model.type_names or drop the molecule")
            self.types.append(torch.tensor([index[s] for s in m.symbols], dtype=torch.long))
        self._pairs: Dict[int, Tuple[torch.Tensor, torch.Tensor]] = {}

    def pairs(self, n: int) -> Tuple[torch.Tensor, torch.Tensor]:
        if n not in self._pairs:
            i = torch.arange(n).repeat_interleave(n)
            j = torch.arange(n).repeat(n)
            keep = i != j
            self._pairs[n] = (i[keep], j[keep])
        return self._pairs[n]

    def collate(self, idx: Sequence[int]) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(x0 [N, 3] float64, types [N], batch [N], candidate pairs [2, P]) for molecules ``idx``."""
        xs, ts, bs, pi, pj = [], [], [], [], []
        off = 0
        for b, k in enumerate(idx):
            n = self.mols[k].positions.shape[0]
            xs.append(self.mols[k].positions)
            ts.append(self.types[k])
            bs.append(torch.full((n,), b, dtype=torch.long))
            i, j = self.pairs(n)
            pi.append(i + off)
            pj.append(j + off)
            off += n
        return torch.cat(xs), torch.cat(ts), torch.cat(bs), torch.stack([torch.cat(pi), torch.cat(pj)])

    def graph(self, x: torch.Tensor, pairs: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        d = x[pairs[1]] - x[pairs[0]]
        keep = d.square().sum(-1) < self.cutoff ** 2
        ei = pairs[:, keep]
        return ei, torch.zeros(ei.shape[1], 3, dtype=x.dtype, device=x.device)

    def avg_num_neighbors(self) -> float:
        total, atoms = 0, 0
        for m in self.mols:
            d = torch.cdist(m.positions, m.positions)
            total += int((d < self.cutoff).sum()) - m.positions.shape[0]
            atoms += m.positions.shape[0]
        return total / max(1, atoms)


# ------------------------------------------------------------------------------------------------
# training
# ------------------------------------------------------------------------------------------------
class _EMA:
    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        self.decay = float(decay)
        self.shadow = {k: p.detach().clone() for k, p in model.named_parameters()}

    def update(self, model: torch.nn.Module, step: int) -> None:
        d = min(self.decay, (1.0 + step) / (10.0 + step))
        with torch.no_grad():
            for k, p in model.named_parameters():
                self.shadow[k].mul_(d).add_(p.detach(), alpha=1.0 - d)

    def swap(self, model: torch.nn.Module) -> None:
        """Exchange the model's parameters with the EMA ones (call twice to undo)."""
        with torch.no_grad():
            for k, p in model.named_parameters():
                tmp = p.detach().clone()
                p.copy_(self.shadow[k])
                self.shadow[k].copy_(tmp)


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _lr_lambda(opts: TrainOptions) -> Callable[[int], float]:
    def f(step: int) -> float:
        if step < opts.warmup_steps:
            return (step + 1) / max(1, opts.warmup_steps)
        t = (step - opts.warmup_steps) / max(1, opts.steps - opts.warmup_steps)
        t = min(1.0, t)
        return opts.lr_min_factor + (1 - opts.lr_min_factor) * 0.5 * (1 + math.cos(math.pi * t))
    return f


def validate(model: torch.nn.Module, batcher: MoleculeBatcher, noise: NoiseConfig, sigmas: Sequence[float],
             repeats: int, seed: int, device: torch.device, dtype: torch.dtype) -> Dict[str, Any]:
    """Loss, force RMSE and one-step denoising RMSD per sigma on fixed noise draws."""
    if not batcher.mols:
        return {}
    was = model.training
    model.eval()
    g = torch.Generator().manual_seed(int(seed))
    out: Dict[str, Any] = {"per_sigma": {}}
    losses = []
    idx = list(range(len(batcher.mols)))
    for s in sigmas:
        acc = {"loss": 0.0, "force_rmse": 0.0, "rmsd_noisy": 0.0, "rmsd_denoised": 0.0}
        for _ in range(repeats):
            x0, types, batch, pairs = batcher.collate(idx)
            n_mol = len(idx)
            nb = make_noisy_batch(x0, batch, n_mol, noise, g, sigma=torch.full((n_mol,), float(s), dtype=torch.float64),
                                  types=types)
            x = nb.x.to(device, dtype)
            ei, es = batcher.graph(x, pairs.to(device))
            _, f = model(x, types.to(device), ei, es, x.shape[0])
            f = f.detach().to(torch.float64).cpu()
            loss, parts = gpff_loss(f, nb, noise.weight_cap)
            acc["loss"] += float(loss) / repeats
            acc["force_rmse"] += math.sqrt(float(parts["force_mse"])) / repeats
            r0, r1 = [], []
            for b in range(n_mol):
                m = batch == b
                r0.append(float(rmsd(nb.x[m], x0[m])))
                r1.append(float(rmsd(nb.x[m] + f[m], x0[m])))
            acc["rmsd_noisy"] += sum(r0) / len(r0) / repeats
            acc["rmsd_denoised"] += sum(r1) / len(r1) / repeats
        out["per_sigma"][f"{s:g}"] = acc
        losses.append(acc["loss"])
    out["loss"] = sum(losses) / len(losses)
    model.train(was)
    return out


def _checkpoint_state(step: int, model, ema: _EMA, opt, sched, gen, cfg: GPFFTrainConfig, model_cfg: Dict[str, Any],
                      history: List[Dict[str, Any]], best: Optional[float], data_desc: Dict[str, Any]) -> Dict[str, Any]:
    return {
        "version": CHECKPOINT_VERSION,
        "step": step,
        "model": model.state_dict(),
        "ema": {k: v.clone() for k, v in ema.shadow.items()},
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "rng": rng_state({"train": gen}),
        "config": cfg.to_dict(),
        "model_config": model_cfg,
        "history": history,
        "best_val_loss": best,
        "data": data_desc,
    }


def _same_run(saved: Dict[str, Any], cfg: GPFFTrainConfig) -> None:
    """A resumed run must have the same data, model, noise and seed (steps etc. may change)."""
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


def train_gpff(config: Union[GPFFTrainConfig, Dict[str, Any], str, Path], *,
               callback: Optional[Callable[[int, Dict[str, float]], None]] = None) -> Path:
    """Train (or resume) and export; returns the artifact path.

    ``callback(step, stats)`` runs after every optimizer step (tests use it to interrupt a run).
    A ``KeyboardInterrupt`` (Ctrl-C; SIGTERM under the CLI) saves ``last.pt`` and is re-raised.
    ``train.threads`` sets torch's CPU threads for the run (restored afterwards); 1 is the robust
    choice on a small shared machine (measured here: 2 threads beside another busy process ran
    over 10x slower than 1 thread: the OpenMP barrier waits for a descheduled thread).
    """
    if isinstance(config, (str, Path)):
        cfg = GPFFTrainConfig.load(config)
    elif isinstance(config, dict):
        cfg = GPFFTrainConfig.from_dict(config)
    else:
        cfg = config
    threads_before = torch.get_num_threads()
    if cfg.train.threads:
        torch.set_num_threads(int(cfg.train.threads))
    try:
        return _train(cfg, callback)
    finally:
        torch.set_num_threads(threads_before)


#: model options that do not change the network's parameters (may differ from the init_from source)
_INIT_FREE_KEYS = ("avg_num_neighbors", "seed")


def _train(cfg: GPFFTrainConfig, callback: Optional[Callable[[int, Dict[str, float]], None]]) -> Path:
    from engine_plugins.methods.gpff.model import (
        GPFFModelConfig,
        SamplerDefaults,
        build_gpff_model,
        gpff_metadata,
        script_gpff_model,
    )
    from engine_plugins.export.artifact import export_artifact

    opts = cfg.train
    out = Path(cfg.output_dir)
    ckpt_dir = out / "checkpoints"
    device = _device(cfg.device)

    train_mols, val_mols, data_name = load_molecules(cfg.data)
    mcfg = GPFFModelConfig.from_dict(cfg.model)
    batcher = MoleculeBatcher(train_mols, mcfg.type_names, mcfg.r_max)
    val_batcher = MoleculeBatcher(val_mols, mcfg.type_names, mcfg.r_max)
    if mcfg.avg_num_neighbors is None:
        mcfg.avg_num_neighbors = round(batcher.avg_num_neighbors(), 4)
    sampler_defaults = SamplerDefaults.from_dict(cfg.sampler)
    dtype = getattr(torch, mcfg.model_dtype)

    # resume?
    resume_path: Optional[Path] = None
    if isinstance(opts.resume, str) and opts.resume not in ("auto",):
        resume_path = Path(opts.resume)
    elif opts.resume is True or opts.resume == "auto":
        if (ckpt_dir / "last.pt").is_file():
            resume_path = ckpt_dir / "last.pt"
        elif opts.resume is True:
            raise FileNotFoundError(f"train.resume is true but {ckpt_dir / 'last.pt'} does not exist")
    saved = load_checkpoint(resume_path) if resume_path is not None else None
    if saved is not None:
        _same_run(saved, cfg)
        mcfg = GPFFModelConfig.from_dict(saved["model_config"])
    init_state: Optional[Dict[str, torch.Tensor]] = None
    if saved is None and opts.init_from:
        init_mc, init_state, _, _ = read_init_source(opts.init_from, "pseudo_force", "gpff", "gpff_model_config",
                                                     mcfg.type_names, cfg.model, _INIT_FREE_KEYS)
        mcfg = GPFFModelConfig.from_dict(init_mc)

    model = build_gpff_model(mcfg, cfg.noise).to(device)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=opts.lr, weight_decay=opts.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(opts))
    ema = _EMA(model, opts.ema_decay)
    gen = torch.Generator().manual_seed(int(cfg.seed))
    history: List[Dict[str, Any]] = []
    best: Optional[float] = None
    step = 0
    data_desc = {"name": data_name, "n_train": len(train_mols), "n_val": len(val_mols),
                 "train": [m.name for m in train_mols], "val": [m.name for m in val_mols]}
    fine_tuning = init_state is not None
    if init_state is not None:  # curriculum stage or fine-tuning: the previous (EMA) weights as the start
        load_init_state(model, init_state, str(opts.init_from))
        init_state = None
        ema = _EMA(model, opts.ema_decay)
    if saved is not None:
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        sched.load_state_dict(saved["scheduler"])
        sched.lr_lambdas[0] = _lr_lambda(opts)  # steps may have been extended
        for k, v in saved["ema"].items():
            ema.shadow[k].copy_(v)
        set_rng_state(saved["rng"], {"train": gen})
        step = int(saved["step"])
        history = list(saved["history"])
        best = saved["best_val_loss"]

    def checkpoint(periodic: bool) -> None:
        state = _checkpoint_state(step, model, ema, opt, sched, gen, cfg, mcfg.to_dict(), history, best, data_desc)
        save_checkpoint(state, ckpt_dir / "last.pt")
        if periodic:
            save_checkpoint(state, ckpt_dir / f"step_{step:08d}.pt")
            old = sorted(ckpt_dir.glob("step_*.pt"))[:-max(1, opts.keep_checkpoints)]
            for p in old:
                p.unlink(missing_ok=True)
        (out / "history.json").write_text(json.dumps(history, indent=1))

    def run_validation() -> Dict[str, Any]:
        nonlocal best
        ema.swap(model)
        try:
            res = validate(model, val_batcher, cfg.noise, opts.val_sigmas, opts.val_repeats, opts.val_seed,
                           device, dtype)
        finally:
            ema.swap(model)
        if res:
            best = res["loss"] if best is None else min(best, res["loss"])
        return res

    from tqdm.auto import tqdm

    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
    t_start = time.time()
    if fine_tuning:  # the starting point's validation, on the same molecules and noise: the baseline
        res = run_validation()
        history.append({"step": 0, "val_loss": res.get("loss") if res else None,
                        "val": res.get("per_sigma") if res else None, "elapsed_s": round(time.time() - t_start, 2)})
    bar = tqdm(total=opts.steps, initial=step, desc="gpff", unit="step", disable=not opts.progress,
               dynamic_ncols=True)
    running: Optional[float] = None
    last_val = history[-1].get("val_loss") if history else None
    stopped_early = False
    try:
        while step < opts.steps:
            idx = torch.randint(len(train_mols), (opts.batch_size,), generator=gen).tolist()
            x0, types, batch, pairs = batcher.collate(idx)
            nb = make_noisy_batch(x0, batch, len(idx), cfg.noise, gen, types=types)
            nb.x, nb.target, nb.sigma = nb.x.to(device, dtype), nb.target.to(device, dtype), nb.sigma.to(device, dtype)
            nb.batch = nb.batch.to(device)
            ei, es = batcher.graph(nb.x, pairs.to(device))
            e, f = model(nb.x, types.to(device), ei, es, nb.x.shape[0])
            loss, parts = gpff_loss(f, nb, cfg.noise.weight_cap, e if mcfg.head == "direct" else None,
                                    opts.energy_weight)
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
            stats = {"step": step, "loss": lv, "lr": sched.get_last_lr()[0], "grad_norm": float(gnorm)}
            if step % opts.val_every == 0 or step == opts.steps:
                res = run_validation()
                last_val = res.get("loss") if res else None
                history.append({**stats, "loss_avg": running, "val_loss": last_val,
                                "val": res.get("per_sigma") if res else None,
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
        print(f"\ngpff: interrupted at step {step}; checkpoint {ckpt_dir / 'last.pt'} saved, run the same "
              "command to resume", file=sys.stderr)
        raise
    bar.close()
    checkpoint(periodic=False)

    # export (EMA weights)
    ema.swap(model)
    try:
        final_val = history[-1] if history else {}
        provenance = {
            "data_set": data_name, "n_train_molecules": len(train_mols), "n_val_molecules": len(val_mols),
            "val_molecules": [m.name for m in val_mols], "steps": step, "stopped_early": stopped_early,
            "train_config": cfg.to_dict(), "ema_decay": opts.ema_decay,
            "metrics": {"val_loss": final_val.get("val_loss"), "val": final_val.get("val")},
        }
        meta = gpff_metadata(mcfg, cfg.noise, sampler_defaults, provenance=provenance,
                             prior=prior_fit(train_mols))
        model.eval()
        scripted = script_gpff_model(model)
        path = Path(cfg.export.get("path", "model.pt"))
        path = path if path.is_absolute() else out / path
        export_artifact(scripted, meta, path)
    finally:
        ema.swap(model)
        model.train()
    return path


def export_checkpoint(checkpoint: Union[str, Path], path: Union[str, Path], ema: bool = True,
                      sampler: Optional[Dict[str, Any]] = None) -> Path:
    """Export a training checkpoint (EMA weights by default) as a ``pseudo_force`` artifact, e.g. to
    evaluate a run while it trains. The data set named in the checkpoint's config is re-read for the
    prior fit. ``sampler`` overrides the config's sampler defaults (e.g. a measured ``sigma_start``)."""
    from engine_plugins.export.artifact import export_artifact
    from engine_plugins.methods.gpff.model import (GPFFModelConfig, SamplerDefaults, build_gpff_model,
                                                   gpff_metadata, script_gpff_model)

    saved = load_checkpoint(Path(checkpoint))
    cfg = GPFFTrainConfig.from_dict(saved["config"])
    mcfg = GPFFModelConfig.from_dict(saved["model_config"])
    model = build_gpff_model(mcfg, cfg.noise)
    state = dict(saved["model"])
    if ema:
        state.update(saved["ema"])
    model.load_state_dict(state)
    model.eval()
    train_mols, _, _ = load_molecules(cfg.data)
    meta = gpff_metadata(mcfg, cfg.noise, SamplerDefaults.from_dict({**cfg.sampler, **(sampler or {})}),
                         prior=prior_fit(train_mols),
                         provenance={"checkpoint": str(checkpoint), "steps": int(saved["step"]), "ema": ema,
                                     "train_config": cfg.to_dict()})
    return export_artifact(script_gpff_model(model), meta, Path(path))


def prior_fit(mols: Sequence[Molecule]) -> Dict[str, Any]:
    """Least-squares ``a`` in ``per-coordinate variance ~ a N^(2/3)`` over the training molecules (the
    size of the generation prior, engine_plugins.methods.gpff.generate)."""
    num = den = 0.0
    for m in mols:
        n = m.positions.shape[0]
        v = float((m.positions - m.positions.mean(0)).square().sum(-1).mean()) / 3.0
        num += v * n ** (2.0 / 3.0)
        den += n ** (4.0 / 3.0)
    return {"kind": "gaussian", "coord_var_coeff": round(num / max(den, 1e-12), 6),
            "form": "per-coordinate variance sigma_start^2 + coord_var_coeff * N^(2/3), around the centroid"}


# ------------------------------------------------------------------------------------------------
# evaluation helpers for reports
# ------------------------------------------------------------------------------------------------
def denoising_report(model: Any, molecules: Sequence[Molecule], sigmas: Sequence[float] = (0.1, 0.3, 0.5, 1.0),
                     samplers: Sequence[Tuple[str, int]] = (("denoise", 8), ("heun", 8)), seed: int = 0,
                     repeats: int = 2) -> Dict[str, Any]:
    """Mean RMSD to the clean structure and bond-length MAE before/after denoising noisy molecules
    (noise as in training; samplers started at the true sigma). Bonds: pairs within 1.2x the sum of
    covalent radii in the clean structure."""
    from ase.data import atomic_numbers, covalent_radii

    from engine_plugins.methods.gpff.samplers import sample

    from engine_plugins.export.artifact import load_artifact

    if isinstance(model, (str, Path)):
        model = load_artifact(model)
    g = torch.Generator().manual_seed(int(seed))
    report: Dict[str, Any] = {}
    for s in sigmas:
        rows: Dict[str, List[float]] = {"noisy_rmsd": [], "noisy_bond_mae": []}
        for name, nfe in samplers:
            rows[f"{name}{nfe}_rmsd"] = []
            rows[f"{name}{nfe}_bond_mae"] = []
        for m in molecules:
            n = m.positions.shape[0]
            rad = torch.tensor([covalent_radii[atomic_numbers[x]] for x in m.symbols], dtype=torch.float64)
            d0 = torch.cdist(m.positions, m.positions)
            bonded = torch.triu(d0 < 1.2 * (rad[:, None] + rad[None, :]), diagonal=1)
            ref = d0[bonded]
            for _ in range(repeats):
                eps = torch.randn(n, 3, generator=g, dtype=torch.float64)
                x = m.positions + s * (eps - eps.mean(0))
                rows["noisy_rmsd"].append(float(rmsd(x, m.positions)))
                rows["noisy_bond_mae"].append(float((torch.cdist(x, x)[bonded] - ref).abs().mean()))
                for name, nfe in samplers:
                    r = sample(model, m.symbols, init_positions=x,
                               sampler=name, nfe=nfe, sigma_start=float(s), seed=int(seed))
                    y = r.positions[0]
                    rows[f"{name}{nfe}_rmsd"].append(float(rmsd(y, m.positions)))
                    rows[f"{name}{nfe}_bond_mae"].append(float((torch.cdist(y, y)[bonded] - ref).abs().mean()))
        report[f"{s:g}"] = {k: sum(v) / max(1, len(v)) for k, v in rows.items()}
    return report


# ------------------------------------------------------------------------------------------------
# command line
# ------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="engine-plugins train gpff",
                                description="train a GPFF pseudo-force model and export it (resumes by default)")
    p.add_argument("config", help="JSON or YAML config (see engine_plugins.train.gpff)")
    p.add_argument("--steps", type=int, help="override train.steps (extends a finished run when larger)")
    p.add_argument("--output-dir", help="override output_dir")
    p.add_argument("--fresh", action="store_true", help="do not resume from output_dir/checkpoints/last.pt")
    p.add_argument("--max-minutes", type=float, help="stop with a checkpoint after this wall time")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--report", action="store_true", help="after training, print a denoising report on val molecules")
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
    cfg = GPFFTrainConfig.from_dict(raw)

    def _term(signum, frame):  # noqa: ARG001 - SIGTERM: checkpoint like Ctrl-C
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, _term)
    try:
        path = train_gpff(cfg)
    except KeyboardInterrupt:
        return 130
    finally:
        signal.signal(signal.SIGTERM, old)
    print(f"wrote {path}")
    hist = json.loads((Path(cfg.output_dir) / "history.json").read_text())
    if hist:
        print(json.dumps({k: hist[-1][k] for k in ("step", "loss_avg", "val_loss") if k in hist[-1]}))
    if args.report:
        _, val, _ = load_molecules(cfg.data)
        print(json.dumps(denoising_report(str(path), val), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
