"""Does the first 10 ps of a reference predict the best prior width beyond r? (nineteenth session)

Usage: python docs/experiments_2026-12-06/probe_short_window.py --seed0 EVAL_DIR [EVAL_DIR ...]
           --seed1 EVAL_DIR [EVAL_DIR ...] --references ROOT [ROOT ...] [--sensitivity 6.5]

EVAL_DIR: `engine-plugins evaluate` outputs of training cases rolled out with a continuous adaptive
rule (as for fit_width_rule.py), one rollout seed per option; ROOT: folders holding the cases'
reference runs (`<ROOT>/<case id>/case.json`).

Why: the best width w* = w (MSD_learned / MSD_MD)^(-1/k) scatters ~4 % from material to material
around the rule in r alone, and repeats between seeds. Two questions: (1) do other features of the
10-ps window the pick is measured on (Li rms at other lags, caging, non-Gaussianity, the
framework's rms, T) predict that scatter for a material left out of the fit? (2) would matching a
learned rollout's short-lag MSD to the window's calibrate the width (how well does the learned/MD
ratio at 2 or 5 ps predict the ratio at the long lag)?
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np

from engine_plugins.analysis.observables import msd_fft
from engine_plugins.analysis.rollout import read_reference
from engine_plugins.data.trajectories import TrajectoryCase
from engine_plugins.methods.propagator.prior import mb_width

LAGS = (1, 3, 10, 30, 50)  # frames (0.1 ps each) of the window


def window_features(case_dir: Path, frames: int = 101) -> dict[str, float]:
    """Per species: rms displacement per component over LAGS in MB units; Li's non-Gaussian
    parameter at 1 ps; Li MSD at 2 and 5 ps over the window's time origins."""
    case = TrajectoryCase.load(case_dir)
    ref = read_reference(case, stop=frames)
    pos, species = ref.positions[:frames], np.asarray(ref.species)
    out: dict[str, float] = {"T": case.temperature}
    for name in sorted(set(species)):
        msd = msd_fft(pos[:, species == name])  # every lag, all time origins of the window
        unit = mb_width(1.0, case.temperature, float(case.masses[name]))
        for lag in LAGS:
            out[f"{name}_r{lag}"] = float(np.sqrt(msd[lag] / 3.0)) / unit
        if name == "Li":
            out["Li_msd2"], out["Li_msd5"] = float(msd[20]), float(msd[50])
    r2 = np.sum((pos[10:, species == "Li"] - pos[:-10, species == "Li"]) ** 2, axis=-1)
    out["Li_a2"] = float(3 * np.mean(r2 ** 2) / (5 * np.mean(r2) ** 2) - 1)
    return out


def read_seed(eval_dirs: list[Path]) -> dict[str, dict]:
    """case id -> prior scale w, learned/MD at the compared lag, learned MSD at 2 and 5 ps."""
    out = {}
    for d in eval_dirs:
        for cid, c in json.loads((d / "evaluation.json").read_text())["cases"].items():
            s = c["species"]["Li"]
            xs, ys = s["curve_learned"]
            out[cid] = {"w": float(c["rollout"]["prior_scale"]["Li"]), "ratio": s["msd_learned"] / s["msd_ref"],
                        "l2": float(np.interp(2.0, xs, ys)), "l5": float(np.interp(5.0, xs, ys))}
    return out


def find_case(cid: str, roots: list[Path]) -> Path:
    for root in roots:
        if (root / cid / "case.json").exists():
            return root / cid
    raise SystemExit(f"no reference for case {cid} under {[str(r) for r in roots]}")


def fit_rms(x: np.ndarray, y: np.ndarray, groups: np.ndarray) -> tuple[float, float]:
    """Residual rms of least squares in sample and with each group left out in turn."""
    res_in = y - x @ np.linalg.lstsq(x, y, rcond=None)[0]
    pred = np.zeros_like(y)
    for g in np.unique(groups):
        out = groups == g
        pred[out] = x[out] @ np.linalg.lstsq(x[~out], y[~out], rcond=None)[0]
    return float(np.sqrt(np.mean(res_in ** 2))), float(np.sqrt(np.mean((y - pred) ** 2)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed0", nargs="+", type=Path, required=True)
    ap.add_argument("--seed1", nargs="+", type=Path, required=True)
    ap.add_argument("--references", nargs="+", type=Path, required=True)
    ap.add_argument("--sensitivity", type=float, default=6.5, help="k in MSD ~ width^k")
    ap.add_argument("--lo", type=float, default=5.5, help="smallest choice (picks at it were clipped)")
    ap.add_argument("--hi", type=float, default=16.8, help="largest choice")
    args = ap.parse_args()
    a, b = read_seed(args.seed0), read_seed(args.seed1)
    cids = sorted(set(a) & set(b))
    feats = {c: window_features(find_case(c, args.references)) for c in cids}

    # (1) features beyond r, unclipped cases, w* = geometric mean over the two seeds
    use = [c for c in cids if args.lo + 1e-6 < a[c]["w"] < args.hi - 1e-6]
    k = args.sensitivity
    log_ws = np.array([0.5 * sum(math.log(s[c]["w"] * s[c]["ratio"] ** (-1 / k)) for s in (a, b)) for c in use])
    groups = np.array([c.split("_T")[0] for c in use])
    col = {n: np.log([feats[c][n] for c in use]) for n in feats[use[0]] if n.startswith(("Li_r", "Fw_r"))}
    col["log T"] = np.log([feats[c]["T"] / 1000.0 for c in use])
    col["Li 5 ps / 1 ps"] = col["Li_r50"] - col["Li_r10"]
    col["Li 1 ps / 0.3 ps"] = col["Li_r10"] - col["Li_r3"]
    col["Li_a2"] = np.array([feats[c]["Li_a2"] for c in use])
    rule = log_ws - math.log(3.2) - 0.5 * col["Li_r10"]
    print(f"{len(use)} unclipped cases of {len(set(groups))} materials, k = {k:g}; "
          f"rule in use 3.2 r^0.5: residual rms {np.sqrt(np.mean(rule ** 2)):.4f}")
    print("| features besides log r | in sample | leaving the material out |\n|---|---|---|")
    for extra in ([], ["log T"], ["Li 5 ps / 1 ps"], ["Li 1 ps / 0.3 ps"], ["Li_r1"], ["Li_a2"], ["Fw_r10"],
                  ["Li_r1", "Li_r3", "Li_r30", "Li_r50", "Fw_r10", "log T"]):
        x = np.c_[[np.ones(len(use)), col["Li_r10"]] + [col[e] for e in extra]].T
        fit_in, fit_out = fit_rms(x, log_ws, groups)
        print(f"| {', '.join(extra) or 'none'} | {fit_in:.4f} | {fit_out:.4f} |")

    # (2) calibration by a short learned rollout: ratio at 2 / 5 ps against the ratio at the long lag
    long_r, short = [], {2: [], 5: []}
    for c in cids:
        for s in (a, b):
            long_r.append(math.log10(s[c]["ratio"]))
            short[2].append(math.log10(s[c]["l2"] / feats[c]["Li_msd2"]))
            short[5].append(math.log10(s[c]["l5"] / feats[c]["Li_msd5"]))
    y = np.array(long_r)
    print(f"\n{len(y)} rollouts: mean |log10 learned/MD| at the compared lag {np.mean(np.abs(y)):.3f}")
    for t, v in short.items():
        v = np.array(v)
        print(f"  ratio at {t} ps in the window: correlation {np.corrcoef(v, y)[0, 1]:.2f}; after correcting by it "
              f"{np.mean(np.abs(y - v)):.3f}")


if __name__ == "__main__":
    main()
