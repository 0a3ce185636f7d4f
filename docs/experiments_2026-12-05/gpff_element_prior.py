"""Experiment: per-element prior spread and blob size, denoise NFE list."""
import json, sys, math
import numpy as np, torch
import engine_plugins.methods.gpff.generate as G
from engine_plugins.methods.gpff.commands import dataset_tasks
from engine_plugins.data.molecules import load_molecule_dataset
torch.set_num_threads(2)
model, split, limit = sys.argv[1], sys.argv[2], int(sys.argv[3])
mode, s0 = sys.argv[4], float(sys.argv[5])
nfes = [int(v) for v in sys.argv[6].split(",")]
K = int(sys.argv[7]) if len(sys.argv) > 7 else 1
art = G.load_gpff(model)
tr = load_molecule_dataset("out/molecules", "train")
# fit a_el: per-coordinate variance about centroid / N^(2/3), per element class
acc = {"H": [], "X": []}
for m in tr:
    p = np.asarray(m.positions); c = p.mean(0); n = len(p)
    for s, q in zip(m.symbols, p):
        acc["H" if s == "H" else "X"].append(((q - c) ** 2).mean() / n ** (2 / 3))
a = {k: float(np.mean(v)) for k, v in acc.items()}
print("a per class", a, "global", G.prior_coeff(art))
orig = G.start_positions
def sp(task, sigma0, coeff, rng):
    n = len(task.symbols)
    if mode == "global":
        return orig(task, sigma0, coeff, rng)
    std = np.array([math.sqrt(sigma0 ** 2 + a["H" if s == "H" else "X"] * n ** (2 / 3)) for s in task.symbols])
    eps = rng.standard_normal((n, 3)) * std[:, None]
    return eps - eps.mean(0)
G.start_positions = sp
tasks = dataset_tasks("out/molecules", split, limit)
for nfe in nfes:
    v = []
    for k in range(K):
        r = G.generate(art, tasks, sampler="denoise", nfe=nfe, seed=1000 * k, sigma_start=s0)
        summ, res = G.check_generated(tasks, r.positions)
        v.append(np.mean([x.valid for x in res]))
    print(json.dumps({"mode": mode, "s0": s0, "nfe": nfe, "valid": float(np.mean(v)), "per_seed": [float(x) for x in v]}), flush=True)
