"""Fit a conservative ``pseudo_force`` model to reference energies and forces (an ordinary ML potential).

Used to build the shipped demo model from real OpenMM reference MD. Small on purpose: one frame
per step, Adam, a tqdm bar with loss, rate and ETA.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from engine_plugins.data.reference_md import LabelledFrames
from engine_plugins.nn.graph import neighbor_graph


@dataclass
class FitResult:
    energy_mae_per_atom: float
    force_mae: float
    force_rmse: float
    steps: int


def _graphs(frames: LabelledFrames, cutoff: float, dtype: torch.dtype, length_scale: float):
    box = None if frames.box is None else torch.tensor(frames.box * length_scale, dtype=dtype)
    out = []
    for pos in frames.positions:
        p = torch.tensor(pos * length_scale, dtype=dtype)
        ei, es = neighbor_graph(p, cutoff, box)
        out.append((p, ei, es))
    return out


def evaluate(model: torch.nn.Module, frames: LabelledFrames, cutoff: float, energy_scale: float = 1.0,
             length_scale: float = 1.0, dtype: torch.dtype = torch.float64) -> FitResult:
    """MAEs of the model against the frames' labels (in the labels' units)."""
    model.eval()
    types = torch.tensor(frames.types, dtype=torch.long)
    e_err, f_err = [], []
    for (p, ei, es), e_ref, f_ref in zip(_graphs(frames, cutoff, dtype, length_scale), frames.energies,
                                         frames.forces):
        e, f = model(p, types, ei, es, p.shape[0])
        e_err.append(abs(float(e.sum()) / energy_scale - e_ref) / len(p))
        f_err.append((f.detach().numpy() / (energy_scale / length_scale) - f_ref).ravel())
    fe = np.concatenate(f_err)
    return FitResult(float(np.mean(e_err)), float(np.mean(np.abs(fe))), float(np.sqrt(np.mean(fe ** 2))), 0)


def fit_energy_forces(model: torch.nn.Module, frames: LabelledFrames, cutoff: float, steps: int = 300,
                      lr: float = 5e-3, energy_weight: float = 1.0, force_weight: float = 10.0,
                      energy_scale: float = 1.0, length_scale: float = 1.0, seed: int = 0,
                      dtype: torch.dtype = torch.float64, progress: bool = True) -> FitResult:
    """Adam on per-atom energy and force MSE; labels are converted by ``energy_scale``/``length_scale``
    into the model's units. The model's forward must keep the force graph in training mode."""
    gen = torch.Generator().manual_seed(seed)
    graphs = _graphs(frames, cutoff, dtype, length_scale)
    types = torch.tensor(frames.types, dtype=torch.long)
    e_ref = torch.tensor(frames.energies * energy_scale, dtype=dtype)
    f_ref = torch.tensor(frames.forces * energy_scale / length_scale, dtype=dtype)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    model.train()
    bar = tqdm(range(steps), desc="fit", unit="step", disable=not progress)
    for _ in bar:
        k = int(torch.randint(len(graphs), (1,), generator=gen))
        p, ei, es = graphs[k]
        e, f = model(p, types, ei, es, p.shape[0])
        n = p.shape[0]
        loss = energy_weight * ((e.sum() - e_ref[k]) / n) ** 2 + force_weight * ((f - f_ref[k]) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{float(loss.detach()):.3e}")
    res = evaluate(model, frames, cutoff, energy_scale, length_scale, dtype)
    res.steps = steps
    return res
