"""Why the noise-conditioned corrector fails on a propagated frame: the flow diverges.

Takes the third of corrector_fw_shrink.py's 12 frames (index 2) of a reference,
makes one propagator jump from it as that script does (seed 7, step 3), prints the closest pair of
the jumped frame, then integrates a corrector's flow by hand (Euler, 10 steps, start noise
0.316 sqrt(k_B T / m) drawn with torch seed 0) and prints the largest velocity and the closest
x_t pair at each step; finally the largest displacement the sampler's corrector gives that frame.

Usage (repository root)::

    python docs/experiments_2026-12-06/corrector_divergence.py /work/data/transport_long_mv/Li0.125-s1.60_T0800 \
        --li-scale 10.3 --corrector out/corrector_transport_nc/corrector_transport.pt \
        --reference-corrector exported_models/corrector_transport.pt
"""

from __future__ import annotations

import argparse

import torch

from engine_plugins.analysis.rollout import read_reference
from engine_plugins.data.trajectories import load_cases
from engine_plugins.export.artifact import load_artifact
from engine_plugins.methods.propagator.prior import KB_EV_PER_K
from engine_plugins.methods.propagator.sampler import SamplerError, build_flow_sampler
from engine_plugins.nn.graph import neighbor_graph


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("case")
    ap.add_argument("--propagator", default="exported_models/propagator_transport_grid.pt")
    ap.add_argument("--li-scale", type=float, required=True)
    ap.add_argument("--corrector", required=True)
    ap.add_argument("--reference-corrector", default="exported_models/corrector_transport.pt")
    ap.add_argument("--frame", type=int, default=2, help="index among corrector_fw_shrink.py's 12 frames")
    args = ap.parse_args()

    case = load_cases(args.case)[0]
    ref = read_reference(case)
    pos = ref.positions
    pa = load_artifact(args.propagator)
    names = pa.metadata.type_names
    types = torch.tensor([names.index(s) for s in ref.species])
    temp = torch.tensor(float(case.temperature), dtype=torch.float64)
    prop = build_flow_sampler(pa, "propagator", prior_scale={"Li": args.li_scale}, contact_rounds_override=0)
    frames = list(range(100, len(pos), max(1, (len(pos) - 100) // 12)))[:12]
    k = args.frame
    x = torch.tensor(pos[frames[k]], dtype=torch.float64)
    box = torch.tensor(ref.boxes[frames[k]], dtype=torch.float64)
    with torch.no_grad():
        y = x + prop(x, types, box, temp, 7, k + 1)
    lengths = torch.diag(box)
    yw = y - torch.floor(y / lengths) * lengths
    ca = load_artifact(args.corrector)
    ei, es = neighbor_graph(yw, ca.metadata.cutoff, box)
    d = (yw[ei[1]] - yw[ei[0]] + es).norm(dim=1)
    i = int(torch.argmin(d))
    print(f"{case.case_id}, frame {frames[k]}, one propagator jump: closest pair "
          f"{ref.species[int(ei[0, i])]}-{ref.species[int(ei[1, i])]} at {float(d[i]):.3f} A")

    mass = ca.metadata.role_fields["prior"]["mass"]
    scale = ca.metadata.role_fields["prior"]["scale"]
    sig = torch.tensor([scale[s] * (KB_EV_PER_K * float(temp) / mass[s]) ** 0.5 for s in ref.species],
                       dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    n = yw.shape[0]
    xt = yw + sig[:, None] * torch.randn(n, 3, generator=g, dtype=torch.float64)
    m = ca.module
    print(f"{args.corrector} (noise_level {ca.metadata.role_fields.get('noise_level')}), Euler by hand:")
    with torch.no_grad():
        for step in range(10):
            v = m(xt, yw, types, ei, es, torch.tensor(step / 10, dtype=torch.float64), temp, n)
            dx = (xt[ei[1]] - xt[ei[0]] + es).norm(dim=1)
            print(f"  step {step}: largest |v| {float(v.abs().max()):.3g} A per unit flow time, "
                  f"closest x_t pair {float(dx.min()):.3g} A")
            xt = xt + 0.1 * v
            if not bool(torch.isfinite(xt).all()):
                print("  non-finite")
                break
    for path in (args.corrector, args.reference_corrector):
        try:
            with torch.no_grad():
                dd = build_flow_sampler(path, "corrector")(y, types, box, temp, 11, k + 1)
            print(f"{path}: largest displacement {float(dd.norm(dim=1).max()):.3f} A")
        except (RuntimeError, SamplerError) as exc:
            print(f"{path}: {str(exc)[:160]}")


if __name__ == "__main__":
    main()
