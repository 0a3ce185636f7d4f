"""Flow-matching training targets for the propagator and the corrector, and the prior choices.

Propagator (LiFlow's conditional flow matching of displacements), per frame pair
(X_tau, X_{tau + dtau}) of a graph::

    x0  = X_tau + sigma_i z_i,            z ~ N(0, 1),  sigma_i Maxwell-Boltzmann (below)
    t   ~ U(0, 1)  (one per frame pair)
    x_t = (1 - t) x0 + t X_{tau + dtau}
    target velocity u = X_{tau + dtau} - x0,  loss = mean_i w_i |v(x_t, t | X_tau) - u_i|^2

Corrector: a clean frame X is perturbed, ``X~ = X + s n`` with ``s ~ U(0, s_max)`` per frame and
``n ~ N(0, 1)``; the flow runs from ``x0 = X~ + sigma_i z_i`` to ``X`` conditioned on ``X~`` (the
frame to correct), i.e. the same loss with (x_cond, x1) = (X~, X).

Weights ``w_i``: ``"per_type"`` (default) divides by the model's ``out_scale[type]^2`` so that a
heavy, slow species (framework) counts as much as a fast one (Li) in relative terms; ``"none"`` is
the plain MSE of LiFlow.

Prior widths (``role_fields.prior``, contract in :mod:`engine_plugins.methods.propagator`)::

    sigma_i = scale[type_i] * sqrt(k_B T / m[type_i])    (angstrom; k_B in eV/K, m in amu)

The *adaptive* choice (LiFlow): the scale of a species is picked per material from a small set
(``choices``, e.g. {1, 10} for the mobile species and {0.316, 3.16} for the framework) by how
mobile that material is. Here the measure is the root-mean-square displacement per Cartesian
component of the species over one lag in the conditioning data, ``rms``; the choice is the set
member whose width ``scale * sqrt(k_B T / m)`` is nearest to ``rms`` on a log scale
(:func:`adaptive_prior_scale`). In training each case gets its own choice (so the data decide);
the artifact stores the rule, the choices, the per-case picks and a default ``scale`` (the most
common pick). An engine that knows the material (or measures a short reference run) may override
``scale`` with the rule's pick for it; by default it uses ``scale``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Mapping, Optional, Sequence, Tuple, Union

import torch

from engine_plugins.methods.propagator.prior import (KB_EV_PER_K, adaptive_prior_scale,  # noqa: F401 (re-exported)
                                                     maxwell_boltzmann_sigma, mb_width)

LOSS_WEIGHTINGS = ("per_type", "none")


@dataclass
class FlowBatch:
    """One flow-matching batch: what the model sees and the velocity it should give."""

    x_t: torch.Tensor        # [N, 3]
    x_cond: torch.Tensor     # [N, 3]
    target: torch.Tensor     # [N, 3]
    t_node: torch.Tensor     # [N] flow time of each node's frame
    x0: torch.Tensor         # [N, 3] prior sample
    x1: torch.Tensor         # [N, 3] data end point


def prior_sigma(types: torch.Tensor, temperature: torch.Tensor, scale: torch.Tensor,
                mass: torch.Tensor) -> torch.Tensor:
    """Maxwell-Boltzmann prior width per atom (angstrom), [N]: see the module docstring."""
    return maxwell_boltzmann_sigma(types, temperature, scale.to(torch.float64), mass.to(torch.float64))


def flow_matching_batch(x_cond: torch.Tensor, x1: torch.Tensor, sigma: torch.Tensor, batch: torch.Tensor,
                        n_graphs: int, generator: torch.Generator,
                        t: Optional[torch.Tensor] = None) -> FlowBatch:
    """x0 = x_cond + sigma z; t ~ U(0, 1) per graph (unless given); x_t and target X1 - x0.

    Draws (in this order, from ``generator``, CPU, float64): t [n_graphs], then z [N, 3].
    """
    if t is None:
        t = torch.rand(n_graphs, generator=generator, dtype=torch.float64)
    z = torch.randn(x_cond.shape[0], 3, generator=generator, dtype=torch.float64)
    dev = x_cond.device
    x_cond64, x164 = x_cond.to(torch.float64), x1.to(torch.float64)
    x0 = x_cond64 + sigma.to(torch.float64).cpu().unsqueeze(1).to(dev) * z.to(dev)
    t_node = t.to(dev)[batch.to(dev)]
    x_t = (1.0 - t_node).unsqueeze(1) * x0 + t_node.unsqueeze(1) * x164
    dt = x_cond.dtype
    return FlowBatch(x_t=x_t.to(dt), x_cond=x_cond, target=(x164 - x0).to(dt), t_node=t_node.to(dt),
                     x0=x0.to(dt), x1=x1)


def corrector_noise(x: torch.Tensor, batch: torch.Tensor, n_graphs: int, s_max: float,
                    generator: torch.Generator, types: Optional[torch.Tensor] = None,
                    n_types: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
    """(X~ = X + s n, s per atom) with s ~ U(0, s_max) per graph and n ~ N(0, 1) per atom.

    With ``types`` and ``n_types`` (a noise-conditioned corrector) s is drawn per graph and type,
    so that the model learns frames whose species carry different noise levels.
    Draws (in this order): s [n_graphs] (or [n_graphs, n_types]), then n [N, 3].
    """
    if not s_max > 0:
        raise ValueError(f"corrector noise s_max={s_max}: must be > 0 (angstrom)")
    bc = batch.cpu()
    if types is None:
        s = torch.rand(n_graphs, generator=generator, dtype=torch.float64) * float(s_max)
        s_atom = s[bc]
    else:
        s = torch.rand(n_graphs, int(n_types), generator=generator, dtype=torch.float64) * float(s_max)
        s_atom = s[bc, types.cpu().to(torch.long)]
    n = torch.randn(x.shape[0], 3, generator=generator, dtype=torch.float64)
    dev = x.device
    noisy = x.to(torch.float64) + (s_atom.unsqueeze(1) * n).to(dev)
    return noisy.to(x.dtype), s_atom


def corrector_noise_levels(level: Union[None, float, Mapping[str, float]], type_names: Sequence[str],
                           noise_max: float = math.inf) -> Dict[str, float]:
    """{type: noise level (A)} from one number or a table naming every type, each in 0..``noise_max``
    (the largest level the corrector was trained on); ValueError naming the problem."""
    if level is None:
        raise ValueError("a noise-conditioned corrector needs a noise level. Fix: corrector.noise_level in the config")
    if isinstance(level, dict):
        missing = [t for t in type_names if t not in level]
        extra = [t for t in level if t not in type_names]
        if missing or extra:
            raise ValueError(f"corrector noise level {level!r}: need one level per type {list(type_names)}"
                             + (f" (missing {missing})" if missing else "") + (f" (unknown {extra})" if extra else ""))
        table = {t: float(level[t]) for t in type_names}
    else:
        table = {t: float(level) for t in type_names}
    bad = {t: v for t, v in table.items() if not (math.isfinite(v) and 0.0 <= v <= float(noise_max))}
    if bad:
        raise ValueError(f"corrector noise level {bad} must lie in 0..noise_max ({noise_max} A), the range the "
                         "corrector was trained on")
    return table


def flow_matching_loss(v: torch.Tensor, target: torch.Tensor, types: torch.Tensor,
                       out_scale: Optional[torch.Tensor] = None, weighting: str = "per_type"
                       ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """Mean over atoms of the (weighted) squared velocity error; parts: raw MSE per component."""
    if weighting not in LOSS_WEIGHTINGS:
        raise ValueError(f"loss weighting {weighting!r}: use one of {LOSS_WEIGHTINGS}")
    err = (v - target).square().sum(-1)
    if weighting == "per_type":
        if out_scale is None:
            raise ValueError("per_type loss weighting needs the model's out_scale")
        err_w = err / out_scale.to(err.dtype)[types].square()
    else:
        err_w = err
    loss = err_w.mean() / 3.0
    return loss, {"mse": err.detach().mean() / 3.0}


# ------------------------------------------------------------------------------------ priors
def check_prior(prior: Mapping, type_names: Sequence[str]) -> None:
    """Raise a ValueError naming the problem when ``prior`` is not a usable MB prior."""
    from engine_plugins.methods.propagator.prior import prior_tensors

    scale, _ = prior_tensors(prior, type_names)
    if not all(math.isfinite(v) and v >= 0 for v in scale.tolist()):
        raise ValueError("prior.scale must be >= 0 and finite for every type")


__all__ = ["FlowBatch", "LOSS_WEIGHTINGS", "adaptive_prior_scale", "check_prior", "corrector_noise", "corrector_noise_levels",
           "flow_matching_batch", "flow_matching_loss", "mb_width", "prior_sigma"]
