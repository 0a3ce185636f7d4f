"""Experiment (not part of the package): how often relabelling like atoms brings the clean molecule nearer
to a noised copy, and by how much (the figures behind noise.relabel_target).

python docs/experiments_2026-12-05/relabel_stats.py out/molecules val 150
(first 150 val molecules, one centred noise draw each, seed 0, sigma 0.3 / 0.6 / 1.0 / 1.5 A)."""
import sys

import numpy as np
import torch

from engine_plugins.data.molecules import load_molecule_dataset
from engine_plugins.methods.gpff.noise import aligned_reference, relabelled_reference

data, split, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
mols = load_molecule_dataset(data, split)[:n]
rng = np.random.default_rng(0)
for sigma in (0.3, 0.6, 1.0, 1.5):
    moved, fixed, relabelled = [], [], []
    for m in mols:
        x0 = torch.tensor(m.positions)
        eps = rng.standard_normal(m.positions.shape)
        x = x0 + sigma * torch.tensor(eps - eps.mean(0))
        types = torch.tensor([sorted(set(m.symbols)).index(s) for s in m.symbols])
        batch = torch.zeros(len(x), dtype=torch.long)
        a = float((x - aligned_reference(x0, x, batch, 1)).square().sum(-1).mean().sqrt())
        r = relabelled_reference(x0, x, types, batch, 1)
        b = float((x - aligned_reference(r, x, batch, 1)).square().sum(-1).mean().sqrt())
        fixed.append(a)
        relabelled.append(b)
        moved.append(b < a - 1e-9)
    print(f"sigma {sigma}: nearer after relabelling in {np.mean(moved):.0%} of molecules; target rms "
          f"{np.mean(fixed):.3f} -> {np.mean(relabelled):.3f} A")
