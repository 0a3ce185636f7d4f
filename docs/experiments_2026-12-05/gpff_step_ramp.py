import json, sys
import numpy as np, torch
import engine_plugins.methods.gpff.generate as G
import engine_plugins.methods.gpff.samplers as S
from engine_plugins.methods.gpff.commands import dataset_tasks
torch.set_num_threads(2)
model, split, limit = sys.argv[1], sys.argv[2], int(sys.argv[3])
specs = sys.argv[4].split(";"); nfes = [int(v) for v in sys.argv[5].split(",")]
K = int(sys.argv[6]) if len(sys.argv) > 6 else 1
art = G.load_gpff(model)
tasks = dataset_tasks("out/molecules", split, limit)
CUR = {}
def _den(f, x, fr, nfe, step, renoise, sig, traj):
    a, b, p = CUR["a"], CUR["b"], CUR["p"]
    for k in range(nfe):
        u = k / max(nfe - 1, 1)
        c = a + (b - a) * u ** p
        x = x + fr.project(c * f(x))
        traj.append(x)
    return x
S._denoise = _den
for spec in specs:
    a, b, p = [float(v) for v in spec.split(",")]
    CUR.update(a=a, b=b, p=p)
    for nfe in nfes:
        v = []
        for k in range(K):
            r = G.generate(art, tasks, sampler="denoise", nfe=nfe, seed=1000 * k)
            summ, res = G.check_generated(tasks, r.positions)
            v.append(np.mean([x.valid for x in res]))
        print(json.dumps({"a": a, "b": b, "p": p, "nfe": nfe, "valid": float(np.mean(v)), "per_seed": [float(x) for x in v]}), flush=True)
