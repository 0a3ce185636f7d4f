"""Maxwell-Boltzmann prior widths for the flow's initial displacement (LiFlow's prior)."""

from __future__ import annotations

import math
from typing import Mapping, Sequence

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
