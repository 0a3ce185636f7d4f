"""Experiment: K independent denoise chains per molecule; validity per chain, oracle, and lowest-pseudo-energy pick."""
import json, sys, time
import numpy as np, torch
from engine_plugins.methods.gpff.commands import dataset_tasks
from engine_plugins.methods.gpff.generate import generate, check_generated, load_gpff
from engine_plugins.methods.gpff.samplers import CountedForce

model, split, limit, nfe, K = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
renoise = float(sys.argv[6]) if len(sys.argv) > 6 else 0.0
torch.set_num_threads(2)
art = load_gpff(model)
tasks = dataset_tasks("out/molecules", split, limit)
names = list(art.metadata.type_names)

def energies(pos_list):
    out = []
    for t, p in zip(tasks, pos_list):
        types = torch.tensor([names.index(s) for s in t.symbols])
        f = CountedForce(art.module, types, art.metadata.cutoff, torch.float32, torch.device("cpu"))
        x = torch.tensor(p, dtype=torch.float32)
        ei, es = f.graph(x.unsqueeze(0))
        with torch.enable_grad():
            e, F = art.module(x, types, ei, es, len(t.symbols))
        out.append((float(e.sum()), float(F.double().square().sum().sqrt())))
    return np.array(out)

V, E, G = [], [], []
t0 = time.time()
for k in range(K):
    r = generate(art, tasks, sampler="denoise", nfe=nfe, seed=1000 * k, renoise=renoise)
    summ, res = check_generated(tasks, r.positions)
    V.append([x.valid for x in res]); eg = energies(r.positions); E.append(eg[:, 0]); G.append(eg[:, 1])
    print(f"chain {k}: valid {np.mean(V[-1]):.3f}  ({time.time()-t0:.0f} s)", flush=True)
V, E, G = np.array(V), np.array(E), np.array(G)
pick = E.argmin(0); pickg = G.argmin(0)
out = {"nfe": nfe, "K": K, "renoise": renoise, "per_chain": V.mean(1).tolist(), "oracle": float(V.any(0).mean()),
       "pick_energy": float(V[pick, np.arange(V.shape[1])].mean()), "pick_gradnorm": float(V[pickg, np.arange(V.shape[1])].mean())}
from scipy.stats import mannwhitneyu
ev, ei_ = E[V], E[~V]
out["auc_energy_valid_lower"] = float(mannwhitneyu(ei_, ev).statistic / (len(ev) * len(ei_))) if len(ev) and len(ei_) else None
print(json.dumps(out))
