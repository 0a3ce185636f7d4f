"""Which stage of a learned jump shrinks the framework's vibration?

The 200-ps evaluations give learned/reference framework (Fw) MSD of 0.33-0.57 on every held-out case:
the framework vibrates with half the reference's mean-square amplitude. This measures <u^2>, the mean
square distance of Fw atoms from their sites (each atom's mean position over the reference run, the
framework's own drift removed), on frames of a reference run:

* the reference frames themselves;
* one propagator jump from them (no corrector, no contact redraw);
* each corrector applied to the reference frames (clean input);
* the propagator jump followed by each corrector (one learned jump as the engines make it).

Usage (repository root; a case written by ``engine-plugins simulate transport``)::

    python docs/experiments_2026-12-05/corrector_fw_shrink.py CASE_DIR --li-scale 8.0 \
        --corrector exported_models/corrector_transport.pt [--corrector OTHER.pt:STEPS[:SOLVER]] ...

``--li-scale`` is the adaptive prior pick for the case (``engine-plugins adaptive-prior MODEL CASE``).
About 30 s per corrector on 2 cores.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from engine_plugins.analysis.rollout import read_reference
from engine_plugins.data.trajectories import load_cases
from engine_plugins.export.artifact import load_artifact
from engine_plugins.methods.propagator.sampler import build_flow_sampler


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("case")
    ap.add_argument("--propagator", default="exported_models/propagator_transport_wide.pt")
    ap.add_argument("--li-scale", type=float, required=True)
    ap.add_argument("--corrector", action="append", required=True, help="PATH[:FLOW_STEPS[:SOLVER]]")
    ap.add_argument("--frames", type=int, default=12)
    args = ap.parse_args()

    case = load_cases(args.case)[0]
    ref = read_reference(case)
    pos = ref.positions
    fw = np.array(ref.species) == "Fw"
    site = (pos - pos[:, fw].mean(1, keepdims=True)).mean(0)

    def u2(x: np.ndarray) -> float:
        y = x - x[fw].mean(0)
        return float(((y[fw] - site[fw]) ** 2).sum(-1).mean())

    prop_art = load_artifact(args.propagator)
    names = prop_art.metadata.type_names
    types = torch.tensor([names.index(s) for s in ref.species])
    temp = torch.tensor(float(case.temperature), dtype=torch.float64)
    prop = build_flow_sampler(prop_art, "propagator", prior_scale={"Li": args.li_scale}, contact_rounds_override=0)
    corrs = {}
    for spec in args.corrector:
        path, steps, solver = (spec.split(":") + ["", ""])[:3]
        corrs[spec] = build_flow_sampler(path, "corrector", int(steps) if steps else None, solver or None)

    frames = list(range(100, len(pos), max(1, (len(pos) - 100) // args.frames)))[: args.frames]
    rows: dict[str, list[float]] = {"reference frames": [], "propagator jump": []}
    for k, f in enumerate(frames):
        x = torch.tensor(pos[f], dtype=torch.float64)
        box = torch.tensor(ref.boxes[f], dtype=torch.float64)
        rows["reference frames"].append(u2(pos[f]))
        with torch.no_grad():
            y = x + prop(x, types, box, temp, 7, k + 1)
            rows["propagator jump"].append(u2(y.numpy()))
            for spec, corr in corrs.items():
                rows.setdefault(f"{spec} on reference frames", []).append(
                    u2((x + corr(x, types, box, temp, 11, k + 1)).numpy()))
                rows.setdefault(f"propagator jump + {spec}", []).append(
                    u2((y + corr(y, types, box, temp, 11, k + 1)).numpy()))
    base = np.mean(rows["reference frames"])
    print(f"{case.case_id}: Fw <u^2> about its site (A^2), mean over {len(frames)} frames; ratio to the reference")
    for name, vals in rows.items():
        print(f"  {name:70s} {np.mean(vals):.4f}  {np.mean(vals) / base:.2f}")


if __name__ == "__main__":
    main()
