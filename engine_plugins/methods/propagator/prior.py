"""Maxwell-Boltzmann prior widths for the flow's initial displacement (LiFlow's prior).

The *adaptive* prior (LiFlow): a species' scale is chosen per material from a small set of
choices by how mobile the material is, so that the prior width itself tells the propagator how
far atoms of this material move in one jump. A model trained that way stores the choices and the
rule in ``role_fields.prior.adaptive``. LiFlow picks with a classifier; here the pick is measured:
:func:`measure_adaptive_scale` applies the rule to a short reference run of the material (the rms
displacement per component over one Δτ), and every engine takes the result as a scale override
(:func:`with_scale_override`; OpenMM ``prior_scale=``, LAMMPS ``prior_scale NAME S``).
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np
import torch

#: Boltzmann constant in eV/K (CODATA 2018).
KB_EV_PER_K = 8.617333262e-5


def maxwell_boltzmann_sigma(types: torch.Tensor, temperature: torch.Tensor, scale: torch.Tensor,
                            mass: torch.Tensor) -> torch.Tensor:
    """Per-atom prior width in angstrom: ``scale[t] * sqrt(k_B T / m[t])`` (eV, amu).

    ``scale`` and ``mass`` are per-type tensors; ``temperature`` is [N] or 0-d, in K.
    """
    kt = KB_EV_PER_K * temperature.to(scale.dtype)
    return scale[types] * torch.sqrt(kt / mass[types])


def prior_tensors(prior: Mapping, type_names: Sequence[str],
                  dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, mass) per type from ``role_fields.prior``; clear error for a missing type."""
    if prior.get("kind") != "maxwell_boltzmann":
        raise ValueError(f"prior kind {prior.get('kind')!r} is not supported; Fix: use 'maxwell_boltzmann'")
    out = []
    for key in ("scale", "mass"):
        table = prior.get(key, {})
        missing = [t for t in type_names if t not in table]
        if missing:
            raise ValueError(f"role_fields.prior.{key} has no entry for type(s) {missing}; "
                             f"Fix: give one value per type name in {list(type_names)}")
        out.append(torch.tensor([float(table[t]) for t in type_names], dtype=dtype))
    if not all(math.isfinite(v) and v > 0 for v in out[1].tolist()):
        raise ValueError("role_fields.prior.mass must be positive and finite (amu)")
    return out[0], out[1]


def mb_width(scale: float, temperature: float, mass: float) -> float:
    """Maxwell-Boltzmann prior width (angstrom) of one species: scale sqrt(k_B T / m)."""
    return float(scale) * math.sqrt(KB_EV_PER_K * float(temperature) / float(mass))


def adaptive_prior_scale(rms: float, temperature: float, mass: float, choices: Sequence[float],
                         width_factor: float = 1.0, width_exponent: float = 1.0, continuous: bool = False) -> float:
    """The member of ``choices`` nearest (log scale) to ``width_factor * r ** width_exponent``, where
    ``r = rms / sqrt(k_B T / m)`` is the measured displacement in units of the MB scale (with the
    defaults: the choice whose MB width is nearest to ``rms``). ``continuous``: that value itself,
    clipped to the choices' range (rounded to 1e-4), instead of the nearest choice.

    ``rms``: root-mean-square displacement per Cartesian component (angstrom) of the species over
    one lag in the conditioning data. ``width_factor`` > 1 makes the prior wider than the typical
    displacement, so that a rare long jump - a hop to the next site - starts from prior mass near
    it instead of many widths away; ``width_exponent`` < 1 widens slow materials more than fast
    ones. Both keep the order of materials. Ties go to the smaller scale.

    Why ``continuous``: a propagator reads a material's mobility from its prior width, and the
    learned MSD grows steeply with it (about width^5 to width^8 for the shipped transport model),
    so rounding to choices 13 % apart puts up to +-6 % on the width and up to +-40 % on the MSD;
    a model trained on the unrounded value is told each material's own width.
    """
    if not choices:
        raise ValueError("adaptive prior: choices is empty. Fix: give e.g. [1, 10]")
    _check_width_setting("width_factor", width_factor)
    _check_width_setting("width_exponent", width_exponent)
    grid = sorted(float(x) for x in choices)
    for c in grid:
        if not (math.isfinite(c) and c > 0):
            raise ValueError(f"adaptive prior: choice {c} must be a finite number > 0")
    if not (math.isfinite(rms) and rms > 0):
        return grid[0]
    unit = mb_width(1.0, temperature, mass)
    if continuous:
        target = float(width_factor) * (rms / unit) ** float(width_exponent)
        return round(min(max(target, grid[0]), grid[-1]), 4)
    rms = unit * float(width_factor) * (rms / unit) ** float(width_exponent)
    best, best_d = None, float("inf")
    for c in grid:
        d = abs(math.log(mb_width(c, temperature, mass)) - math.log(rms))
        if d < best_d - 1e-12:
            best, best_d = c, d
    return float(best)


def with_scale_override(prior: Mapping, type_names: Sequence[str],
                        override: Mapping[str, float] | None) -> dict[str, Any]:
    """``role_fields.prior`` with the scales of some types replaced (e.g. the adaptive pick for a material).

    Every name must be a model type and every scale finite and >= 0; otherwise a ValueError that
    names the problem and the fix.
    """
    out = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in prior.items()}
    if not override:
        return out
    unknown = [t for t in override if t not in type_names]
    if unknown:
        raise ValueError(f"prior_scale names type(s) {unknown} that the model does not have. Fix: use the model's "
                         f"type names {list(type_names)}")
    for t, v in override.items():
        v = float(v)
        if not (math.isfinite(v) and v >= 0):
            raise ValueError(f"prior_scale for type '{t}' is {v}. Fix: give a finite scale >= 0")
        out.setdefault("scale", {})[t] = v
    return out


#: The adaptive rule's optional settings and their defaults (the plain rule: nearest to the rms).
WIDTH_SETTINGS: dict[str, float] = {"width_factor": 1.0, "width_exponent": 1.0}


def _check_width_setting(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
        raise ValueError(f"adaptive prior: {name} must be a finite number > 0, got {value!r}")
    return float(value)


def adaptive_width_rule(adaptive: Mapping) -> tuple[float, float]:
    """``(width_factor, width_exponent)`` of an adaptive prior (a config's ``prior.adaptive`` or an
    artifact's), checked; 1 for a setting that is absent."""
    return tuple(_check_width_setting(k, adaptive.get(k, d)) for k, d in WIDTH_SETTINGS.items())  # type: ignore


def adaptive_is_continuous(adaptive: Mapping) -> bool:
    """``adaptive.continuous`` (default false: the nearest choice), checked to be a boolean."""
    value = adaptive.get("continuous", False)
    if not isinstance(value, bool):
        raise ValueError(f"adaptive prior: continuous must be true or false, got {value!r}")
    return value


def adaptive_rule_text(continuous: bool) -> str:
    """The ``rule`` line an artifact's ``prior.adaptive`` carries for people reading its metadata."""
    pick = ("width_factor x r^width_exponent itself, clipped to the choices' range" if continuous else
            "the choice nearest (log scale) to width_factor x r^width_exponent")
    return (f"per material and species: {pick}, r = the rms displacement per component over delta_tau in a "
            "reference run / sqrt(k_B T / m)")


def with_adaptive_rule(prior: Mapping, continuous: bool | None = None, width_factor: float | None = None,
                       width_exponent: float | None = None) -> dict[str, Any]:
    """``role_fields.prior`` with the adaptive rule changed where an argument is given: the unrounded
    value (``continuous``) or the nearest choice, and the rule's ``width_factor``/``width_exponent``;
    everything else, the trained weights included, is unchanged. Why: the pick is a sampler setting
    that can be chosen, or refitted on training cases, after training (``engine-plugins
    adaptive-rule``). A ValueError with the fix for a prior that is not adaptive or a bad setting."""
    adaptive_choices(prior)
    adaptive = dict(prior["adaptive"])
    for name, value in (("width_factor", width_factor), ("width_exponent", width_exponent)):
        if value is not None:
            adaptive[name] = _check_width_setting(name, value)
    if continuous is not None:
        adaptive["continuous"] = bool(continuous)
    adaptive["rule"] = adaptive_rule_text(adaptive_is_continuous(adaptive))
    out = dict(prior)
    out["adaptive"] = adaptive
    return out


def adaptive_choices(prior: Mapping) -> Mapping[str, Sequence[float]]:
    """``{type: [scales]}`` of an adaptive prior; a ValueError with the fix for a fixed one."""
    adaptive = prior.get("adaptive")
    if not isinstance(adaptive, Mapping) or not adaptive.get("choices"):
        raise ValueError("the model's prior is not adaptive (role_fields.prior.adaptive is missing). Fix: train with "
                         "prior.adaptive = {'choices': {type: [scales...]}}, or set prior_scale by hand")
    return adaptive["choices"]


def measure_adaptive_scale(prior: Mapping, positions: np.ndarray, species: Sequence[str], temperature: float,
                           lag: int, continuous: bool | None = None) -> dict[str, float]:
    """The adaptive prior's pick for one material: per adaptive type, the choice whose width is
    nearest (log scale) to the rms displacement per component over ``lag`` frames (mapped by the
    rule's ``width_factor`` and ``width_exponent``, both 1 unless the model says otherwise; the
    unrounded value, within the choices' range, when the rule says ``continuous``; the argument
    ``continuous``, when given, overrides the rule, e.g. to show what the rounding did).

    ``positions``: [frames, atoms, 3] *unwrapped* positions in angstrom of a reference run of the
    material at ``temperature`` (frames one Δτ/``lag`` apart, at least ``lag + 1`` of them);
    ``species``: the model type name of each atom. Raises a ValueError when the model has no
    adaptive prior or the run is too short.
    """
    choices_by_type = adaptive_choices(prior)
    factor, exponent = adaptive_width_rule(prior["adaptive"])
    rule = adaptive_is_continuous(prior["adaptive"])  # checked even when overridden
    continuous = rule if continuous is None else bool(continuous)
    pos = np.asarray(positions, dtype=float)
    lag = int(lag)
    if lag < 1 or pos.ndim != 3 or pos.shape[0] <= lag:
        raise ValueError(f"measuring the adaptive prior needs more than lag = {lag} frames, got {pos.shape[0]}. "
                         "Fix: give a longer reference run (at least one delta_tau plus one frame)")
    if pos.shape[1] != len(species):
        raise ValueError(f"{len(species)} species for {pos.shape[1]} atoms")
    d = pos[lag:] - pos[:-lag]
    names = np.asarray(list(species))
    picks: dict[str, float] = {}
    for name, choices in choices_by_type.items():
        sel = names == name
        if not sel.any():
            continue
        rms = float(np.sqrt(np.mean(d[:, sel] ** 2)))
        picks[name] = adaptive_prior_scale(rms, temperature, float(prior["mass"][name]), choices, factor, exponent,
                                           continuous)
    return picks
