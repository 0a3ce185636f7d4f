"""Standalone GPFF samplers: turn noise (or a partial structure) into structures with a pseudo-force.

Works on any ``pseudo_force`` module (an artifact path, a loaded :class:`Artifact`, its
TorchScript module, or the eager model): positions change, the composition (``types``) is fixed.
The model has no time input, so every sampler reads the learned pseudo-force ``F(x)`` as the
denoising displacement (``x + F`` = estimated clean structure, see noise.py) and owns its own
noise schedule:

* ``ancestral``: annealed through ``nfe`` levels of the sigma ladder with noise injection
  (variance-exploding ancestral step: move to ``sigma_down`` along ``F``, add ``sigma_up`` noise,
  ``sigma_down^2 + sigma_up^2 = sigma_next^2``); the last step is ``x + F``. NFE = ``nfe``.
* ``heun``: the probability-flow ODE ``dx/dsigma = -F(x)/sigma`` with Heun's method (EDM
  style); ``K = ceil((nfe + 1) / 2)`` steps, the last (to sigma = 0) an Euler step ``x + F``,
  and ``nfe - K`` Heun corrections on the lowest-sigma steps before it. NFE = ``nfe`` exactly.
* ``denoise``: direct denoising ``x <- x + step * F`` (``step = 1/2`` default), ``nfe`` times,
  optionally re-noised between steps with ``renoise * sigma_k`` (``sigma_k`` down the ladder).
* ``adaptive``: the same ODE with an embedded Euler/Heun pair and step-size control in log sigma
  (``atol + rtol * sigma`` per coordinate, RMS over free atoms); ``nfe`` is a budget, the result
  reports what was used. Starting sigma may be estimated from the force magnitude (no time input:
  ``|F|^2 / dof`` is the noise variance of a structure the model sees as noisy), for any sampler.

Constraints: ``fixed_mask`` atoms are held exactly at their given positions (updates and noise
are zeroed there; no centroid projection then, the fixed atoms anchor the frame); a scaffold is
a fixed subset; a partial structure gives some rows of ``init_positions`` and NaN for the rest,
which start from noise around the given atoms' centroid. Without fixed atoms the centroid of every
update and every noise draw is removed (no drift).

Function evaluations are counted exactly (one evaluation = one model call on all samples).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch

SAMPLERS = ("ancestral", "heun", "denoise", "adaptive")
SCHEDULES = ("karras", "geometric")


class SamplerError(ValueError):
    """Bad sampler input (the message names it and the fix)."""


# ------------------------------------------------------------------------------------------------
# noise schedule
# ------------------------------------------------------------------------------------------------
def sigma_ladder(n: int, sigma_max: float, sigma_min: float, kind: str = "karras", rho: float = 7.0,
                 dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """``n`` decreasing noise levels from ``sigma_max`` to ``sigma_min`` (inclusive), then a final 0.

    ``karras``: EDM's ``(s_max^(1/rho) + i/(n-1) (s_min^(1/rho) - s_max^(1/rho)))^rho`` (dense at low
    sigma); ``geometric``: log-uniform spacing.
    """
    if n < 1:
        raise SamplerError(f"need at least one noise level, got {n}")
    if not sigma_max >= sigma_min > 0:
        raise SamplerError(f"need sigma_max >= sigma_min > 0, got {sigma_max}, {sigma_min}")
    if n == 1:
        s = torch.tensor([sigma_max], dtype=dtype)
    elif kind == "karras":
        i = torch.arange(n, dtype=dtype) / (n - 1)
        s = (sigma_max ** (1 / rho) + i * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    elif kind == "geometric":
        s = torch.exp(torch.linspace(math.log(sigma_max), math.log(sigma_min), n, dtype=dtype))
    else:
        raise SamplerError(f"schedule '{kind}': use one of {SCHEDULES}")
    return torch.cat([s, torch.zeros(1, dtype=dtype)])


# ------------------------------------------------------------------------------------------------
# the model as a counted force function on [S, N, 3]
# ------------------------------------------------------------------------------------------------
@dataclass
class _ModelInfo:
    module: torch.nn.Module
    cutoff: float
    dtype: torch.dtype
    type_names: Optional[List[str]]
    sigma_min: float
    sigma_max: float
    defaults: Dict[str, Any]
    conservative: Optional[bool]
    aligned: bool = True  # targets were Kabsch-aligned (rotations carry no force)


def _model_info(model: Any) -> _ModelInfo:
    from engine_plugins.export.artifact import Artifact, load_artifact

    if isinstance(model, (str, os.PathLike)):
        model = load_artifact(model)
    if isinstance(model, Artifact):
        meta = model.metadata
        if meta.role != "pseudo_force":
            raise SamplerError(f"model role is '{meta.role}'; the GPFF samplers need a 'pseudo_force' model")
        if meta.periodicity == "periodic":
            raise SamplerError("this model is periodic; the standalone samplers generate molecules (no cell). "
                               "Fix: use a non-periodic pseudo-force model")
        rf = meta.role_fields
        defaults = {k: rf[k] for k in ("default_sampler", "default_nfe", "denoise_step") if k in rf}
        defaults.update({f"schedule_{k}": v for k, v in rf.get("sampler_schedule", {}).items()})
        return _ModelInfo(model.module, float(meta.cutoff), getattr(torch, meta.dtype), list(meta.type_names),
                          float(rf.get("sigma_min", 0.05)), float(rf.get("sigma_max", 3.0)), defaults,
                          bool(rf.get("conservative")), bool(rf.get("noise", {}).get("align_target", True)))
    if not isinstance(model, torch.nn.Module):
        raise SamplerError(f"model must be an artifact path, an Artifact or a torch module, not {type(model).__name__}")
    cutoff = getattr(model, "cutoff", None)
    if cutoff is None:
        raise SamplerError("the model has no 'cutoff' attribute, so the samplers cannot build its graph. "
                           "Fix: pass the artifact (path or Artifact) instead of the bare module")
    dtype = {"float32": torch.float32, "float64": torch.float64}.get(str(getattr(model, "model_dtype", "")), None)
    if dtype is None:
        p = next(iter(model.buffers()), None) if not list(model.parameters()) else next(iter(model.parameters()))
        dtype = p.dtype if p is not None and p.is_floating_point() else torch.float64
    names = getattr(model, "type_names", None)
    return _ModelInfo(model, float(cutoff), dtype, list(names) if names is not None else None,
                      float(getattr(model, "sigma_min", 0.05)), float(getattr(model, "sigma_max", 3.0)), {},
                      None if not hasattr(model, "direct") else not bool(getattr(model, "direct")),
                      bool(getattr(model, "align", True)))


class CountedForce:
    """``F(x)`` for ``x`` [S, N, 3] through one model call on a disjoint graph of the S copies."""

    def __init__(self, module: torch.nn.Module, types: torch.Tensor, cutoff: float, dtype: torch.dtype,
                 device: torch.device, segments: Optional[torch.Tensor] = None) -> None:
        self.module = module
        self.types = types.to(device)
        self.cutoff = float(cutoff)
        self.dtype = dtype
        self.device = device
        self.nfe = 0
        self.all_pairs = types.shape[0] <= 256 or segments is not None
        if segments is not None:  # several molecules side by side: all pairs within each one only
            seg = segments.to(torch.long).cpu()
            same = seg.unsqueeze(0) == seg.unsqueeze(1)
            same.fill_diagonal_(False)
            ii, jj = torch.nonzero(same, as_tuple=True)
            self._i, self._j = ii.to(device), jj.to(device)
        else:
            n = types.shape[0] if self.all_pairs else 0  # all candidate pairs for molecules
            ii = torch.arange(n, device=device).repeat_interleave(n)
            jj = torch.arange(n, device=device).repeat(n)
            keep = ii != jj
            self._i, self._j = ii[keep], jj[keep]

    def graph(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        s, n = x.shape[0], x.shape[1]
        if not self.all_pairs:  # large systems: the cell-list graph per sample instead of all pairs
            from engine_plugins.nn.graph import neighbor_graph

            parts = [neighbor_graph(x[k], self.cutoff)[0] + k * n for k in range(s)]
            ei = torch.cat(parts, 1)
            return ei, torch.zeros(ei.shape[1], 3, dtype=x.dtype, device=x.device)
        d = x[:, self._j] - x[:, self._i]  # [S, P, 3]
        keep = d.square().sum(-1) < self.cutoff ** 2
        sidx, pidx = torch.nonzero(keep, as_tuple=True)
        ei = torch.stack([self._i[pidx] + sidx * n, self._j[pidx] + sidx * n])
        return ei, torch.zeros(ei.shape[1], 3, dtype=x.dtype, device=x.device)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        s, n = x.shape[0], x.shape[1]
        xm = x.to(self.dtype)
        ei, es = self.graph(xm)
        with torch.enable_grad():
            _, f = self.module(xm.reshape(s * n, 3), self.types.repeat(s), ei, es, s * n)
        self.nfe += 1
        f = f.detach().to(x.dtype).view(s, n, 3)
        if not bool(torch.isfinite(f).all()):
            raise FloatingPointError("the model returned non-finite pseudo-forces (a blown-up structure?)")
        return f


@dataclass
class SampleResult:
    """Sampler output: positions [S, N, 3] (A), the exact NFE, the noise levels used."""

    positions: torch.Tensor
    nfe: int
    sampler: str
    sigmas: List[float]
    trajectory: Optional[torch.Tensor] = None
    info: Dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------------
# constraint helpers
# ------------------------------------------------------------------------------------------------
class _Frame:
    """Applies the free-atom mask and the centroid projection to updates and noise."""

    def __init__(self, free: torch.Tensor, generator: torch.Generator, shape: Tuple[int, int, int],
                 dtype: torch.dtype, device: torch.device, max_step: Optional[float] = None,
                 segments: Optional[torch.Tensor] = None) -> None:
        self.free = free.to(device=device, dtype=dtype).view(1, -1, 1)
        self.max_step = max_step
        self.clipped = 0
        self.anchored = bool((free == 0).any())
        self.gen = generator
        self.shape = shape
        self.dtype = dtype
        self.device = device
        self.seg: Optional[torch.Tensor] = None
        if segments is not None:  # per molecule: centroid projection unless that molecule has fixed atoms
            self.seg = segments.to(device=device, dtype=torch.long)
            self.n_seg = int(self.seg.max()) + 1
            has_fixed = torch.zeros(self.n_seg, dtype=dtype, device=device).index_add_(
                0, self.seg, (self.free.view(-1) == 0).to(dtype)) > 0
            self.seg_free = (~has_fixed).to(dtype)  # [n_seg] 1: projected
            self.count = torch.bincount(self.seg, minlength=self.n_seg).to(dtype)
            self.anchored = bool(has_fixed.all())

    def _seg_centre(self, dx: torch.Tensor) -> torch.Tensor:
        assert self.seg is not None
        tot = torch.zeros(dx.shape[0], self.n_seg, 3, dtype=dx.dtype, device=dx.device).index_add_(1, self.seg, dx)
        mean = tot / self.count.view(1, -1, 1) * self.seg_free.view(1, -1, 1)
        return dx - mean[:, self.seg]

    def project(self, dx: torch.Tensor, clip: bool = True) -> torch.Tensor:
        dx = dx * self.free
        if self.seg is not None:
            dx = self._seg_centre(dx)
        elif not self.anchored:
            dx = dx - dx.mean(1, keepdim=True)
        if clip and self.max_step is not None:
            # a trust region: scale a sample's whole update so no atom moves more than max_step
            # (keeps the update's direction and its zero centroid)
            longest = dx.norm(dim=-1).amax(1)  # [S]
            scale = torch.clamp(self.max_step / longest.clamp(min=1e-300), max=1.0)
            self.clipped += int((scale < 1.0).sum())
            dx = dx * scale.view(-1, 1, 1)
        return dx

    def noise(self) -> torch.Tensor:
        eps = torch.randn(self.shape, generator=self.gen, dtype=torch.float64).to(self.device, self.dtype)
        return self.project(eps, clip=False)

    def rms(self, v: torch.Tensor) -> torch.Tensor:
        """Per-sample RMS per coordinate of ``v`` over free atoms [S]."""
        nfree = self.free.sum().clamp(min=1)
        return ((v * self.free).square().sum((1, 2)) / (3 * nfree)).sqrt()

    def sigma_estimate(self, force: torch.Tensor, aligned: bool) -> torch.Tensor:
        """Noise level implied by a pseudo-force [S]: ``|F|^2 = sigma^2 * dof`` for isotropic noise,
        with the rigid degrees of freedom the target does not see removed (centroid, and rotations
        for aligned targets) unless fixed atoms anchor the frame."""
        def rigid_dofs(nf: int) -> int:
            return 3 + ((3 if nf > 2 else 2 if nf == 2 else 0) if aligned else 0)

        nfree = int(self.free.sum())
        rigid = 0
        if self.seg is not None:
            nf_seg = torch.zeros(self.n_seg, dtype=self.dtype, device=self.device).index_add_(
                0, self.seg, self.free.view(-1))
            rigid = sum(rigid_dofs(int(nf)) for nf, p in zip(nf_seg.tolist(), self.seg_free.tolist()) if p > 0)
        elif not self.anchored:
            rigid = rigid_dofs(nfree)
        dof = max(1, 3 * nfree - rigid)
        return ((force * self.free).square().sum((1, 2)) / dof).sqrt()


def _resolve_types(types: Union[Sequence[Any], torch.Tensor], type_names: Optional[List[str]]) -> torch.Tensor:
    if isinstance(types, torch.Tensor):
        t = types.to(torch.long).view(-1)
    else:
        types = list(types)
        if types and all(isinstance(t, str) for t in types):
            if type_names is None:
                raise SamplerError("types are names but the model does not list its type names. Fix: pass "
                                   "integer type indices or the artifact")
            unknown = sorted({t for t in types if t not in type_names})
            if unknown:
                raise SamplerError(f"element/type(s) {', '.join(unknown)} are not known to the model (it knows "
                                   f"{', '.join(type_names)}). Fix: use a model trained on them")
            t = torch.tensor([type_names.index(x) for x in types], dtype=torch.long)
        else:
            t = torch.tensor([int(x) for x in types], dtype=torch.long)
    if t.numel() == 0:
        raise SamplerError("empty structure: give at least one atom type")
    if type_names is not None and (int(t.min()) < 0 or int(t.max()) >= len(type_names)):
        raise SamplerError(f"type indices must be in 0..{len(type_names) - 1}")
    return t


# ------------------------------------------------------------------------------------------------
# the samplers (each updates x in place of a copy and returns (x, sigmas used, info))
# ------------------------------------------------------------------------------------------------
def ancestral_step(s: float, s_next: float, eta: float) -> Tuple[float, float]:
    """``(c, s_up)`` of one variance-exploding ancestral step ``x <- x + c F + s_up z`` from ``s`` to
    ``s_next``: ``s_up = min(s_next, eta s_next sqrt(1 - s_next^2/s^2))``, ``sigma_down^2 + s_up^2 =
    s_next^2``, ``c = 1 - sigma_down/s``; the last step (``s_next = 0``) is ``x + F``. Shared by the
    standalone sampler and the engines' schedules."""
    if s_next == 0.0:
        return 1.0, 0.0
    s_up = min(s_next, eta * math.sqrt(max(s_next ** 2 * (s ** 2 - s_next ** 2) / s ** 2, 0.0)))
    s_down = math.sqrt(max(s_next ** 2 - s_up ** 2, 0.0))
    return 1.0 - s_down / s, s_up


def _ancestral(f: CountedForce, x: torch.Tensor, fr: _Frame, sig: torch.Tensor, eta: float, traj: list):
    for i in range(len(sig) - 1):
        c, s_up = ancestral_step(float(sig[i]), float(sig[i + 1]), eta)
        x = x + fr.project(c * f(x))
        if s_up > 0:
            x = x + s_up * fr.noise()
        traj.append(x)
    return x


def _heun(f: CountedForce, x: torch.Tensor, fr: _Frame, sig: torch.Tensor, n_corr: int, traj: list):
    k = len(sig) - 1
    corrected = set(range(k - 1 - n_corr, k - 1))
    for i in range(k):
        s, s_next = float(sig[i]), float(sig[i + 1])
        F = f(x)
        x_e = x + fr.project((1.0 - s_next / s) * F)
        if i in corrected and s_next > 0:
            F2 = f(x_e)
            # dx/dsigma = -F/sigma; trapezoid between (s, x) and (s_next, x_e)
            x = x + fr.project(0.5 * (s - s_next) * (F / s + F2 / s_next))
        else:
            x = x_e
        traj.append(x)
    return x


def _denoise(f: CountedForce, x: torch.Tensor, fr: _Frame, nfe: int, step: float, renoise: float,
             sig: torch.Tensor, traj: list):
    for k in range(nfe):
        x = x + fr.project(step * f(x))
        if renoise > 0 and k < nfe - 1:
            x = x + renoise * float(sig[k + 1]) * fr.noise()
        traj.append(x)
    return x


def _adaptive(f: CountedForce, x: torch.Tensor, fr: _Frame, budget: int, sigma_start: float,
              sigma_min: float, atol: float, rtol: float, F: Optional[torch.Tensor], traj: list):
    s = sigma_start
    if F is None:
        F = f(x)
    used = [s]
    n_steps = max(1, budget // 2 - 1)
    h = math.log(max(s / sigma_min, 1.0 + 1e-9)) / n_steps  # first guess: even steps in log sigma
    accepted = rejected = 0
    while s > sigma_min * (1 + 1e-9) and budget - f.nfe >= 2:
        s_next = max(s * math.exp(-h), sigma_min)
        x_e = x + fr.project((1.0 - s_next / s) * F)
        F_e = f(x_e)
        x_h = x + fr.project(0.5 * (s - s_next) * (F / s + F_e / s_next))
        err = float(fr.rms(x_h - x_e).max())
        tol = atol + rtol * s_next
        if err <= tol:
            x, s = x_h, s_next
            F = f(x)
            accepted += 1
            used.append(s)
            traj.append(x)
        else:
            rejected += 1
        h = h * min(2.0, max(0.2, 0.9 * math.sqrt(tol / max(err, 1e-30))))
    x = x + fr.project(F)  # final denoise to sigma = 0 (no new evaluation)
    traj.append(x)
    used.append(0.0)
    return x, used, {"accepted": accepted, "rejected": rejected}


def sample(model: Any, types: Union[Sequence[Any], torch.Tensor], n_atoms: Optional[int] = None,
           init_positions: Optional[torch.Tensor] = None, *, sampler: Optional[str] = None,
           nfe: Optional[int] = None, seed: int = 0, fixed_mask: Optional[torch.Tensor] = None,
           n_samples: int = 1, sigma_max: Optional[float] = None, sigma_min: Optional[float] = None,
           sigma_start: Union[float, str, None] = None, perturb: float = 0.0, schedule: Optional[str] = None,
           rho: Optional[float] = None, eta: float = 1.0, step: Optional[float] = None, renoise: float = 0.0,
           atol: float = 0.01, rtol: float = 0.05, max_step: Optional[float] = None,
           device: Union[str, torch.device, None] = None, return_trajectory: bool = False,
           segments: Optional[torch.Tensor] = None) -> SampleResult:
    """Generate ``n_samples`` structures of composition ``types`` with a GPFF pseudo-force model.

    ``types``: one type per atom (model type names or indices; ``n_atoms`` must match if given).
    ``init_positions`` [N, 3] (A): a structure to refine, or a partial one (NaN rows are unknown
    and start from noise). ``fixed_mask`` [N] bool: atoms held exactly (need given positions).
    ``sigma_start``: the starting noise level: a number, ``"auto"`` (estimated from the first force
    evaluation, which counts in NFE), or None (``sigma_max`` if any atom is unknown, else
    ``"auto"``). ``perturb``: noise (A) added to given, free atoms before sampling. ``max_step``:
    optional cap (A) on any atom's deterministic displacement per update: a sample's update is
    scaled down as a whole when needed (a trust region against a model that blows up on
    overlapping atoms; off by default; ``info["clipped"]`` counts the scaled updates). Defaults
    (sampler, nfe, schedule, sigma range, denoise step) come from the artifact's metadata.
    ``segments`` [N] (molecule index per atom, 0..M-1): several molecules sampled side by side in
    one model call per step (graph: all pairs within each molecule only; centroid projection per
    molecule; one shared noise schedule; ``adaptive`` then controls one step size for all of them
    and ``sigma_start="auto"`` takes one level from all of them). Needs every start position.
    Returns a :class:`SampleResult` with positions [S, N, 3] and the exact NFE.
    """
    if isinstance(model, (str, os.PathLike)):
        from engine_plugins.export.artifact import load_artifact

        model = load_artifact(model)  # once: a run on another device moves this module there and back
    info = _model_info(model)
    module = info.module
    home = next((p.device for p in list(module.parameters()) + list(module.buffers())), torch.device("cpu"))
    dev = torch.device(device) if device is not None else home
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SamplerError(f"device '{dev}' asked for, but torch sees no CUDA device. Fix: run on the CPU "
                           "(--device cpu or auto; in Python device='cpu' or None)")
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    moved = dev != home and any(True for _ in list(module.parameters()) + list(module.buffers()))
    if moved:  # run there, then hand the module back where it was (it may be shared with other callers)
        module.to(dev)
    try:
        return _sample(info, module, types, n_atoms, init_positions, sampler, nfe, seed, fixed_mask, n_samples,
                       sigma_max, sigma_min, sigma_start, perturb, schedule, rho, eta, step, renoise, atol, rtol,
                       max_step, dev, return_trajectory, segments)
    finally:
        if moved:
            module.to(home)


def _sample(info: "_ModelInfo", module: torch.nn.Module, types: Union[Sequence[Any], torch.Tensor],
            n_atoms: Optional[int], init_positions: Optional[torch.Tensor], sampler: Optional[str],
            nfe: Optional[int], seed: int, fixed_mask: Optional[torch.Tensor], n_samples: int,
            sigma_max: Optional[float], sigma_min: Optional[float], sigma_start: Union[float, str, None],
            perturb: float, schedule: Optional[str], rho: Optional[float], eta: float, step: Optional[float],
            renoise: float, atol: float, rtol: float, max_step: Optional[float], dev: torch.device,
            return_trajectory: bool, segments: Optional[torch.Tensor]) -> SampleResult:
    """The body of :func:`sample`, with the module already on ``dev``."""
    was_training = module.training
    module.eval()
    sampler = sampler or info.defaults.get("default_sampler", "heun")
    if sampler not in SAMPLERS:
        raise SamplerError(f"sampler '{sampler}': use one of {', '.join(SAMPLERS)}")
    nfe = int(nfe if nfe is not None else info.defaults.get("default_nfe", 32))
    if nfe < 1:
        raise SamplerError(f"nfe={nfe}: need at least one function evaluation")
    s_max = float(sigma_max if sigma_max is not None else info.sigma_max)
    s_min = float(sigma_min if sigma_min is not None else info.sigma_min)
    schedule = schedule or info.defaults.get("schedule_kind", "karras")
    rho = float(rho if rho is not None else info.defaults.get("schedule_rho", 7.0))
    step = float(step if step is not None else info.defaults.get("denoise_step", 0.5))
    t = _resolve_types(types, info.type_names)
    n = t.shape[0]
    if n_atoms is not None and int(n_atoms) != n:
        raise SamplerError(f"n_atoms={n_atoms} but {n} types were given")
    if n_samples < 1:
        raise SamplerError(f"n_samples={n_samples}: need at least one")
    dtype = torch.float64
    gen = torch.Generator().manual_seed(int(seed))

    # --- known / fixed atoms and the start structure
    if init_positions is not None:
        init = torch.as_tensor(init_positions, dtype=dtype).detach().cpu().clone()
        if tuple(init.shape) != (n, 3):
            raise SamplerError(f"init_positions has shape {tuple(init.shape)}, expected ({n}, 3)")
        if bool(torch.isinf(init).any()):
            raise SamplerError("init_positions contains inf; use NaN rows for unknown atoms")
        known = torch.isfinite(init).all(1)
    else:
        init = torch.full((n, 3), float("nan"), dtype=dtype)
        known = torch.zeros(n, dtype=torch.bool)
    if fixed_mask is not None:
        fixed = torch.as_tensor(fixed_mask, dtype=torch.bool).view(-1).cpu()
        if fixed.shape[0] != n:
            raise SamplerError(f"fixed_mask has {fixed.shape[0]} entries for {n} atoms")
        if bool((fixed & ~known).any()):
            bad = torch.nonzero(fixed & ~known).view(-1).tolist()
            raise SamplerError(f"fixed atom(s) {bad} have no (finite) position in init_positions")
    else:
        fixed = torch.zeros(n, dtype=torch.bool)
    if bool(fixed.all()):
        raise SamplerError("every atom is fixed: nothing to sample")
    free = (~fixed).to(dtype)
    shape = (n_samples, n, 3)
    if max_step is not None and not max_step > 0:
        raise SamplerError(f"max_step={max_step}: must be positive (or None)")
    if segments is not None:
        segments = torch.as_tensor(segments, dtype=torch.long).view(-1).cpu()
        if segments.shape[0] != n:
            raise SamplerError(f"segments has {segments.shape[0]} entries for {n} atoms")
        if int(segments.min()) < 0 or bool((torch.bincount(segments) == 0).any()):
            raise SamplerError("segments must number the molecules 0..M-1, each with at least one atom")
        if not bool(known.all()):
            raise SamplerError("segments need every start position (draw the prior per molecule first)")
    fr = _Frame(free, gen, shape, dtype, dev, max_step, segments)
    f = CountedForce(module, t, info.cutoff, info.dtype, dev, segments)

    if sigma_start is None:
        sigma_start = "auto" if bool(known.all()) else s_max
    centre = init[known].mean(0) if bool(known.any()) else torch.zeros(3, dtype=dtype)
    x = init.unsqueeze(0).repeat(n_samples, 1, 1)
    unknown = ~known
    F0: Optional[torch.Tensor] = None
    x = x.to(dev)
    if isinstance(sigma_start, str):
        if sigma_start != "auto":
            raise SamplerError(f"sigma_start='{sigma_start}': give a number, 'auto' or None")
        if bool(unknown.any()):
            raise SamplerError("sigma_start='auto' needs every atom's position (some are unknown/NaN)")
        if perturb > 0:
            x = x + perturb * fr.noise()
        F0 = f(x)
        s0 = float(fr.sigma_estimate(F0, info.aligned).max())
        s0 = min(max(s0, s_min), s_max)
    else:
        s0 = float(sigma_start)
        if not s0 > 0:
            raise SamplerError(f"sigma_start={s0}: must be positive")
        eps = torch.randn(shape, generator=gen, dtype=torch.float64).to(dev, dtype)
        um = unknown.to(dev, dtype).view(1, n, 1)
        if not fr.anchored and bool(unknown.all()):
            eps = eps - eps.mean(1, keepdim=True)
        x = torch.where(um.bool(), centre.to(dev) + s0 * eps, x)
        if perturb > 0:
            pm = (known & ~fixed).to(dev, dtype).view(1, n, 1)
            x = x + perturb * pm * torch.randn(shape, generator=gen, dtype=torch.float64).to(dev, dtype)
    s0 = max(s0, s_min)
    traj: list = [x] if return_trajectory else []
    record: list = traj if return_trajectory else _Discard()
    fixed_pos = init.to(dev).unsqueeze(0)
    fmask = fixed.to(dev).view(1, n, 1)

    run_info: Dict[str, Any] = {"sigma_start": s0}
    remaining = nfe - f.nfe
    if sampler != "adaptive" and remaining < 1:
        raise SamplerError(f"nfe={nfe} leaves no evaluation after estimating sigma_start; raise nfe")
    if sampler == "ancestral":
        sig = sigma_ladder(remaining, s0, min(s_min, s0), schedule, rho)
        x = _ancestral(f, x, fr, sig, eta, record)
        used = sig.tolist()
    elif sampler == "heun":
        k = (remaining + 2) // 2  # ceil((remaining + 1) / 2)
        sig = sigma_ladder(k, s0, min(s_min, s0), schedule, rho)
        x = _heun(f, x, fr, sig, remaining - k, record)
        used = sig.tolist()
    elif sampler == "denoise":
        sig = sigma_ladder(remaining, s0, min(s_min, s0), schedule, rho)
        if F0 is not None:  # the sigma estimate's evaluation is also the first denoising step
            x = x + fr.project(step * F0)
            record.append(x)
            if renoise > 0:
                x = x + renoise * float(sig[0]) * fr.noise()
        x = _denoise(f, x, fr, remaining, step, renoise, sig, record)
        used = sig.tolist()
    else:
        x, used, extra = _adaptive(f, x, fr, nfe, s0, min(s_min, s0), atol, rtol, F0, record)
        run_info.update(extra)
    if max_step is not None:
        run_info["clipped"] = fr.clipped
    # fixed atoms exactly where they were given (updates were already zero there)
    x = torch.where(fmask, fixed_pos.expand_as(x), x)
    if was_training:
        module.train()
    return SampleResult(positions=x.detach().cpu(), nfe=f.nfe, sampler=sampler, sigmas=[float(v) for v in used],
                        trajectory=torch.stack([v.detach().cpu() for v in traj]) if return_trajectory else None,
                        info=run_info)


class _Discard(list):
    def append(self, _item: Any) -> None:  # noqa: D401 - a list that keeps nothing
        return None


__all__ = ["CountedForce", "SAMPLERS", "SCHEDULES", "SampleResult", "SamplerError", "sample", "sigma_ladder"]
