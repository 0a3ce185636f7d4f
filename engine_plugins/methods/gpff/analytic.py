"""The exact GPFF pseudo-force around one known structure, as a TorchScript ``pseudo_force`` module.

``QuadraticPseudoForce(x0)`` is the ideal model for a data set of one molecule: per-atom energy
``(k/2)|x_i - y_i|^2`` and force ``y_i - x_i`` with ``y = R* x0 + t*`` (the clean structure rigidly
superimposed on the input, ``align=True``) or ``y = x0`` (``align=False``). It ignores the graph
(a global model: use it standalone or on one rank). Uses: testing samplers independently of
training, and checking engine relaxations against a known answer.
"""

from __future__ import annotations

from typing import Tuple

import torch


class QuadraticPseudoForce(torch.nn.Module):
    """Exact quadratic pseudo-energy around ``x0`` [N, 3] (role ``pseudo_force`` signature)."""

    def __init__(self, x0: torch.Tensor, align: bool = True, spring_constant: float = 1.0,
                 cutoff: float = 12.0) -> None:
        super().__init__()
        self.register_buffer("x0", x0.detach().clone())
        self.align = bool(align)
        self.k = float(spring_constant)
        self.cutoff = float(cutoff)  # for samplers that build a graph (ignored here)

    def reference(self, pos: torch.Tensor) -> torch.Tensor:
        n = self.x0.shape[0]
        m = pos.shape[0] // n
        x0 = self.x0.to(pos.dtype)
        if not self.align:
            return x0.repeat(m, 1)
        x = pos.view(m, n, 3)
        c0 = x0.mean(0)
        cx = x.mean(1, keepdim=True)
        a = (x0 - c0).unsqueeze(0)  # [1, n, 3]
        b = x - cx
        h = torch.matmul(b.transpose(1, 2), a.expand(m, n, 3))  # [m, 3, 3] = sum_i b_i a_i^T
        u, s, vh = torch.linalg.svd(h)
        d = torch.sign(torch.linalg.det(torch.matmul(u, vh)))
        d = torch.where(d == 0, torch.ones_like(d), d)
        diag = torch.ones(m, 3, dtype=pos.dtype, device=pos.device)
        diag[:, 2] = d
        rot = torch.matmul(torch.matmul(u, torch.diag_embed(diag)), vh)
        y = torch.matmul(a.expand(m, n, 3), rot.transpose(1, 2)) + cx
        return y.reshape(m * n, 3)

    def forward(self, pos: torch.Tensor, types: torch.Tensor, edge_index: torch.Tensor,
                edge_shift: torch.Tensor, n_local: int) -> Tuple[torch.Tensor, torch.Tensor]:
        if pos.shape[0] % self.x0.shape[0] != 0:
            raise RuntimeError("QuadraticPseudoForce: the number of atoms is not a multiple of the reference's")
        y = self.reference(pos.detach())
        forces = self.k * (y - pos.detach())
        atom_energy = 0.5 * self.k * (pos.detach() - y).square().sum(-1)
        return atom_energy, forces


def script_quadratic(x0: torch.Tensor, align: bool = True, spring_constant: float = 1.0,
                     cutoff: float = 12.0) -> torch.jit.ScriptModule:
    """``torch.jit.script(QuadraticPseudoForce(...))``."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.script(QuadraticPseudoForce(x0, align, spring_constant, cutoff))

