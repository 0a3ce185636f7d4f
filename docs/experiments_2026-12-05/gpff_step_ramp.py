"""Experiment: the ``denoise`` sampler's step size, constant or ramped, validity per NFE.

Args: MODEL SPLIT LIMIT "A,B,P;..." NFE,NFE [SEEDS]. Each spec ramps the step c_k from A to B as
A + (B - A) u^P, u = k / (nfe - 1); a constant step S is "S,S,1" and goes through ``generate(step=S)``
unchanged. A ramp calls the project's own one-step denoise with c_k (no renoising).
"""
import json
import sys

import numpy as np
import torch

import engine_plugins.methods.gpff.generate as G
import engine_plugins.methods.gpff.samplers as S
from engine_plugins.methods.gpff.commands import dataset_tasks

torch.set_num_threads(2)
model, split, limit = sys.argv[1], sys.argv[2], int(sys.argv[3])
specs = sys.argv[4].split(";")
nfes = [int(v) for v in sys.argv[5].split(",")]
K = int(sys.argv[6]) if len(sys.argv) > 6 else 1
art = G.load_gpff(model)
tasks = dataset_tasks("out/molecules", split, limit)
ONE_STEP = S._denoise
CUR = {}


def _ramped(f, x, fr, nfe, step, renoise, sig, traj):
    a, b, p = CUR["a"], CUR["b"], CUR["p"]
    for k in range(nfe):
        x = ONE_STEP(f, x, fr, 1, a + (b - a) * (k / max(nfe - 1, 1)) ** p, 0.0, sig, traj)
    return x


for spec in specs:
    a, b, p = [float(v) for v in spec.split(",")]
    CUR.update(a=a, b=b, p=p)
    S._denoise = ONE_STEP if a == b else _ramped
    for nfe in nfes:
        v = []
        for k in range(K):
            r = G.generate(art, tasks, sampler="denoise", nfe=nfe, seed=1000 * k, step=a if a == b else None)
            summ, res = G.check_generated(tasks, r.positions)
            v.append(np.mean([x.valid for x in res]))
        print(json.dumps({"a": a, "b": b, "p": p, "nfe": nfe, "valid": float(np.mean(v)),
                          "per_seed": [float(x) for x in v]}), flush=True)
