"""Train a flow-matching propagator or corrector on MD trajectories and export it (roles
``propagator`` / ``corrector``).

Usage::

    engine-plugins train propagator CONFIG.json    # --steps, --output-dir, --fresh, --max-minutes
    engine-plugins train corrector  CONFIG.json
    python -m engine_plugins.train.propagator CONFIG.json [--role corrector]

    # several processes / GPUs (DDP; NCCL with CUDA, gloo on CPU):
    torchrun --standalone --nproc_per_node 2 -m engine_plugins.train.propagator CONFIG.json

    from engine_plugins.train.propagator import train_flow
    artifact_path = train_flow("config.json")      # or a dict / FlowTrainConfig

Config (JSON or YAML; unknown keys are errors; examples in ``engine_plugins/train/configs/``)::

    {"role": "propagator", "output_dir": "out/prop", "seed": 0, "device": "auto",
     "data":  {"cases": "/path/to/manifest-or-dir", "lag": 10, "stride": 1, "mapping": null,
               "split": {"test_compositions": [...], "val_temperatures": [...], ...}},   # split_cases
     "model": {"r_max": 4.0, "num_layers": 2, "num_features": 16, ...},                  # FlowModelConfig
     "prior": {"scale": {"Li": 3.16, "Fw": 3.16}, "adaptive": null},
     "corrector": {"noise_max": 0.25},
     "train": {"steps": 2000, "batch_size": 4, "lr": 3e-3, ...},                          # TrainOptions
     "export": {"path": "model.pt", "flow_steps": 10, "solver": "euler", "max_attempts": 10}}

Data: :class:`engine_plugins.data.datasets.FramePairDataset` over the cases of ``data.cases`` (a
manifest, a case directory, a directory of cases or a list), split by whole cases with
:func:`engine_plugins.data.datasets.split_cases` (``data.split``): training never sees a test or
validation case. ``data.mapping`` (e.g. ``"residue"``) maps atoms to CG beads. The learned time
step is ``delta_tau = lag x frame interval`` (ps; all cases must agree).

Training (per step): ``batch_size`` frame pairs drawn with one seeded ``torch.Generator``; for each,
a graph on the conditioning frame (minimum image, ``model.r_max``); the flow-matching batch of
:mod:`engine_plugins.methods.propagator.loss`; AdamW, warm-up + cosine learning rate, gradient
clipping, an exponential moving average (EMA) of the weights (used for validation and export).
Validation on the held-out cases at fixed noise (``val_seed``): the flow-matching loss, and the
displacement statistics of sampled jumps (a plain Euler/Heun loop over a few frames: the ratio of
sampled to reference mean squared displacement per species; the engines' sampler is
``engine_plugins.methods.propagator.sampler``).

Checkpoints: every ``checkpoint_every`` steps and on exit (end, Ctrl-C, SIGTERM under the CLI),
``checkpoints/last.pt`` (model, EMA, optimizer, scheduler, RNG states, step, history, the data-set
scales); the same command resumes from it, and training k steps, being killed and resuming gives
bit-identical weights to training straight through.

Fine-tuning: ``train.init_from`` starts a new run from another run's weights, a checkpoint (its EMA
weights) or an exported artifact (the TorchScript weights, cast to ``model.model_dtype``); the
architecture and per-type scales come from there (a config ``model`` option that differs is an
error), optimizer, schedule, EMA and step count start afresh; the artifact records ``init_from``.

Distributed (``torchrun``): every rank draws the same global batch and noise from the same
generator and evaluates its share of the frame pairs (``idx[rank::world]``); DDP averages the
gradients, so with frames of equal size the update equals the single-process one (up to rounding
of the average). Rank 0 validates, checkpoints and exports. ``train.batch_size`` is the global batch.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import statistics
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from engine_plugins.methods.propagator.prior import (KB_EV_PER_K, WIDTH_SETTINGS, adaptive_is_continuous,
                                                     adaptive_rule_text, adaptive_width_rule)
from engine_plugins.options import check_known, options_from_dict
from engine_plugins.train.checkpoint import (load_checkpoint, load_init_state, read_init_source, rng_state,
                                             save_checkpoint, set_rng_state)
from engine_plugins.train.gpff import _EMA, _device, read_config_file

CHECKPOINT_VERSION = 1
ROLES = ("propagator", "corrector")
UNITS = {"length": "angstrom", "energy": "eV", "time": "ps"}


# ------------------------------------------------------------------------------------------------
# configuration
# ------------------------------------------------------------------------------------------------
@dataclass
class SplitOptions:
    """Whole-case split (``engine_plugins.data.datasets.split_cases``)."""

    test_compositions: List[str] = field(default_factory=list)
    test_temperatures: List[float] = field(default_factory=list)
    val_compositions: List[str] = field(default_factory=list)
    val_temperatures: List[float] = field(default_factory=list)
    val_fraction: float = 0.0
    val_by: str = "case"
    seed: int = 0


@dataclass
class DataOptions:
    cases: Union[str, List[str]] = ""
    lag: int = 10
    stride: int = 1
    mapping: Optional[str] = None
    unwrap: str = "auto"
    start: Optional[int] = None
    stop: Optional[int] = None
    step: Optional[int] = None
    split: SplitOptions = field(default_factory=SplitOptions)
    max_val_pairs: int = 32  # frame pairs of the validation cases used (evenly spaced)


@dataclass
class PriorOptions:
    """``scale``: one number or {type: scale}; ``adaptive``: null or {"choices": {type: [..]}}."""

    scale: Union[float, Dict[str, float]] = 1.0
    adaptive: Optional[Dict[str, Any]] = None


@dataclass
class CorrectorOptions:
    """``noise_max``: s_max (A) of the training noise X~ = X + N(0, s^2), s ~ U(0, s_max).
    ``noise_level``: with ``model.noise_conditioning``, the level (A; one number or {type: s}) the
    exported corrector is told its input carries (``engine-plugins corrector-noise`` changes it)."""

    noise_max: float = 0.25
    noise_level: Optional[Union[float, Dict[str, float]]] = None


@dataclass
class TrainOptions:
    steps: int = 2000
    batch_size: int = 4
    lr: float = 3e-3
    lr_min_factor: float = 0.05
    warmup_steps: int = 50
    weight_decay: float = 0.0
    grad_clip: float = 10.0
    ema_decay: float = 0.99
    loss_weighting: str = "per_type"
    checkpoint_every: int = 200
    keep_checkpoints: int = 2
    val_every: int = 200
    val_repeats: int = 2
    val_seed: int = 12345
    val_jump_frames: int = 4  # frames per validation case for the sampled-jump statistics (0: off)
    resume: Union[str, bool] = "auto"  # "auto" | True | False | a checkpoint path
    threads: Optional[int] = 1
    progress: bool = True
    max_minutes: Optional[float] = None
    # fine-tuning: a new run that starts from a previous run's weights, either a training checkpoint
    # (its EMA weights) or an exported artifact (.pt TorchScript of the same role and method); the
    # architecture, per-type scales and type names come from there (cast to model.model_dtype);
    # optimizer, scheduler, EMA and steps start afresh. A checkpoint in output_dir (resume) wins.
    init_from: Optional[str] = None


@dataclass
class ExportOptions:
    path: Optional[str] = "model.pt"  # None: no export (checkpoints only)
    flow_steps: int = 10
    solver: str = "euler"
    max_displacement: Optional[float] = None  # None: 1.5 x the longest training displacement (+ 1 A)
    max_attempts: int = 10
    passes: int = 1  # corrector: passes per jump (role_fields.passes; sampler.passes_of)
    copy_to: Optional[str] = None  # also copy the artifact here (e.g. exported_models/x.pt)
    dtype: Optional[str] = None  # artifact dtype; None: model.model_dtype (train float32, ship float64)


@dataclass
class FlowTrainConfig:
    role: str = "propagator"
    output_dir: str = "out/propagator"
    seed: int = 0
    device: str = "auto"
    data: DataOptions = field(default_factory=DataOptions)
    model: Dict[str, Any] = field(default_factory=dict)
    prior: PriorOptions = field(default_factory=PriorOptions)
    corrector: CorrectorOptions = field(default_factory=CorrectorOptions)
    train: TrainOptions = field(default_factory=TrainOptions)
    export: ExportOptions = field(default_factory=ExportOptions)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "FlowTrainConfig":
        check_known(cls, d, "propagator config")
        d = dict(d)
        data = dict(d.pop("data", {}) or {})
        section = "propagator config section '{}'".format
        split = options_from_dict(SplitOptions, data.pop("split", {}) or {}, section("data.split"))
        cfg = cls(data=options_from_dict(DataOptions, {**data, "split": split}, section("data")),
                  prior=options_from_dict(PriorOptions, d.pop("prior", {}) or {}, section("prior")),
                  corrector=options_from_dict(CorrectorOptions, d.pop("corrector", {}) or {}, section("corrector")),
                  train=options_from_dict(TrainOptions, d.pop("train", {}) or {}, section("train")),
                  export=options_from_dict(ExportOptions, d.pop("export", {}) or {}, section("export")), **d)
        cfg.check()
        return cfg

    def check(self) -> None:
        from engine_plugins.export.metadata import FLOW_SOLVERS
        from engine_plugins.methods.propagator.loss import LOSS_WEIGHTINGS
        from engine_plugins.methods.propagator.model import FlowModelConfig

        if self.role not in ROLES:
            raise ValueError(f"role {self.role!r}: use one of {ROLES}")
        if not self.data.cases:
            raise ValueError("data.cases is empty. Fix: give a manifest.json, a case directory or a list of them "
                             "(written by `engine-plugins simulate ...`)")
        if int(self.data.lag) < 1:
            raise ValueError(f"data.lag={self.data.lag}: the lag is a number of frames >= 1")
        if self.export.solver not in FLOW_SOLVERS:
            raise ValueError(f"export.solver {self.export.solver!r}: use one of {FLOW_SOLVERS}")
        if int(self.export.flow_steps) < 1:
            raise ValueError(f"export.flow_steps={self.export.flow_steps}: must be >= 1")
        if self.train.loss_weighting not in LOSS_WEIGHTINGS:
            raise ValueError(f"train.loss_weighting {self.train.loss_weighting!r}: use one of {LOSS_WEIGHTINGS}")
        if self.train.batch_size < 1 or self.train.steps < 0:
            raise ValueError("train.batch_size must be >= 1 and train.steps >= 0")
        from engine_plugins.methods.propagator.sampler import MAX_PASSES

        passes = int(self.export.passes)
        if not 1 <= passes <= MAX_PASSES or (self.role != "corrector" and passes != 1):
            raise ValueError(f"export.passes={self.export.passes}: a corrector runs 1..{MAX_PASSES} passes per jump; "
                             "a propagator has none (drop export.passes)")
        if self.role == "corrector" and not self.corrector.noise_max > 0:
            raise ValueError(f"corrector.noise_max={self.corrector.noise_max}: must be > 0 (angstrom)")
        mc = FlowModelConfig.from_dict({k: v for k, v in self.model.items()})  # validate early
        if mc.noise_conditioning:
            if self.role != "corrector":
                raise ValueError("model.noise_conditioning is for a corrector (its input's noise level). "
                                 "Fix: drop it from the propagator's config")
            if self.corrector.noise_level is None:
                raise ValueError("model.noise_conditioning needs corrector.noise_level: the level (angstrom, one "
                                 "number or {type: level}) the exported corrector assumes its input carries")
            from engine_plugins.methods.propagator.loss import corrector_noise_levels

            lvl = self.corrector.noise_level  # the types come with the data; here only the range is checked
            corrector_noise_levels(lvl, list(lvl) if isinstance(lvl, dict) else ["all"], self.corrector.noise_max)
        elif self.corrector.noise_level is not None:
            raise ValueError("corrector.noise_level without model.noise_conditioning: the model would not read it. "
                             "Fix: set model.noise_conditioning true, or drop corrector.noise_level")

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


# ------------------------------------------------------------------------------------------------
# data
# ------------------------------------------------------------------------------------------------
@dataclass
class FlowData:
    train: Any  # FramePairDataset
    val: Optional[Any]
    split: Dict[str, List[str]]
    type_names: List[str]
    masses: Dict[str, float]
    delta_tau: float
    temperature_range: List[float]
    periodic: bool
    source: str


def load_flow_data(opts: DataOptions, type_names: Optional[Sequence[str]] = None, *,
                   progress: bool = False) -> FlowData:
    """Training and validation frame pairs (whole-case split) and what the artifact needs from them."""
    from engine_plugins.data.datasets import FramePairDataset, split_cases
    from engine_plugins.data.trajectories import load_cases

    cases = load_cases(opts.cases)
    sp = opts.split
    split = split_cases(cases, test_compositions=sp.test_compositions, test_temperatures=sp.test_temperatures,
                        val_compositions=sp.val_compositions, val_temperatures=sp.val_temperatures,
                        val_fraction=sp.val_fraction, val_by=sp.val_by, seed=sp.seed)
    kw = dict(stride=opts.stride, mapping=opts.mapping, type_names=type_names, dtype=torch.float64,
              start=opts.start, stop=opts.stop, step=opts.step, unwrap=opts.unwrap)
    if progress:
        print(f"reading {len(split.train)} training and {len(split.val)} validation case(s) ...", file=sys.stderr)
    train = FramePairDataset(split.train, opts.lag, **kw)
    kw["type_names"] = train.type_names
    val = FramePairDataset(split.val, opts.lag, **kw) if split.val else None
    lag_times = [t for ds in (train, val) if ds is not None for t in ds.lag_times]
    if any(not math.isfinite(t) for t in lag_times):
        raise ValueError(f"a case has fewer than lag+1 = {opts.lag + 1} frames")
    if max(lag_times) - min(lag_times) > 1e-6 * max(lag_times):
        raise ValueError(f"the cases have different lag times {sorted(set(round(t, 9) for t in lag_times))} ps at "
                         f"lag {opts.lag} frames. Fix: train on cases with the same frame interval")
    masses: Dict[str, float] = {}
    for ds in (train, val):
        if ds is None:
            continue
        for traj, types in zip(ds.trajectories, ds._types):
            for s in set(types.tolist()):
                m = round(float(np.mean(traj.masses[types.numpy() == s])), 6)
                name = ds.type_names[s]
                if name in masses and abs(masses[name] - m) > 1e-6 * m:
                    raise ValueError(f"species {name} has different masses ({masses[name]} and {m}) across cases; "
                                     "the Maxwell-Boltzmann prior needs one mass per type. Fix: split the type")
                masses.setdefault(name, m)
    temps = [c.temperature for c in split.train]
    periodic = all(t.boxes is not None for t in train.trajectories)
    return FlowData(train=train, val=val, split=split.ids(), type_names=list(train.type_names), masses=masses,
                    delta_tau=float(lag_times[0]), temperature_range=[float(min(temps)), float(max(temps))],
                    periodic=periodic, source=str(opts.cases))


def _wrap(x: torch.Tensor, box: torch.Tensor) -> torch.Tensor:
    frac = x @ torch.linalg.inv(box)
    return x - torch.floor(frac) @ box


def _graph(x: torch.Tensor, box: torch.Tensor, cutoff: float) -> Tuple[torch.Tensor, torch.Tensor]:
    from engine_plugins.nn.graph import neighbor_graph

    periodic = bool(box.abs().sum() > 0)
    return neighbor_graph(x, cutoff, box if periodic else None)


class Collated:
    """A batch of frame pairs: concatenated atoms, per-atom temperature, graph index, boxes."""

    def __init__(self, samples: Sequence[Dict[str, Any]]) -> None:
        self.x = torch.cat([s["X_tau"] for s in samples])
        self.x1 = torch.cat([s["X_tau_plus"] for s in samples])
        self.types = torch.cat([s["types"] for s in samples])
        self.n = torch.tensor([len(s["types"]) for s in samples])
        self.batch = torch.repeat_interleave(torch.arange(len(samples)), self.n)
        self.temperature = torch.cat([torch.full((len(s["types"]),), float(s["temperature"]), dtype=torch.float64)
                                      for s in samples])
        self.boxes = [s["box"] for s in samples]
        self.case_ids = [s["case_id"] for s in samples]
        self.n_graphs = len(samples)


def _graphs(x_cond: torch.Tensor, c: Collated, graphs: Sequence[int], cutoff: float
            ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(atom mask, edge_index, edge_shift) of the selected graphs of a batch (edges re-indexed)."""
    offsets = torch.cumsum(c.n, 0) - c.n
    mask = torch.zeros(len(c.types), dtype=torch.bool)
    eis, ess, new_off = [], [], 0
    for g in graphs:
        lo, n = int(offsets[g]), int(c.n[g])
        mask[lo:lo + n] = True
        ei, es = _graph(x_cond[lo:lo + n], c.boxes[g], cutoff)
        eis.append(ei + new_off)
        ess.append(es)
        new_off += n
    return mask, torch.cat(eis, 1), torch.cat(ess)


def make_training_batch(c: Collated, role: str, prior: "PriorTable", noise_max: float, gen: torch.Generator,
                        graphs: Sequence[int], cutoff: float, t: Optional[torch.Tensor] = None,
                        noise_types: int = 0) -> Dict[str, torch.Tensor]:
    """Flow-matching inputs/targets of the selected graphs of a batch.

    Every random draw is made for the whole batch (so all DDP ranks stay in step), the graphs only
    for ``graphs``. ``noise_types`` > 0 (a noise-conditioned corrector with that many types): the
    noise level is drawn per graph and type and returned per atom as ``noise``.
    """
    from engine_plugins.methods.propagator.loss import corrector_noise, flow_matching_batch

    s_atom: Optional[torch.Tensor] = None
    if role == "corrector":
        if noise_types > 0:
            noisy, s_atom = corrector_noise(c.x, c.batch, c.n_graphs, noise_max, gen, c.types, noise_types)
        else:
            noisy, _ = corrector_noise(c.x, c.batch, c.n_graphs, noise_max, gen)
        offsets = torch.cumsum(c.n, 0) - c.n
        x_cond = noisy.clone()
        for g in range(c.n_graphs):
            lo, n = int(offsets[g]), int(c.n[g])
            if bool(c.boxes[g].abs().sum() > 0):
                x_cond[lo:lo + n] = _wrap(noisy[lo:lo + n], c.boxes[g])
        x1 = x_cond + (c.x - noisy)  # the clean frame, in the image of the wrapped noisy one
    else:
        x_cond, x1 = c.x, c.x1
    sigma = prior.sigma(c.types, c.temperature, c.case_ids, c.n)
    fb = flow_matching_batch(x_cond, x1, sigma, c.batch, c.n_graphs, gen, t=t)
    mask, ei, es = _graphs(x_cond, c, graphs, cutoff)
    out = {"x_t": fb.x_t[mask], "x_cond": x_cond[mask], "target": fb.target[mask], "t": fb.t_node[mask],
           "types": c.types[mask], "temperature": c.temperature[mask], "edge_index": ei, "edge_shift": es,
           "x0": fb.x0[mask], "x1": x1[mask]}
    if s_atom is not None:
        out["noise"] = s_atom.to(fb.x_t.dtype)[mask.cpu()].to(fb.x_t.device)
    return out


def noise_types_of(model: Any) -> int:
    """How many types a noise-conditioned corrector draws noise levels for (0: not conditioned)."""
    return len(model.type_names) if bool(getattr(model, "noise_conditioned", False)) else 0


class PriorTable:
    """Per-case, per-type prior scales (fixed, or the adaptive choice per case) and type masses."""

    def __init__(self, opts: PriorOptions, type_names: Sequence[str], masses: Dict[str, float]) -> None:
        self.type_names = list(type_names)
        if isinstance(opts.scale, (int, float)):
            base = {t: float(opts.scale) for t in self.type_names}
        else:
            missing = [t for t in self.type_names if t not in opts.scale]
            if missing:
                raise ValueError(f"prior.scale has no entry for type(s) {missing}. Fix: one number, or one per type")
            base = {t: float(opts.scale[t]) for t in self.type_names}
        if any(not (math.isfinite(v) and v >= 0) for v in base.values()):
            raise ValueError(f"prior.scale must be >= 0, got {base}")
        self.base = base
        self.masses = {t: float(masses[t]) for t in self.type_names}
        self.mass = torch.tensor([self.masses[t] for t in self.type_names], dtype=torch.float64)
        self.per_case: Dict[str, Dict[str, float]] = {}
        self.measured: Dict[str, Dict[str, float]] = {}  # held-out cases' picks (validation only)
        self.adaptive = opts.adaptive
        if self.adaptive is not None:
            choices = self.adaptive.get("choices") if isinstance(self.adaptive, dict) else None
            if not isinstance(choices, dict) or not choices:
                raise ValueError("prior.adaptive needs {'choices': {type: [scales...]}}, e.g. "
                                 "{'Li': [1, 10], 'Fw': [0.316, 3.16]}")
            unknown = [t for t in choices if t not in self.type_names]
            if unknown:
                raise ValueError(f"prior.adaptive.choices names unknown type(s) {unknown}; types: {self.type_names}")
            known = {"choices", "continuous", *WIDTH_SETTINGS}
            extra = set(self.adaptive) - known
            if extra:
                raise ValueError(f"prior.adaptive has unknown key(s) {sorted(extra)}; "
                                 f"known: {', '.join(sorted(known))}")
            self.width_rule = adaptive_width_rule(self.adaptive)
            self.continuous = adaptive_is_continuous(self.adaptive)

    def fit_adaptive(self, ds: Any, held_out: bool = False) -> None:
        """Pick each case's scale per adaptive type from the case's own rms displacement at the lag
        (:func:`measure_adaptive_scale`, the rule an engine applies to a new material). Training
        cases (``held_out=False``) make ``per_case`` (stored, and the default's vote); held-out
        ones are measured the same way so that validation samples with their own pick."""
        from engine_plugins.methods.propagator.prior import measure_adaptive_scale

        if self.adaptive is None or ds is None:
            return
        rule = {"adaptive": self.adaptive, "mass": self.masses}
        table = self.measured if held_out else self.per_case
        for case, traj, types in zip(ds.cases, ds.trajectories, ds._types):
            picks = dict(self.base)
            picks.update(measure_adaptive_scale(rule, traj.positions, [self.type_names[i] for i in types.tolist()],
                                                case.temperature, ds.lag))
            table[case.case_id] = picks

    def default_scale(self) -> Dict[str, float]:
        """The scale stored in the artifact: the fixed one, the most common adaptive pick, or (a
        continuous rule, where every pick differs) the training cases' median pick."""
        if not self.per_case:
            return dict(self.base)
        out = {}
        for t in self.type_names:
            if self.adaptive is not None and self.continuous:
                out[t] = statistics.median_low(p[t] for p in self.per_case.values())
                continue
            picks = Counter(p[t] for p in self.per_case.values())
            out[t] = sorted(picks.items(), key=lambda kv: (-kv[1], kv[0]))[0][0]
        return out

    def scale_tensor(self, case_id: Optional[str] = None) -> torch.Tensor:
        table = self.per_case.get(case_id) or self.measured.get(case_id) if case_id is not None else None
        table = table or self.default_scale()
        return torch.tensor([table[t] for t in self.type_names], dtype=torch.float64)

    def sigma(self, types: torch.Tensor, temperature: torch.Tensor, case_ids: Sequence[str],
              n_per_graph: torch.Tensor) -> torch.Tensor:
        """Prior width per atom (angstrom) of a batch of graphs (``n_per_graph`` atoms each)."""
        from engine_plugins.methods.propagator.loss import prior_sigma

        if not self.per_case:
            return prior_sigma(types, temperature, self.scale_tensor(), self.mass)
        scale = torch.cat([self.scale_tensor(cid).unsqueeze(0).expand(int(n), -1)
                           for cid, n in zip(case_ids, n_per_graph.tolist())])  # [N, n_types]
        s = scale[torch.arange(len(types)), types]
        return s * torch.sqrt(KB_EV_PER_K * temperature / self.mass[types])

    def prior_field(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {"kind": "maxwell_boltzmann", "scale": self.default_scale(), "mass": dict(self.masses),
                               "units": "sigma = scale * sqrt(k_B[eV/K] T / mass[amu]) angstrom"}
        if self.adaptive is not None:
            out["adaptive"] = {"choices": self.adaptive["choices"],
                               **dict(zip(WIDTH_SETTINGS, self.width_rule)), "continuous": self.continuous,
                               "rule": adaptive_rule_text(self.continuous),
                               "per_case": self.per_case}
        return out


# ------------------------------------------------------------------------------------------------
# training
# ------------------------------------------------------------------------------------------------
def _lr_lambda(opts: TrainOptions) -> Callable[[int], float]:
    def f(step: int) -> float:
        if step < opts.warmup_steps:
            return (step + 1) / max(1, opts.warmup_steps)
        t = min(1.0, (step - opts.warmup_steps) / max(1, opts.steps - opts.warmup_steps))
        return opts.lr_min_factor + (1 - opts.lr_min_factor) * 0.5 * (1 + math.cos(math.pi * t))
    return f


def _data_scales(cfg: FlowTrainConfig, data: FlowData, prior: PriorTable, mcfg: Any) -> None:
    """Fill the model's avg_num_neighbors, disp_scale and out_scale from the training data (seeded)."""
    ds = data.train
    g = torch.Generator().manual_seed(int(cfg.seed) + 7919)
    idx = torch.randint(len(ds), (min(16, len(ds)),), generator=g).tolist()
    c = Collated([ds[i] for i in idx])
    b = make_training_batch(c, cfg.role, prior, cfg.corrector.noise_max, g, range(c.n_graphs), mcfg.r_max,
                            noise_types=len(mcfg.type_names) if cfg.role == "corrector" and mcfg.noise_conditioning
                            else 0)
    if mcfg.avg_num_neighbors is None:
        mcfg.avg_num_neighbors = round(b["edge_index"].shape[1] / len(b["types"]), 3)
    disp = b["x_t"] - b["x_cond"]
    disp_scale, out_scale = {}, {}
    for k, name in enumerate(data.type_names):
        sel = b["types"] == k
        if not bool(sel.any()):
            disp_scale[name], out_scale[name] = 1.0, 1.0
            continue
        disp_scale[name] = round(max(1e-3, float(disp[sel].square().mean().sqrt())), 5)
        out_scale[name] = round(max(1e-3, float(b["target"][sel].square().mean().sqrt())), 5)
    if mcfg.disp_scale is None:
        mcfg.disp_scale = disp_scale
    if mcfg.out_scale is None:
        mcfg.out_scale = out_scale


def _dist_info() -> Tuple[int, int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    return world, rank, local


@torch.no_grad()
def integrate_flow(model: Any, x_cond: torch.Tensor, types: torch.Tensor, edge_index: torch.Tensor,
                   edge_shift: torch.Tensor, temperature: torch.Tensor, sigma: torch.Tensor, flow_steps: int,
                   solver: str, generator: torch.Generator, noise: Optional[torch.Tensor] = None) -> torch.Tensor:
    """x_K of one flow from x_cond + sigma z (validation only; engines use methods.propagator.sampler);
    ``noise``: the per-atom noise level told a noise-conditioned corrector."""
    z = torch.randn(x_cond.shape[0], 3, generator=generator, dtype=torch.float64).to(x_cond.device)
    x = x_cond + (sigma.to(x_cond.device).unsqueeze(1) * z).to(x_cond.dtype)
    h = 1.0 / flow_steps
    n = x.shape[0]
    for k in range(flow_steps):
        t = torch.full((n,), k * h, dtype=x.dtype, device=x.device)
        v = model(x, x_cond, types, edge_index, edge_shift, t, temperature, n, noise)
        if solver == "heun":
            x2 = x + h * v
            v2 = model(x2, x_cond, types, edge_index, edge_shift, t + h, temperature, n, noise)
            x = x + 0.5 * h * (v + v2)
        else:
            x = x + h * v
    return x


def validate(model: Any, cfg: FlowTrainConfig, data: FlowData, prior: PriorTable, device: torch.device,
             dtype: torch.dtype) -> Dict[str, Any]:
    """Validation loss (fixed draws) and sampled-jump statistics per held-out case."""
    from engine_plugins.methods.propagator.loss import flow_matching_loss

    ds = data.val
    if ds is None or len(ds) == 0:
        return {}
    was = model.training
    model.eval()
    n_pairs = min(len(ds), cfg.data.max_val_pairs)
    idx = np.unique(np.linspace(0, len(ds) - 1, n_pairs).round().astype(int)).tolist()
    g = torch.Generator().manual_seed(int(cfg.train.val_seed))
    out_scale = model.out_scale
    per_case: Dict[str, Dict[str, List[float]]] = {}
    losses, mses = [], []
    with torch.no_grad():
        for rep in range(cfg.train.val_repeats):
            for chunk in range(0, len(idx), max(1, cfg.train.batch_size)):
                sub = idx[chunk:chunk + max(1, cfg.train.batch_size)]
                c = Collated([ds[i] for i in sub])
                b = make_training_batch(c, cfg.role, prior, cfg.corrector.noise_max, g, range(c.n_graphs),
                                        model.cutoff, noise_types=noise_types_of(model))
                b = {k: v.to(device) for k, v in b.items()}
                v = model(b["x_t"].to(dtype), b["x_cond"].to(dtype), b["types"], b["edge_index"],
                          b["edge_shift"].to(dtype), b["t"].to(dtype), b["temperature"].to(dtype), len(b["types"]),
                          b.get("noise"))
                loss, parts = flow_matching_loss(v.to(torch.float64), b["target"], b["types"], out_scale,
                                                 cfg.train.loss_weighting)
                losses.append(float(loss))
                mses.append(float(parts["mse"]))
                per = per_case
                for gi, cid in enumerate(c.case_ids):
                    per.setdefault(cid, {"loss": []})
                per_graph_loss = (v.to(torch.float64) - b["target"]).square().sum(-1) / out_scale[b["types"]].square() / 3
                bt = c.batch.to(device)
                for gi, cid in enumerate(c.case_ids):
                    per[cid]["loss"].append(float(per_graph_loss[bt == gi].mean()))
    res: Dict[str, Any] = {"loss": float(np.mean(losses)), "mse": float(np.mean(mses)),
                           "per_case": {k: {"loss": float(np.mean(v["loss"]))} for k, v in per_case.items()}}
    if cfg.train.val_jump_frames > 0:
        res["jumps"] = _jump_statistics(model, cfg, data, prior, device, dtype)
        ratios = [r for case in res["jumps"].values() for r in case.get("msd_ratio", {}).values()]
        if ratios:
            res["jump_log_msd_ratio_rms"] = float(np.sqrt(np.mean(np.log(np.asarray(ratios)) ** 2)))
    model.train(was)
    return res


def _jump_statistics(model: Any, cfg: FlowTrainConfig, data: FlowData, prior: PriorTable, device: torch.device,
                     dtype: torch.dtype) -> Dict[str, Any]:
    """Per held-out case and species: sampled vs reference mean squared displacement of one jump
    (propagator) or rms distance to the clean frame before/after correction (corrector)."""
    ds = data.val
    g = torch.Generator().manual_seed(int(cfg.train.val_seed) + 1)
    out: Dict[str, Any] = {}
    by_case: Dict[int, List[int]] = {}
    for i, (k, _) in enumerate(ds.index):
        by_case.setdefault(int(k), []).append(i)
    for k, rows in sorted(by_case.items()):
        pick = [rows[j] for j in np.unique(np.linspace(0, len(rows) - 1, cfg.train.val_jump_frames).round()
                                              .astype(int))]
        acc_ref: Dict[str, List[float]] = {}
        acc_gen: Dict[str, List[float]] = {}
        for i in pick:
            s = ds[i]
            c = Collated([s])
            if cfg.role == "corrector":
                noisy, _ = _fixed_noisy(s, cfg.corrector.noise_max * 0.5, g)
                x_cond, clean = noisy, noisy + (s["X_tau"] - _unwrapped_noisy(s, noisy))
            else:
                x_cond, clean = s["X_tau"], s["X_tau_plus"]
            ei, es = _graph(x_cond, s["box"], model.cutoff)
            sigma = prior.sigma(s["types"], c.temperature, c.case_ids, c.n)
            told = None  # a noise-conditioned corrector is told the level the frame carries
            if cfg.role == "corrector" and noise_types_of(model):
                told = torch.full((x_cond.shape[0],), cfg.corrector.noise_max * 0.5, dtype=dtype, device=device)
            xk = integrate_flow(model, x_cond.to(device, dtype), s["types"].to(device), ei.to(device),
                                es.to(device, dtype), c.temperature.to(device, dtype), sigma, cfg.export.flow_steps,
                                cfg.export.solver, g, told).to(torch.float64).cpu()
            for t_idx, name in enumerate(data.type_names):
                sel = s["types"] == t_idx
                if not bool(sel.any()):
                    continue
                if cfg.role == "corrector":
                    acc_ref.setdefault(name, []).append(float((x_cond[sel] - clean[sel]).square().sum(-1).mean()))
                    acc_gen.setdefault(name, []).append(float((xk[sel] - clean[sel]).square().sum(-1).mean()))
                else:
                    acc_ref.setdefault(name, []).append(float((clean[sel] - x_cond[sel]).square().sum(-1).mean()))
                    acc_gen.setdefault(name, []).append(float((xk[sel] - x_cond[sel]).square().sum(-1).mean()))
        cid = ds.cases[k].case_id
        if cfg.role == "corrector":
            out[cid] = {"rms_before": {n: math.sqrt(np.mean(v)) for n, v in acc_ref.items()},
                        "rms_after": {n: math.sqrt(np.mean(acc_gen[n])) for n in acc_ref}}
        else:
            out[cid] = {"msd_reference": {n: float(np.mean(v)) for n, v in acc_ref.items()},
                        "msd_sampled": {n: float(np.mean(acc_gen[n])) for n in acc_ref},
                        "msd_ratio": {n: float(np.mean(acc_gen[n]) / max(1e-12, np.mean(v))) for n, v in acc_ref.items()}}
    return out


def _fixed_noisy(s: Dict[str, Any], noise: float, g: torch.Generator) -> Tuple[torch.Tensor, torch.Tensor]:
    n = torch.randn(s["X_tau"].shape[0], 3, generator=g, dtype=torch.float64) * noise
    noisy = s["X_tau"] + n
    if bool(s["box"].abs().sum() > 0):
        noisy_w = _wrap(noisy, s["box"])
        return noisy_w, n
    return noisy, n


def _unwrapped_noisy(s: Dict[str, Any], noisy_wrapped: torch.Tensor) -> torch.Tensor:
    """The noisy frame in the image of X_tau (so that clean = wrapped noisy - noise)."""
    box = s["box"]
    if not bool(box.abs().sum() > 0):
        return noisy_wrapped
    d = noisy_wrapped - s["X_tau"]
    frac = d @ torch.linalg.inv(box)
    return s["X_tau"] + (d - torch.round(frac) @ box)


def _checkpoint_state(step: int, model, ema: _EMA, opt, sched, gen, cfg: FlowTrainConfig, mcfg: Dict[str, Any],
                      prior: PriorTable, history: List[Dict[str, Any]], best: Optional[float]) -> Dict[str, Any]:
    return {"version": CHECKPOINT_VERSION, "step": step, "model": model.state_dict(),
            "ema": {k: v.clone() for k, v in ema.shadow.items()}, "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(), "rng": rng_state({"train": gen}), "config": cfg.to_dict(),
            "model_config": mcfg, "prior_per_case": prior.per_case, "history": history, "best_val_loss": best}


#: model options that do not change the network's parameters (may differ from the init_from source)
_INIT_FREE_KEYS = ("model_dtype", "avg_num_neighbors", "disp_scale", "out_scale", "seed")


def load_init_weights(path: Union[str, Path], cfg: FlowTrainConfig, type_names: Sequence[str]
                      ) -> Tuple[Dict[str, Any], Dict[str, torch.Tensor], Dict[str, Any]]:
    """(model config, weights, description) of ``train.init_from``: a training checkpoint (its EMA
    weights) or an exported artifact of the same role and method. Raises ValueError when the role,
    method, type names or architecture differ from this run's."""
    from engine_plugins.methods.propagator.model import METHOD_NAME

    mc, state, desc, saved_cfg = read_init_source(path, cfg.role, METHOD_NAME if cfg.role == "propagator" else None,
                                                  "flow_model_config", type_names, cfg.model, _INIT_FREE_KEYS)
    if saved_cfg is not None and saved_cfg.get("role", cfg.role) != cfg.role:
        raise ValueError(f"train.init_from: {path} is a checkpoint of a '{saved_cfg['role']}' run; this "
                         f"run trains a '{cfg.role}'")
    mc = {**mc, "model_dtype": cfg.model.get("model_dtype", mc.get("model_dtype", "float64"))}
    return mc, state, desc


def _same_run(saved: Dict[str, Any], cfg: FlowTrainConfig) -> None:
    old = saved["config"]
    try:  # options added since the checkpoint was written take their defaults on both sides
        old = {**old, **{k: v for k, v in FlowTrainConfig.from_dict(old).to_dict().items() if k in old}}
    except (TypeError, ValueError):
        pass
    for key in ("role", "seed", "data", "model", "prior", "corrector"):
        if old.get(key) != cfg.to_dict().get(key):
            raise ValueError(f"the checkpoint was written with a different '{key}' section; resuming would not be "
                             "the same run. Fix: use another output_dir, or --fresh to start over")
    for key in ("batch_size", "lr", "loss_weighting"):
        if old["train"].get(key) != getattr(cfg.train, key):
            raise ValueError(f"the checkpoint was written with train.{key}={old['train'].get(key)!r}; this config has "
                             f"{getattr(cfg.train, key)!r}. Fix: keep it, or --fresh / another output_dir")


def train_flow(config: Union[str, Path, Dict[str, Any], FlowTrainConfig],
               callback: Optional[Callable[[int, Dict[str, float]], None]] = None,
               data: Optional[FlowData] = None) -> Optional[Path]:
    """Train (or resume) and export; returns the artifact path (None on ranks other than 0)."""
    if isinstance(config, FlowTrainConfig):
        cfg = config
    elif isinstance(config, dict):
        cfg = FlowTrainConfig.from_dict(config)
    else:
        cfg = FlowTrainConfig.from_dict(read_config_file(config))
    old_threads = torch.get_num_threads()
    if cfg.train.threads:
        torch.set_num_threads(int(cfg.train.threads))
    try:
        return _train(cfg, callback, data)
    finally:
        torch.set_num_threads(old_threads)


def _train(cfg: FlowTrainConfig, callback: Optional[Callable[[int, Dict[str, float]], None]],
           data: Optional[FlowData]) -> Optional[Path]:
    import torch.distributed as dist

    from engine_plugins.methods.propagator.loss import flow_matching_loss
    from engine_plugins.methods.propagator.model import FlowModelConfig, build_flow_model

    opts = cfg.train
    out = Path(cfg.output_dir)
    ckpt_dir = out / "checkpoints"
    world, rank, local = _dist_info()
    distributed = world > 1
    if distributed and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    if cfg.device == "auto" and distributed and torch.cuda.is_available():
        device = torch.device(f"cuda:{local}")
        torch.cuda.set_device(device)
    else:
        device = _device(cfg.device)
    main_rank = rank == 0

    mcfg_dict = dict(cfg.model)
    data = data or load_flow_data(cfg.data, mcfg_dict.get("type_names"), progress=opts.progress and main_rank)
    mcfg_dict.setdefault("type_names", data.type_names)
    if list(mcfg_dict["type_names"]) != data.type_names:
        raise ValueError(f"model.type_names {mcfg_dict['type_names']} differ from the data's {data.type_names}")
    if cfg.corrector.noise_level is not None:  # a level per type of the data, checked before any training step
        from engine_plugins.methods.propagator.loss import corrector_noise_levels

        corrector_noise_levels(cfg.corrector.noise_level, data.type_names, cfg.corrector.noise_max)
    prior = PriorTable(cfg.prior, data.type_names, data.masses)

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
        mcfg = FlowModelConfig.from_dict(saved["model_config"])
        prior.per_case = {k: dict(v) for k, v in saved["prior_per_case"].items()}
    init_state: Optional[Dict[str, torch.Tensor]] = None
    init_desc: Optional[Dict[str, Any]] = None
    if saved is None and opts.init_from:
        init_mc, init_state, init_desc = load_init_weights(opts.init_from, cfg, data.type_names)
        mcfg = FlowModelConfig.from_dict(init_mc)
        prior.fit_adaptive(data.train)
    elif saved is None:
        mcfg = FlowModelConfig.from_dict(mcfg_dict)
        prior.fit_adaptive(data.train)
        _data_scales(cfg, data, prior, mcfg)
    prior.fit_adaptive(data.val, held_out=True)
    dtype = getattr(torch, mcfg.model_dtype)

    model = build_flow_model(mcfg).to(device)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=opts.lr, weight_decay=opts.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(opts))
    if init_state is not None:  # fine-tuning: the previous run's (EMA) weights as the start
        load_init_state(model, init_state, str(opts.init_from))
        init_state = None
    ema = _EMA(model, opts.ema_decay)
    gen = torch.Generator().manual_seed(int(cfg.seed))
    history: List[Dict[str, Any]] = []
    best: Optional[float] = None
    step = 0
    if saved is not None:
        init_desc = saved.get("init_from")
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        sched.load_state_dict(saved["scheduler"])
        sched.lr_lambdas[0] = _lr_lambda(opts)
        for k, v in saved["ema"].items():
            ema.shadow[k].copy_(v.to(device))
        set_rng_state(saved["rng"], {"train": gen})
        step = int(saved["step"])
        history = list(saved["history"])
        best = saved["best_val_loss"]
    net: Any = model
    if distributed:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)

    def checkpoint(periodic: bool) -> None:
        if not main_rank:
            return
        state = _checkpoint_state(step, model, ema, opt, sched, gen, cfg, mcfg.to_dict(), prior, history, best)
        state["init_from"] = init_desc
        save_checkpoint(state, ckpt_dir / "last.pt")
        if periodic:
            save_checkpoint(state, ckpt_dir / f"step_{step:08d}.pt")
            for p in sorted(ckpt_dir.glob("step_*.pt"))[:-max(1, opts.keep_checkpoints)]:
                p.unlink(missing_ok=True)
        (out / "history.json").write_text(json.dumps(history, indent=1))

    def run_validation() -> Dict[str, Any]:
        nonlocal best
        ema.swap(model)
        try:
            res = validate(model, cfg, data, prior, device, dtype)
        finally:
            ema.swap(model)
        if res:
            best = res["loss"] if best is None else min(best, res["loss"])
        return res

    from tqdm.auto import tqdm

    if main_rank:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
    t_start = time.time()
    bar = tqdm(total=opts.steps, initial=step, desc=cfg.role, unit="step",
               disable=not (opts.progress and main_rank), dynamic_ncols=True)
    running: Optional[float] = None
    last_val = history[-1].get("val_loss") if history else None
    stopped_early = False
    my_graphs = list(range(rank, opts.batch_size, world))
    if not my_graphs:
        raise ValueError(f"train.batch_size={opts.batch_size} is smaller than the number of processes ({world}). "
                         "Fix: a global batch of at least one frame pair per process")
    ds = data.train
    try:
        while step < opts.steps:
            idx = torch.randint(len(ds), (opts.batch_size,), generator=gen).tolist()
            c = Collated([ds[i] for i in idx])
            b = make_training_batch(c, cfg.role, prior, cfg.corrector.noise_max, gen, my_graphs, mcfg.r_max,
                                    noise_types=noise_types_of(model))
            b = {k: v.to(device) for k, v in b.items()}
            v = net(b["x_t"].to(dtype), b["x_cond"].to(dtype), b["types"], b["edge_index"], b["edge_shift"].to(dtype),
                    b["t"].to(dtype), b["temperature"].to(dtype), len(b["types"]), b.get("noise"))
            loss, parts = flow_matching_loss(v, b["target"].to(dtype), b["types"], model.out_scale,
                                             opts.loss_weighting)
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
            if main_rank and (step % opts.val_every == 0 or step == opts.steps):
                res = run_validation()
                last_val = res.get("loss") if res else None
                history.append({**stats, "loss_avg": running, "val_loss": last_val,
                                "val": {k: v for k, v in res.items() if k != "loss"} if res else None,
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
        if main_rank:
            print(f"\n{cfg.role}: interrupted at step {step}; checkpoint {ckpt_dir / 'last.pt'} saved, run the same "
                  "command to resume", file=sys.stderr)
        raise
    bar.close()
    if main_rank and (not history or history[-1]["step"] != step):  # stopped between validations
        res = run_validation()
        history.append({"step": step, "loss": None, "loss_avg": running, "val_loss": res.get("loss") if res else None,
                        "val": {k: v for k, v in res.items() if k != "loss"} if res else None,
                        "elapsed_s": round(time.time() - t_start, 2)})
    checkpoint(periodic=False)
    if not main_rank or cfg.export.path is None:
        return None
    return export_flow_model(model, ema, cfg, mcfg, data, prior, history, step, stopped_early, init_desc)


def flow_metadata(cfg: FlowTrainConfig, mcfg: Any, data: FlowData, prior: PriorTable,
                  max_displacement: float, provenance: Dict[str, Any]) -> Any:
    """Artifact metadata of a trained propagator/corrector (role_fields per the contract)."""
    from engine_plugins.export.metadata import ArtifactMetadata
    from engine_plugins.methods.propagator.model import METHOD_NAME

    ex = cfg.export
    role_fields: Dict[str, Any] = {
        "temperature_range": list(data.temperature_range),
        "flow_steps": int(ex.flow_steps),
        "solver": ex.solver,
        "prior": prior.prior_field(),
        "max_displacement": float(max_displacement),
        "max_attempts": int(ex.max_attempts),
        "graph": f"built on x_cond, all pairs within the cutoff ({mcfg.r_max:g} A), minimum image",
        "flow_state_inputs": ["l=1 node feature (x_t - x_cond)/disp_scale"] + (
            ["Bessel features of |x_t[j] - x_t[i] + shift|"] if mcfg.edge_state else []),
    }
    if cfg.role == "propagator":
        role_fields["delta_tau"] = round(data.delta_tau, 9)
    if cfg.role == "corrector":
        role_fields["noise_max"] = float(cfg.corrector.noise_max)
        role_fields["trained_on"] = "X + N(0, s^2), s ~ U(0, noise_max) -> X, conditioned on the noisy frame"
        if mcfg.noise_conditioning:
            role_fields["trained_on"] = ("X + N(0, s_type^2), s_type ~ U(0, noise_max) per frame and type -> X, "
                                         "conditioned on the noisy frame and on s of each atom")
            from engine_plugins.methods.propagator.loss import corrector_noise_levels

            role_fields["noise_level"] = corrector_noise_levels(cfg.corrector.noise_level, mcfg.type_names,
                                                                cfg.corrector.noise_max)
        if int(ex.passes) != 1:
            role_fields["passes"] = int(ex.passes)
    return ArtifactMetadata(
        role=cfg.role, method=METHOD_NAME, type_names=list(mcfg.type_names), cutoff=float(mcfg.r_max),
        num_message_passing_layers=int(mcfg.num_layers), units=dict(UNITS), dtype=mcfg.model_dtype,
        periodicity="periodic" if data.periodic else "nonperiodic", role_fields=role_fields,
        provenance={"backbone": "nequip", "flow_model_config": mcfg.to_dict(), **provenance})


def _max_displacement(cfg: FlowTrainConfig, data: FlowData) -> float:
    if cfg.export.max_displacement is not None:
        return float(cfg.export.max_displacement)
    if cfg.role == "corrector":
        return round(10.0 * cfg.corrector.noise_max + 1.0, 3)
    longest = 0.0
    for traj in data.train.trajectories:
        pairs = np.arange(0, traj.n_frames - data.train.lag)
        d = traj.positions[pairs + data.train.lag] - traj.positions[pairs]
        longest = max(longest, float(np.sqrt((d ** 2).sum(-1)).max()))
    return round(1.5 * longest + 1.0, 3)


def export_flow_model(model: Any, ema: _EMA, cfg: FlowTrainConfig, mcfg: Any, data: FlowData, prior: PriorTable,
                      history: List[Dict[str, Any]], step: int, stopped_early: bool,
                      init_from: Optional[Dict[str, Any]] = None) -> Path:
    """Script the EMA weights and write the artifact (and ``copy_to``)."""
    from engine_plugins.export.artifact import export_artifact
    from engine_plugins.methods.propagator.model import script_flow_model

    ema.swap(model)
    try:
        final = history[-1] if history else {}
        n_pairs = {"train": len(data.train), "val": len(data.val) if data.val is not None else 0}
        val = final.get("val") or {}
        provenance = {
            "data_set": data.source, "split": data.split, "lag_frames": int(cfg.data.lag),
            "frame_pairs": n_pairs, "mapping": cfg.data.mapping, "steps": step, "stopped_early": stopped_early,
            "train_config": cfg.to_dict(), "ema_decay": cfg.train.ema_decay,
            "metrics": {"val_step": final.get("step"), "val_loss": final.get("val_loss"), "val_mse": val.get("mse"),
                        "val_per_case": val.get("per_case"), "val_jumps": val.get("jumps"),
                        "train_loss_avg": final.get("loss_avg")},
        }
        if init_from:
            provenance["init_from"] = init_from
        export_model, export_cfg = model, mcfg
        if cfg.export.dtype is not None and cfg.export.dtype != mcfg.model_dtype:
            # the same weights in another dtype (e.g. trained in float32 for speed, shipped in float64)
            from engine_plugins.methods.propagator.model import FlowModelConfig, build_flow_model

            export_cfg = FlowModelConfig.from_dict({**mcfg.to_dict(), "model_dtype": cfg.export.dtype})
            export_model = build_flow_model(export_cfg)
            export_model.load_state_dict(model.state_dict())
            provenance["trained_dtype"] = mcfg.model_dtype
        meta = flow_metadata(cfg, export_cfg, data, prior, _max_displacement(cfg, data), provenance)
        model.eval()
        scripted = script_flow_model(export_model, "cpu")
        if export_cfg.noise_conditioning:
            levels = meta.role_fields["noise_level"]
            scripted.noise_level.copy_(torch.tensor([levels[t] for t in export_cfg.type_names], dtype=torch.float64))
        path = Path(cfg.export.path)
        path = path if path.is_absolute() else Path(cfg.output_dir) / path
        export_artifact(scripted, meta, path)
        if cfg.export.copy_to:
            import shutil

            Path(cfg.export.copy_to).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, cfg.export.copy_to)
    finally:
        ema.swap(model)
        model.train()
    return path


def _init_line(init: Optional[Dict[str, Any]]) -> Optional[str]:
    if not init:
        return None
    what = f"artifact `{init.get('path')}`" + (f" ({str(init.get('content_hash'))[:23]}...)"
                                                if init.get("content_hash") else "")
    if init.get("kind") == "checkpoint":
        what = f"checkpoint `{init.get('path')}`"
    before = f" after {init['steps']} steps of its own training" if init.get("steps") is not None else ""
    return f"- fine-tuned (train.init_from) from the {what}{before}; the steps above are the fine-tuning steps"


def write_model_card(artifact: Union[str, Path], path: Union[str, Path], command: str = "",
                     notes: str = "") -> Path:
    """A markdown model card from an artifact's metadata (data, split, settings, validation)."""
    from engine_plugins.export.artifact import read_metadata

    meta = read_metadata(artifact)
    rf, prov = meta.role_fields, meta.provenance
    tc = prov.get("train_config", {})
    mc = prov.get("flow_model_config", {})
    met = prov.get("metrics", {})
    size_kb = Path(artifact).stat().st_size / 1024
    lines = [f"# {Path(artifact).name}: learned {meta.role} (method `{meta.method}`)", ""]
    if notes:
        lines += [notes, ""]
    lines += ["## What it is", "",
              f"- role `{meta.role}`, types {meta.type_names}, cutoff {meta.cutoff:g} A, "
              f"{meta.num_message_passing_layers} message-passing layers (halo {meta.ghost_cutoff:g} A), "
              f"dtype {meta.dtype}, {meta.periodicity}, {size_kb:.0f} KiB, content hash `{meta.content_hash[:23]}...`",
              f"- NequIP vector field: {mc.get('num_features')} features, l_max {mc.get('l_max')}, "
              f"{mc.get('num_bessels')} Bessel functions; graph on x_cond; x_t as l=1 node feature"
              + (" and x_t edge lengths" if mc.get("edge_state") else "")
              + "; Gaussian-Fourier t and T/1000 K conditioning; trained in "
              f"{prov.get('trained_dtype', meta.dtype)}",
              f"- per-type scales (A): disp_scale {mc.get('disp_scale')}, out_scale {mc.get('out_scale')}", ""]
    lines += ["## Engine settings (role_fields)", ""]
    for k in ("delta_tau", "temperature_range", "flow_steps", "solver", "max_displacement", "max_attempts", "noise_max",
              "noise_level", "passes"):
        if k in rf:
            unit = {"delta_tau": " ps", "temperature_range": " K", "max_displacement": " A", "noise_max": " A",
                    "noise_level": " A (the level the corrector is told its input carries)"}.get(k, "")
            lines.append(f"- `{k}`: {json.dumps(rf[k])}{unit}")
    pr = rf.get("prior", {})
    lines += [f"- `prior`: {pr.get('kind')}, scale {json.dumps(pr.get('scale'))}, mass {json.dumps(pr.get('mass'))} "
              "(sigma = scale sqrt(k_B T / m) A)", ""]
    data = tc.get("data", {})
    split = prov.get("split", {})
    lines += ["## Data and split", "",
              f"- cases: `{prov.get('data_set')}`; lag {prov.get('lag_frames')} frames"
              + (f"; CG mapping `{prov.get('mapping')}`" if prov.get("mapping") else ""),
              f"- whole-case split ({json.dumps(data.get('split', {}))}):",
              f"  - train ({len(split.get('train', []))}): {', '.join(split.get('train', []))}",
              f"  - validation ({len(split.get('val', []))}): {', '.join(split.get('val', []))}",
              f"  - test, never seen ({len(split.get('test', []))}): {', '.join(split.get('test', [])) or '-'}",
              f"- frame pairs: {json.dumps(prov.get('frame_pairs'))}", ""]
    tr = tc.get("train", {})
    lines += ["## Training", "",
              f"- {prov.get('steps')} steps" + (" (stopped by max_minutes)" if prov.get("stopped_early") else "")
              + f", batch {tr.get('batch_size')} frame pairs, AdamW lr {tr.get('lr')} (warm-up + cosine), "
              f"grad clip {tr.get('grad_clip')}, EMA {tr.get('ema_decay')}, loss weighting `{tr.get('loss_weighting')}`, "
              f"seed {tc.get('seed')}",
              _init_line(prov.get("init_from")),
              f"- command: `{command}`" if command else "", ""]
    at = f" at step {met['val_step']}" if met.get("val_step") is not None else ""
    lines += [f"## Validation (held-out cases, EMA weights, fixed noise{at})", "",
              f"- flow-matching loss {met.get('val_loss')!s:.6} (per-type normalised: about 1.0 for a zero prediction on the training distribution), raw MSE "
              f"{met.get('val_mse')!s:.6} A^2; last training loss (running mean) {met.get('train_loss_avg')!s:.6}"]
    for cid, row in sorted((met.get("val_per_case") or {}).items()):
        lines.append(f"  - {cid}: loss {row.get('loss', float('nan')):.4f}")
    jumps = met.get("val_jumps") or {}
    if jumps:
        if meta.role == "propagator":
            lines += ["- one sampled jump vs reference (mean squared displacement per species over delta_tau, A^2; "
                      f"{rf.get('flow_steps')} {rf.get('solver')} steps, no corrector):", "",
                      "| case | species | MSD reference | MSD sampled | ratio |", "|---|---|---|---|---|"]
            for cid, row in sorted(jumps.items()):
                for sp in row.get("msd_reference", {}):
                    lines.append(f"| {cid} | {sp} | {row['msd_reference'][sp]:.4g} | {row['msd_sampled'][sp]:.4g} | "
                                 f"{row['msd_ratio'][sp]:.3f} |")
        else:
            lines += ["- rms distance to the clean frame before / after correction (A), noise s = noise_max/2:", "",
                      "| case | species | before | after |", "|---|---|---|---|"]
            for cid, row in sorted(jumps.items()):
                for sp in row.get("rms_before", {}):
                    lines.append(f"| {cid} | {sp} | {row['rms_before'][sp]:.4f} | {row['rms_after'][sp]:.4f} |")
    lines += ["", "## Rollout metrics", "", "(added by the evaluation: `engine-plugins evaluate ...`)", ""]
    path = Path(path)
    path.write_text("\n".join(l for l in lines if l is not None) + "\n")
    return path


# ------------------------------------------------------------------------------------------------
# command line
# ------------------------------------------------------------------------------------------------
def build_parser(role: Optional[str] = None) -> argparse.ArgumentParser:
    prog = f"engine-plugins train {role or 'propagator'}"
    p = argparse.ArgumentParser(prog=prog, description="train a flow-matching propagator/corrector and export it "
                                                       "(resumes by default; torchrun for several processes)")
    p.add_argument("config", help="JSON or YAML config (see engine_plugins.train.propagator)")
    if role is None:
        p.add_argument("--role", choices=ROLES, help="override the config's role")
    p.add_argument("--steps", type=int, help="override train.steps")
    p.add_argument("--output-dir", help="override output_dir")
    p.add_argument("--fresh", action="store_true", help="do not resume from output_dir/checkpoints/last.pt")
    p.add_argument("--max-minutes", type=float, help="stop with a checkpoint (and export) after this wall time")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: Optional[Sequence[str]] = None, role: Optional[str] = None) -> int:
    args = build_parser(role).parse_args(argv)
    raw = read_config_file(args.config)
    want = role or getattr(args, "role", None)
    if want is not None:
        if "role" in raw and raw["role"] != want and role is not None:
            raise SystemExit(f"engine-plugins train {role}: the config {args.config} is for role '{raw['role']}'. "
                             f"Fix: `engine-plugins train {raw['role']} {args.config}`")
        raw["role"] = want
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
    cfg = FlowTrainConfig.from_dict(raw)

    def _term(signum, frame):  # noqa: ARG001 - SIGTERM: checkpoint like Ctrl-C
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, _term)
    try:
        path = train_flow(cfg)
    except KeyboardInterrupt:
        return 130
    finally:
        signal.signal(signal.SIGTERM, old)
        try:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
        except Exception:  # noqa: BLE001 - best effort at exit
            pass
    if path is not None:
        print(f"wrote {path}")
        hist = json.loads((Path(cfg.output_dir) / "history.json").read_text())
        if hist:
            print(json.dumps({k: hist[-1].get(k) for k in ("step", "loss_avg", "val_loss")}))
    return 0


def main_corrector(argv: Optional[Sequence[str]] = None) -> int:
    """``engine-plugins train corrector CONFIG``."""
    return main(argv, role="corrector")


if __name__ == "__main__":
    sys.exit(main())
