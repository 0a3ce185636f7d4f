"""The flow ODE loop of a learned jump, as TorchScript, and a standalone rollout (``propagate``).

Why TorchScript: the same :class:`FlowSampler` runs standalone, inside OpenMM's TorchForce
(``engine_plugins.engines.openmm_propagate``) and anywhere else without Python, so every engine
path draws the same noise and integrates the same ODE as this reference.

One jump follows the contract in :mod:`engine_plugins.methods.propagator` exactly:

* graph on ``x_cond`` (cutoff from the metadata; minimum image with a box, plain without);
* ``x_0 = x_cond + sigma_i z_i`` with ``z = counter_normal(seed, step, tags, attempt)``, global ids
  ``tag = index + 1``; ``sigma_i = scale[type] sqrt(k_B T / mass[type])`` in Å, converted to the
  artifact's length unit; the product ``sigma_i z_i`` is formed in float64, then cast to the
  model dtype;
* Euler or Heun with ``K`` flow steps (metadata ``flow_steps``/``solver``, overridable);
* ``d = x_K - x_cond`` minus its mass-weighted mean (masses of ``role_fields.prior.mass``);
* every atom has its own draw counter ``attempt_i`` (0 at the first draw);
* a jump whose ``d`` is non-finite or has an atom moved farther than ``max_displacement`` (Å)
  is redrawn with every ``attempt_i + 1``; ``max_attempts`` is the total number of such failed
  draws (first one included) after which the call raises. ``retries`` counts these redraws;
* contact redraw (``role_fields.contact``; off without it): after an accepted draw, every atom
  closer to a graph neighbour (edges built on ``x_cond``) than ``min_distance`` of their type
  pair at ``x_cond + d`` gets ``attempt_i + 1`` and the jump is integrated again from ``x_cond``,
  at most ``rounds`` times; then the jump is accepted as it is (``contact_left`` counts those).
  Why: the vector field is trained on frame pairs where atoms never come that close, and a draw
  that puts two atoms on top of each other is a sample from the prior's tail, not dynamics;
* the corrector is the same loop on the jumped frame with ``attempt`` offset by ``2**20``;
  with ``role_fields.passes`` P > 1 it runs P times, pass p on the frame pass p - 1 left (graph
  rebuilt there) with ``attempt`` offset ``2**20 + p * 2**16``.

Defaults when the metadata does not give them: ``max_attempts`` = :data:`DEFAULT_MAX_ATTEMPTS`,
``max_displacement`` unbounded (only non-finite displacements are redrawn).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import torch

from engine_plugins.export.artifact import Artifact, load_artifact
from engine_plugins.methods.propagator.contact import ContactError, contact_matrix, contact_rounds as rounds_of
from engine_plugins.methods.propagator.prior import KB_EV_PER_K, prior_tensors, with_scale_override
from engine_plugins.nn.counter_noise import counter_normal
from engine_plugins.nn.graph import VerletGraph
from engine_plugins.units import UnitError, length_factor, time_factor

#: Total number of draws of one jump when the metadata has no ``max_attempts``.
DEFAULT_MAX_ATTEMPTS = 10
#: ``attempt`` offset of the corrector's noise stream (contract).
CORRECTOR_ATTEMPT_OFFSET = 2 ** 20
#: ``attempt`` offset between a corrector's passes (contract): pass p draws with offset + p * stride.
PASS_ATTEMPT_STRIDE = 2 ** 16
#: Most passes of a corrector (pass 16 would reach the next stream's offsets).
MAX_PASSES = 16
SOLVERS = ("euler", "heun")


class SamplerError(ValueError):
    """A propagator/corrector artifact or an input cannot be used as asked (message says the fix)."""


class JumpFailedError(RuntimeError):
    """A learned jump failed every redraw (non-finite or too long a displacement), so the run stops.

    ``completed_jumps``: jumps made before the failed one; ``partial``: the :class:`Rollout` of
    those frames (0..completed_jumps) when the failure came from :func:`propagate`, so a long run
    that stops late keeps what it made."""

    def __init__(self, message: str, completed_jumps: int | None = None, partial: "Rollout | None" = None) -> None:
        super().__init__(message)
        self.completed_jumps = completed_jumps
        self.partial = partial


def script_error_message(exc: BaseException) -> str:
    """The message a TorchScript ``raise`` carried, without the TorchScript traceback."""
    text = str(exc)
    marker = "RuntimeError: "
    return text[text.rindex(marker) + len(marker):].strip() if marker in text else text


class FlowSampler(torch.nn.Module):
    """One vector field with its prior, ODE loop and redraws: returns the displacement of one jump.

    Lengths in the artifact's length unit and dtype. ``forward`` is a pure function of
    (positions, box, types, temperature, seed, step), so an engine may call it again at the same
    state (OpenMM reporters do) and get the same answer.
    """

    def __init__(self, model: torch.jit.ScriptModule, role: str, scale: torch.Tensor, mass: torch.Tensor,
                 cutoff: float, flow_steps: int, solver: str, max_displacement: float, max_attempts: int,
                 attempt_offset: int, dtype: torch.dtype, length_unit: str, angstrom_to_model: float,
                 skin: float = 1.0, contact_distance: Optional[torch.Tensor] = None,
                 contact_rounds: int = 0, passes: int = 1) -> None:
        super().__init__()
        self.model = model
        self.role = role
        self.graph = VerletGraph(cutoff, skin)
        self.register_buffer("scale", scale.to(torch.float64))
        self.register_buffer("mass", mass.to(torch.float64))
        self.kb = float(KB_EV_PER_K)
        self.flow_steps = int(flow_steps)
        self.heun = solver == "heun"
        self.solver = solver
        self.max_displacement = float(max_displacement)  # model length unit
        self.max_attempts = int(max_attempts)
        self.attempt_offset = int(attempt_offset)
        self.model_dtype = dtype
        self.length_unit = length_unit
        self.angstrom_to_model = float(angstrom_to_model)
        self.retries = 0
        self.last_retries = 0
        # contact redraw: [types, types] shortest allowed distance (model length unit, 0: none)
        n_types = int(scale.shape[0])
        cd = torch.zeros(n_types, n_types) if contact_distance is None else contact_distance
        self.register_buffer("contact_distance", cd.to(torch.float64))
        self.contact_rounds = int(contact_rounds) if bool((cd > 0).any()) else 0
        self.contact_redraws = 0  # contact rounds so far (all jumps)
        self.contact_atoms = 0  # atom redraws for contacts so far
        self.contact_left = 0  # jumps accepted with a contact after contact_rounds rounds
        self.passes = int(passes)  # the whole loop again on the corrected frame (a corrector's passes)
        self.pass_stride = PASS_ATTEMPT_STRIDE  # an attribute: TorchScript cannot read module globals
        # Why not always raise: libtorch crashes (segfault in InterpreterStateImpl::callstack) when a
        # raise inside a nested scripted call unwinds through openmmtorch's C++ kernel, so an engine
        # adapter sets this False, checks ``failure`` and raises from its own top-level forward.
        self.raise_on_failure = True
        self.failure = ""

    @torch.jit.export
    def sigma(self, types: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
        """Prior width per atom in the model's length unit, float64 (prior.maxwell_boltzmann_sigma)."""
        kt = self.kb * temperature.to(self.scale.dtype)
        s = self.scale[types] * torch.sqrt(kt / self.mass[types])
        return s * self.angstrom_to_model

    def forward(self, x_cond: torch.Tensor, types: torch.Tensor, box: Optional[torch.Tensor],
                temperature: torch.Tensor, seed: int, step: int) -> torch.Tensor:
        n = x_cond.shape[0]
        x_cond = x_cond.to(self.model_dtype)
        temp = temperature.to(self.model_dtype)
        if temp.dim() == 0:
            temp = temp.expand(n)
        if box is not None:
            box = box.to(self.model_dtype)
        tags = torch.arange(1, n + 1, dtype=torch.long, device=x_cond.device)
        # the prior width as in sigma() (inlined: no helper-method calls, see FlowForceCore in
        # engines/openmm_propagate.py)
        kt = self.kb * temp.to(self.scale.dtype)
        sigma = (self.scale[types] * torch.sqrt(kt / self.mass[types]) * self.angstrom_to_model)[:, None]
        m = self.mass[types].to(self.model_dtype)[:, None]
        h = 1.0 / self.flow_steps
        reason = ""
        self.failure = ""
        total = torch.zeros_like(x_cond)
        all_failures = 0
        # passes (a corrector's role_fields.passes): the loop below again on the corrected frame,
        # pass p with its own noise stream (attempt offset + p * PASS_ATTEMPT_STRIDE)
        for p in range(self.passes):
            x_base = x_cond + total
            offset = self.attempt_offset + p * self.pass_stride
            edge_index, edge_shift = self.graph(x_base, box)
            # per-atom draw counters: a failed draw (non-finite, too long) redraws every atom, a
            # contact round only the atoms in a contact (contract: counter_normal(..., attempt_i))
            attempts = torch.zeros(n, dtype=torch.long, device=x_cond.device)
            failures = 0
            rounds = 0
            accepted = False
            d = torch.zeros_like(x_cond)
            while failures < self.max_attempts:
                if rounds == 0:  # every atom has the same counter (the failed draws so far): one call
                    z = counter_normal(seed, step, tags, failures + offset)
                else:
                    z = torch.empty(n, 3, dtype=torch.float64, device=x_cond.device)
                    for a in range(failures, failures + rounds + 1):
                        sel = attempts == a
                        if bool(sel.any()):
                            z[sel] = counter_normal(seed, step, tags[sel], a + offset)
                x = x_base + (sigma * z).to(self.model_dtype)
                for k in range(self.flow_steps):
                    t = k * h
                    # torch.full, not torch.tensor: TorchScript rounds torch.tensor(float) through float32
                    tt = torch.full([], t, dtype=x.dtype, device=x.device)
                    v = self.model(x, x_base, types, edge_index, edge_shift, tt, temp, n)
                    if self.heun:
                        xp = x + h * v
                        th = torch.full([], t + h, dtype=x.dtype, device=x.device)
                        vp = self.model(xp, x_base, types, edge_index, edge_shift, th, temp, n)
                        x = x + (0.5 * h) * (v + vp)
                    else:
                        x = x + h * v
                d = x - x_base
                if n > 0:
                    d = d - (m * d).sum(0) / m.sum()
                    if not bool(torch.isfinite(d).all()):
                        reason = "a non-finite (NaN/inf) displacement"
                    else:
                        longest = float((d * d).sum(-1).max().sqrt())
                        if longest > self.max_displacement:
                            reason = f"a displacement of {longest} {self.length_unit}, above max_displacement " \
                                     f"{self.max_displacement} {self.length_unit}"
                        else:
                            reason = ""
                if reason != "":
                    failures += 1
                    attempts = attempts + 1
                    continue
                if self.contact_rounds > 0 and n > 0:
                    # atoms closer to a graph neighbour (edges of x_base) than contact_distance
                    y = x_base + d
                    ei, ej = edge_index[0], edge_index[1]
                    vec = y[ej] - y[ei] + edge_shift
                    bound = self.contact_distance[types[ei], types[ej]]
                    pair = (vec * vec).sum(-1).to(torch.float64) < bound * bound
                    close = torch.zeros(n, dtype=torch.bool, device=y.device)
                    close[ei[pair]] = True
                    close[ej[pair]] = True
                    if bool(close.any()):
                        if rounds < self.contact_rounds:
                            rounds += 1
                            self.contact_redraws += 1
                            self.contact_atoms += int(close.sum())
                            attempts = attempts + close.to(torch.long)
                            continue
                        self.contact_left += 1
                accepted = True
                break
            if not accepted:
                self.retries += self.max_attempts
                self.last_retries = all_failures + self.max_attempts
                where = f" (pass {p + 1} of {self.passes})" if self.passes > 1 else ""
                self.failure = (
                    f"engine_plugins: learned {self.role} jump at step {step} (seed {seed}){where} failed all "
                    f"{self.max_attempts} attempts; the last gave {reason}. The system is outside what the model "
                    f"was trained on (structure, temperature, density) or has blown up. Fix: check the input "
                    f"structure and temperature, or raise role_fields max_attempts/max_displacement when exporting")
                if self.raise_on_failure:
                    raise RuntimeError(self.failure)
                return torch.full_like(x_cond, float("nan"))
            self.retries += failures
            all_failures += failures
            total = total + d
        self.last_retries = all_failures
        return total


class FlowJump(torch.nn.Module):
    """One learned jump: propagator, then optionally the corrector; returns the new positions.

    Positions and box in the propagator's length unit; ``types`` are propagator type indices;
    ``temperature`` in K (0-d or [N]). ``retries`` (after a call) counts redraws of both roles.
    """

    def __init__(self, propagator: FlowSampler, corrector: Optional[FlowSampler] = None,
                 corrector_types: Optional[torch.Tensor] = None) -> None:
        super().__init__()
        self.propagator = propagator
        self.has_corrector = corrector is not None
        # TorchScript needs a module in both cases; without a corrector it is never called
        self.corrector = corrector if corrector is not None else propagator
        n_types = int(propagator.scale.shape[0])
        ct = corrector_types if corrector_types is not None else torch.arange(n_types, dtype=torch.long)
        self.register_buffer("corrector_types", ct.to(torch.long))
        self.delta_tau_ps = 0.0

    @torch.jit.export
    def total_retries(self) -> int:
        """Redraws so far (propagator and corrector together)."""
        r = self.propagator.retries
        if self.has_corrector:
            r += self.corrector.retries
        return r

    def forward(self, positions: torch.Tensor, types: torch.Tensor, box: Optional[torch.Tensor],
                temperature: torch.Tensor, seed: int, step: int) -> torch.Tensor:
        x = positions.to(self.propagator.model_dtype)
        x = x + self.propagator(x, types, box, temperature, seed, step)
        if self.has_corrector:
            x = x + self.corrector(x, self.corrector_types[types], box, temperature, seed, step)
        return x


# --------------------------------------------------------------------------------------- builders
def _artifact(model: str | os.PathLike | Artifact) -> Artifact:
    return model if isinstance(model, Artifact) else load_artifact(model)


def check_vector_field_role(art: Artifact, role: str) -> None:
    """Clear error when an artifact of another role is given where ``role`` is needed."""
    meta = art.metadata
    if meta.role != role:
        hint = (" (a pseudo_force model gives forces; run it with create_pseudo_force or the relaxation "
                "samplers instead)" if meta.role == "pseudo_force" else "")
        raise SamplerError(f"{art.path}: model role is '{meta.role}', but a learned jump needs a '{role}' "
                           f"model here{hint}. Fix: pass a model exported with role '{role}'")


def build_flow_sampler(model: str | os.PathLike | Artifact, role: str = "propagator",
                       flow_steps: int | None = None, solver: str | None = None,
                       skin: float = 1.0, prior_scale: Mapping[str, float] | None = None,
                       contact_rounds_override: int | None = None, passes: int | None = None) -> FlowSampler:
    """A :class:`FlowSampler` for a ``propagator`` or ``corrector`` artifact (metadata checked).

    ``prior_scale`` ({type: scale}) replaces the metadata's prior scale of those types, e.g. the
    adaptive prior's pick for the material at hand (:func:`prior.measure_adaptive_scale`);
    ``contact_rounds_override`` replaces ``role_fields.contact.rounds`` (0: no contact redraw);
    ``passes`` replaces a corrector's ``role_fields.passes`` (default 1)."""
    art = _artifact(model)
    check_vector_field_role(art, role)
    meta = art.metadata
    rf = meta.role_fields
    try:
        ang_to_model = length_factor("angstrom", meta.units["length"])
    except UnitError as exc:
        raise SamplerError(f"{art.path}: the Maxwell-Boltzmann prior is in Å, but the model's length unit "
                           f"'{meta.units['length']}' cannot be converted: {exc}") from exc
    try:
        scale, mass = prior_tensors(with_scale_override(rf["prior"], meta.type_names, prior_scale), meta.type_names)
    except ValueError as exc:
        raise SamplerError(f"{art.path}: {exc}") from exc
    k = int(rf["flow_steps"] if flow_steps is None else flow_steps)
    if k < 1:
        raise SamplerError(f"flow_steps must be >= 1, got {k}")
    solver = str(rf["solver"] if solver is None else solver).lower()
    if solver not in SOLVERS:
        raise SamplerError(f"solver '{solver}' is unknown; Fix: use one of {', '.join(SOLVERS)}")
    max_disp = rf.get("max_displacement")
    max_disp = math.inf if max_disp is None else float(max_disp) * ang_to_model
    max_attempts = int(rf.get("max_attempts", DEFAULT_MAX_ATTEMPTS))
    if max_attempts < 1:
        raise SamplerError(f"{art.path}: role_fields.max_attempts must be >= 1, got {max_attempts}")
    offset = CORRECTOR_ATTEMPT_OFFSET if role == "corrector" else 0
    n_passes = passes_of(art, role, passes)
    check_noise_level(art)
    try:
        bounds = contact_matrix(rf.get("contact"), meta.type_names, ang_to_model)
        rounds = rounds_of(rf.get("contact"), contact_rounds_override)
    except ContactError as exc:
        raise SamplerError(f"{art.path}: {exc}") from exc
    return FlowSampler(art.module, role, scale, mass, meta.cutoff, k, solver, max_disp, max_attempts, offset,
                       getattr(torch, meta.dtype), meta.units["length"], ang_to_model, skin * ang_to_model,
                       bounds, rounds, n_passes)


def passes_of(art: Artifact, role: str, override: int | None = None) -> int:
    """Passes of a corrector per jump: ``override``, else ``role_fields.passes``, else 1 (checked).

    Why several: one pass of a denoiser moves a frame only part of the way back to valid local
    structure (CG water: 269 bead pairs closer than 2 A after a propagator jump, 60 after one
    pass, none after four); each pass draws its own noise (attempt offset + pass * 2**16)."""
    rf = art.metadata.role_fields
    value = override if override is not None else rf.get("passes", 1)
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise SamplerError(f"{art.path}: corrector passes must be an integer, got {value!r}") from None
    if n != 1 and role != "corrector":
        raise SamplerError(f"{art.path}: passes={n} asked of a '{role}' model; only a corrector runs several "
                           "passes. Fix: drop passes (corrector_passes) for the propagator")
    if not 1 <= n <= MAX_PASSES:
        raise SamplerError(f"{art.path}: corrector passes must lie in 1..{MAX_PASSES}, got {n}")
    if n > 1:
        rounds = rounds_of(rf.get("contact"))
        attempts = int(rf.get("max_attempts", DEFAULT_MAX_ATTEMPTS))
        if attempts + rounds >= PASS_ATTEMPT_STRIDE:
            raise SamplerError(f"{art.path}: max_attempts + contact rounds = {attempts + rounds} would reach the "
                               f"next pass's noise stream ({PASS_ATTEMPT_STRIDE}). Fix: lower max_attempts")
    return n


def check_noise_level(art: Artifact) -> None:
    """A noise-conditioned corrector's ``role_fields.noise_level`` must be what its module reads."""
    table = art.metadata.role_fields.get("noise_level")
    if table is None:
        return
    buf = getattr(art.module, "noise_level", None)
    want = [float(table.get(t, float("nan"))) for t in art.metadata.type_names]
    if buf is None or not bool(getattr(art.module, "noise_conditioned", False)) or \
            not np.allclose(buf.detach().cpu().numpy(), want, rtol=0, atol=1e-12):
        raise SamplerError(f"{art.path}: role_fields.noise_level {table} is not the level its module reads "
                           f"({None if buf is None else buf.tolist()}). Fix: write the level with "
                           "`engine-plugins corrector-noise`, which sets both")


def write_corrector_noise_level(art: Artifact, output: str | os.PathLike, level: Any) -> dict[str, float]:
    """Copy of a noise-conditioned corrector told another input noise level (A; one number or
    {type: level} within 0..``noise_max``): the module's ``noise_level`` buffer and
    ``role_fields.noise_level`` together. Why a copy: the level is an engine setting chosen after
    training (like the passes), and every engine reads it from the artifact."""
    from engine_plugins.export.artifact import copy_with_role_fields
    from engine_plugins.methods.propagator.loss import corrector_noise_levels

    rf = art.metadata.role_fields
    if art.metadata.role != "corrector" or "noise_level" not in rf:
        raise SamplerError(f"{art.path} is not a noise-conditioned corrector (no role_fields.noise_level). Fix: "
                           "train a corrector with model.noise_conditioning true and corrector.noise_level")
    try:
        table = corrector_noise_levels(level, art.metadata.type_names, float(rf.get("noise_max", math.inf)))
    except ValueError as exc:
        raise SamplerError(f"{art.path}: {exc}") from None
    module = art.module
    module.noise_level.copy_(torch.tensor([table[t] for t in art.metadata.type_names], dtype=torch.float64))
    copy_with_role_fields(art, output, {"noise_level": table}, role="corrector")
    return table


def check_passes_have_corrector(corrector: Any, corrector_passes: int | None) -> None:
    """Several corrector passes asked for, but no corrector given: a clear error (every engine's path)."""
    if corrector is None and corrector_passes not in (None, 1):
        raise SamplerError(f"corrector_passes={corrector_passes} without a corrector. Fix: give a corrector "
                           "artifact, or drop corrector_passes")


def build_flow_jump(propagator: str | os.PathLike | Artifact, corrector: str | os.PathLike | Artifact | None = None,
                    flow_steps: int | None = None, solver: str | None = None,
                    corrector_flow_steps: int | None = None, corrector_solver: str | None = None,
                    script: bool = True, prior_scale: Mapping[str, float] | None = None,
                    contact_rounds: int | None = None, corrector_passes: int | None = None) -> FlowJump:
    """A (scripted) :class:`FlowJump` from a propagator artifact and an optional corrector artifact;
    ``prior_scale`` overrides the propagator's prior scale per type, ``contact_rounds`` its
    contact rounds and ``corrector_passes`` the corrector's passes (see :func:`build_flow_sampler`)."""
    prop_art = _artifact(propagator)
    prop = build_flow_sampler(prop_art, "propagator", flow_steps, solver, prior_scale=prior_scale,
                              contact_rounds_override=contact_rounds)
    corr = None
    ctypes = None
    check_passes_have_corrector(corrector, corrector_passes)
    if corrector is not None:
        corr_art = _artifact(corrector)
        corr = build_flow_sampler(corr_art, "corrector", corrector_flow_steps, corrector_solver,
                                  passes=corrector_passes)
        pm, cm = prop_art.metadata, corr_art.metadata
        if pm.units["length"] != cm.units["length"] or pm.dtype != cm.dtype:
            raise SamplerError(f"propagator ({pm.units['length']}, {pm.dtype}) and corrector ({cm.units['length']}, "
                               f"{cm.dtype}) differ in length unit or dtype. Fix: export both alike")
        missing = [t for t in pm.type_names if t not in cm.type_names]
        if missing:
            raise SamplerError(f"the corrector has no type(s) {missing} of the propagator. Fix: use a corrector "
                               f"trained on the same species ({', '.join(pm.type_names)})")
        ctypes = torch.tensor([cm.type_names.index(t) for t in pm.type_names], dtype=torch.long)
    jump = FlowJump(prop, corr, ctypes)
    jump.delta_tau_ps = float(prop_art.metadata.role_fields["delta_tau"]) * time_factor(
        prop_art.metadata.units["time"], "ps")
    return torch.jit.script(jump) if script else jump


def type_indices(types: Sequence[str] | Sequence[int] | np.ndarray, type_names: Sequence[str]) -> torch.Tensor:
    """Model type index of every atom from names (or indices, checked); clear error for unknown names."""
    types = list(types.tolist() if isinstance(types, np.ndarray) else types)
    if types and all(isinstance(t, (int, np.integer)) for t in types):
        bad = [t for t in types if not 0 <= int(t) < len(type_names)]
        if bad:
            raise SamplerError(f"type indices {sorted(set(bad))[:5]} are outside 0..{len(type_names) - 1} "
                               f"(model types {', '.join(type_names)})")
        return torch.tensor([int(t) for t in types], dtype=torch.long)
    unknown = sorted({str(t) for t in types if t not in type_names})
    if unknown:
        raise SamplerError(f"type name(s) {', '.join(unknown)} are not known to the model (it knows "
                           f"{', '.join(type_names)}). Fix: map your species to the model's type names")
    return torch.tensor([list(type_names).index(t) for t in types], dtype=torch.long)


def check_temperature_range(temperature: float | np.ndarray, meta, stacklevel: int = 3) -> None:
    """Warn (not fail) when the temperature is outside the range the model was trained on."""
    import warnings

    rng = meta.role_fields.get("temperature_range")
    if not rng:
        return
    lo, hi = float(rng[0]), float(rng[1])
    t = np.atleast_1d(np.asarray(temperature, dtype=float))
    if t.min() < lo or t.max() > hi:
        warnings.warn(f"temperature {t.min():g}..{t.max():g} K is outside the model's training range "
                      f"[{lo:g}, {hi:g}] K; the learned dynamics is an extrapolation there", UserWarning,
                      stacklevel=stacklevel)


def check_periodicity(meta, periodic: bool) -> None:
    """Error when the model's declared periodicity contradicts the system's."""
    if meta.periodicity == "periodic" and not periodic:
        raise SamplerError("the model was trained on periodic systems but no box was given. Fix: give the "
                           "periodic box (rows = cell vectors) or use a non-periodic model")
    if meta.periodicity == "nonperiodic" and periodic:
        raise SamplerError("the model was trained on non-periodic systems but a periodic box was given. "
                           "Fix: pass box=None or use a periodic model")


# ------------------------------------------------------------------------------- standalone rollout
@dataclass
class Rollout:
    """Result of :func:`propagate`: frames 0..n_jumps (frame 0 = input), model length unit."""

    positions: np.ndarray  # [n_jumps + 1, N, 3], unwrapped
    time_ps: np.ndarray  # [n_jumps + 1]
    retries: int
    delta_tau_ps: float
    trajectory: Path | None = None
    #: contact redraw counts: contact_rounds (rounds, all jumps), contact_atoms (atom redraws),
    #: contact_left (jumps accepted with a contact after the last round)
    contact: dict = field(default_factory=dict)


_TOPOLOGY_FORMATS = {".dcd", ".xtc", ".trr", ".nc", ".ncdf"}


def _trajectory_writer(path: Path, names: Sequence[str], box: np.ndarray | None, first: np.ndarray,
                       dt_ps: float = 1.0):
    """An MDAnalysis writer for ``path`` (format from the suffix); DCD/XTC/... get a PDB topology beside them."""
    import warnings

    import MDAnalysis as mda
    from MDAnalysis.lib.mdamath import triclinic_box

    n = len(names)
    u = mda.Universe.empty(n, n_residues=n, atom_resindex=np.arange(n), trajectory=True)
    u.add_TopologyAttr("name", list(names))
    u.add_TopologyAttr("type", list(names))
    u.add_TopologyAttr("element", [''.join(c for c in s if c.isalpha())[:2].capitalize() for s in names])
    u.add_TopologyAttr("resname", ["BEAD"] * n)
    u.add_TopologyAttr("resid", np.arange(1, n + 1))
    dims = None if box is None else np.asarray(triclinic_box(*np.asarray(box, float)), dtype=np.float32)
    u.dimensions = dims
    u.atoms.positions = first
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if path.suffix.lower() in _TOPOLOGY_FORMATS:
            u.atoms.write(str(path.with_suffix(".pdb")))
        extra = {"dt": dt_ps} if path.suffix.lower() == ".dcd" else {}
        writer = mda.Writer(str(path), n_atoms=n, **extra)
    return u, writer


def propagate(propagator: str | os.PathLike | Artifact, positions: np.ndarray,
              types: Sequence[str] | Sequence[int], box: np.ndarray | None = None,
              temperature: float | np.ndarray = 300.0, n_jumps: int = 1, seed: int = 0, start_step: int = 0,
              corrector: str | os.PathLike | Artifact | None = None, flow_steps: int | None = None,
              solver: str | None = None, trajectory: str | os.PathLike | None = None,
              device: str | torch.device | None = None, progress: bool = True,
              corrector_flow_steps: int | None = None, prior_scale: Mapping[str, float] | None = None,
              contact_rounds: int | None = None, corrector_passes: int | None = None) -> Rollout:
    """Standalone learned rollout: ``n_jumps`` jumps of Δτ from ``positions`` (model length unit, Å).

    ``start_step`` is the step counter of the start frame; the jump that reaches step n (frame
    ``n - start_step``) draws its noise with step n, as LAMMPS's fix (its ``ntimestep``) and the
    OpenMM integrator do, so a rollout continued from frame k with ``start_step + k`` reproduces
    the rest and every engine gives the same trajectory for the same seed. ``box`` (rows = cell vectors) or None for an open
    system. ``trajectory`` (optional) is written with MDAnalysis, format from the suffix (.dcd, .xtc,
    .xyz, .pdb, ...), frames 0..n_jumps, unwrapped; .dcd/.xtc get a .pdb topology beside them.
    Runs on CUDA when available unless ``device`` says otherwise. ``prior_scale`` ({type: scale})
    overrides the propagator's prior scale, e.g. the adaptive prior's pick for this material;
    ``contact_rounds`` the rounds of its contact redraw (``role_fields.contact``; 0: off);
    ``corrector_passes`` the corrector's passes per jump (``role_fields.passes`` of the corrector).
    A jump that fails every redraw raises :class:`JumpFailedError`; its ``partial`` holds the frames
    made before it (and ``trajectory``, if given, has them too).
    """
    from tqdm.auto import tqdm

    prop_art = _artifact(propagator)
    check_vector_field_role(prop_art, "propagator")
    meta = prop_art.metadata
    pos = np.asarray(positions, dtype=float)
    if pos.ndim != 2 or pos.shape[1] != 3 or len(pos) == 0:
        raise SamplerError(f"positions must be [N, 3] with N > 0, got shape {pos.shape}")
    if len(types) != len(pos):
        raise SamplerError(f"{len(types)} types for {len(pos)} atoms. Fix: give one type per atom")
    if not np.isfinite(pos).all():
        raise SamplerError("positions contain NaN or inf. Fix: give finite coordinates")
    if n_jumps < 0 or seed < 0 or start_step < 0:
        raise SamplerError("n_jumps, seed and start_step must be >= 0")
    check_periodicity(meta, box is not None)
    check_temperature_range(temperature, meta)
    tidx = type_indices(types, meta.type_names)
    names = [meta.type_names[i] for i in tidx.tolist()]
    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SamplerError(f"device '{dev}' asked for, but torch sees no CUDA device. Fix: run on the CPU "
                           "(--device cpu or auto; in Python device='cpu' or None)")
    jump = build_flow_jump(prop_art, corrector, flow_steps, solver, corrector_flow_steps,
                           prior_scale=prior_scale, contact_rounds=contact_rounds,
                           corrector_passes=corrector_passes).to(dev)
    dtype = getattr(torch, meta.dtype)
    x = torch.as_tensor(pos, dtype=dtype, device=dev)
    box_t = None if box is None else torch.as_tensor(np.asarray(box, float), dtype=dtype, device=dev)
    temp = np.asarray(temperature, dtype=float)
    temp_t = torch.as_tensor(np.broadcast_to(temp, (len(pos),)).copy(), dtype=dtype, device=dev)
    types_t = tidx.to(dev)
    frames = np.empty((n_jumps + 1, len(pos), 3))
    frames[0] = pos
    traj_path = Path(trajectory) if trajectory is not None else None
    u = writer = None
    if traj_path is not None:
        u, writer = _trajectory_writer(traj_path, names, None if box is None else np.asarray(box, float),
                                       pos.astype(np.float32), float(jump.delta_tau_ps))
        writer.write(u.atoms)
    # TorchScript's profiling executor re-optimises the model for every new graph size, and the
    # neighbour count changes every jump: ~0.5 s per jump on a CPU (320 atoms, measured), 2.5x the
    # cost of the jump itself; plain execution runs the same ops
    try:
        bar = tqdm(range(n_jumps), desc="learned jumps", unit="jump", disable=not progress)
        with torch.jit.optimized_execution(False), torch.no_grad():  # a jump needs no gradient
            for k in bar:
                try:
                    x = jump(x, types_t, box_t, temp_t, int(seed), int(start_step) + k + 1)
                except torch.jit.Error as exc:
                    dt = float(jump.delta_tau_ps)
                    partial = Rollout(frames[:k + 1].copy(), dt * np.arange(k + 1), int(jump.total_retries()), dt,
                                      traj_path, contact_counts(jump))
                    raise JumpFailedError(script_error_message(exc), completed_jumps=k, partial=partial) from None
                frames[k + 1] = x.detach().cpu().numpy()
                if writer is not None:
                    u.atoms.positions = frames[k + 1]
                    writer.write(u.atoms)
                if k % 10 == 0 or k == n_jumps - 1:
                    bar.set_postfix(retries=jump.total_retries())
    finally:
        if writer is not None:
            writer.close()
    dt = float(jump.delta_tau_ps)
    return Rollout(frames, dt * np.arange(n_jumps + 1), int(jump.total_retries()), dt, traj_path,
                   contact_counts(jump))


def contact_counts(jump: FlowJump) -> dict[str, int]:
    """The propagator's contact-redraw counts so far ({} when the redraw is off)."""
    p = jump.propagator
    if int(p.contact_rounds) == 0:
        return {}
    return {"contact_rounds": int(p.contact_redraws), "contact_atoms": int(p.contact_atoms),
            "contact_left": int(p.contact_left)}
