"""A closed-form propagator vector field, for testing engine loops independently of training.

``PairRelaxPropagator`` has the role signature of ``propagator``/``corrector`` and real
message passing (two rounds over the graph, so an engine needs a halo of 2 x cutoff), a
dependence on flow time and temperature, and one knob that turns it off (``strength = 0`` and
``drift = 0`` give v = 0, so the jump is exactly the prior noise: a direct check of an engine's
noise generator and prior widths). It is not a physical model of anything.

    d_i   = x_t,i - x_cond,i
    w_ij  = (1 - r_ij^2 / rc^2)^2      for r_ij = |x_cond,j - x_cond,i + shift| < rc
    h_i   = d_i + sum_j w_ij (d_j - d_i)
    v_i   = strength * (1 + t) * (T_i / 300) * sum_j w_ij (h_j - h_i) - d_i * drift
"""

from __future__ import annotations

import torch


class PairRelaxPropagator(torch.nn.Module):
    """Toy two-layer local vector field with the propagator signature."""

    def __init__(self, cutoff: float = 4.0, strength: float = 0.05, drift: float = 0.5) -> None:
        super().__init__()
        self.cutoff = float(cutoff)
        self.strength = float(strength)
        self.drift = float(drift)

    def _aggregate(self, f: torch.Tensor, w: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        i, j = edge_index[0], edge_index[1]
        out = torch.zeros_like(f)
        return out.index_add(0, i, w[:, None] * (f[j] - f[i]))

    def forward(self, x_t: torch.Tensor, x_cond: torch.Tensor, types: torch.Tensor,
                edge_index: torch.Tensor, edge_shift: torch.Tensor, t: torch.Tensor,
                temperature: torch.Tensor, n_local: int) -> torch.Tensor:
        i, j = edge_index[0], edge_index[1]
        r = x_cond[j] - x_cond[i] + edge_shift
        r2 = (r * r).sum(-1)
        w = torch.clamp(1.0 - r2 / (self.cutoff * self.cutoff), min=0.0) ** 2
        d = x_t - x_cond
        h = d + self._aggregate(d, w, edge_index)
        gain = self.strength * (1.0 + t) * (temperature / 300.0)
        return gain[:, None] * self._aggregate(h, w, edge_index) - self.drift * d
