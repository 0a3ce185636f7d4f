"""Refit the adaptive prior's rule on rollouts of training cases (eighteenth session).

Usage: python docs/experiments_2026-12-06/fit_width_rule.py EVAL_DIR [EVAL_DIR ...]
           [--factor 3.2] [--exponent 0.5] [--sensitivity 6.5] [--species Li] [--cases]
           [--second EVAL_DIR [EVAL_DIR ...]]

EVAL_DIR: written by `engine-plugins evaluate ... --adaptive-prior PS` with a model whose rule is
continuous (`engine-plugins adaptive-rule MODEL --continuous on`), so that each rollout's prior
scale w is the rule's value w = factor * r^exponent itself and r can be read back from it.

Why: the learned MSD grows about as w^k (k = 5-8, seventeenth session), so the width that would
have matched MD in a case is w* = w * (MSD_learned / MSD_MD)^(-1/k). A least-squares line of
log w* on log r (and log T) says whether another rule would fit the training cases better.
Cases whose pick was clipped to the choices' range are left out (r cannot be read back).
``--second``: the same cases rolled out with another seed; how much of the case-to-case scatter
of w* repeats from seed to seed (material or reference) and how much is the rollout's own noise.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np

from engine_plugins.analysis.observables import mean_abs_log10_ratio


def read_rows(eval_dirs: list[Path], args: argparse.Namespace) -> list[tuple]:
    """(case, T, r, w, learned/MD, w*) of every unclipped case, sorted by case."""
    rows = []
    for d in eval_dirs:
        report = json.loads((d / "evaluation.json").read_text())
        for cid, case in report["cases"].items():
            s = case["species"][args.species]
            w = float(case["rollout"]["prior_scale"][args.species])
            if not (args.lo + 1e-9 < w < args.hi - 1e-9):
                continue
            r = (w / args.factor) ** (1.0 / args.exponent)
            ratio = s["msd_learned"] / s["msd_ref"]
            rows.append((cid, float(case["temperature"]), r, w, ratio, w * ratio ** (-1.0 / args.sensitivity)))
    return sorted(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("eval_dirs", nargs="+", type=Path)
    ap.add_argument("--factor", type=float, default=3.2, help="the rule's width_factor in the rollouts")
    ap.add_argument("--exponent", type=float, default=0.5, help="the rule's width_exponent in the rollouts")
    ap.add_argument("--sensitivity", type=float, default=6.5, help="k in MSD ~ width^k")
    ap.add_argument("--species", default="Li")
    ap.add_argument("--lo", type=float, default=5.5, help="smallest choice (picks at it were clipped)")
    ap.add_argument("--hi", type=float, default=16.8, help="largest choice")
    ap.add_argument("--cases", action="store_true", help="print every case")
    ap.add_argument("--second", nargs="+", type=Path, help="the same cases with another rollout seed")
    args = ap.parse_args()
    rows = read_rows(args.eval_dirs, args)
    if len(rows) < 4:
        raise SystemExit(f"only {len(rows)} unclipped cases: too few to fit")
    log_r = np.log([x[2] for x in rows])
    log_t = np.log([x[1] / 1000.0 for x in rows])
    log_ratio = np.log10([x[4] for x in rows])
    log_w_star = np.log([x[5] for x in rows])
    mean_log = mean_abs_log10_ratio([x[4] for x in rows], [1.0] * len(rows))
    print(f"{len(rows)} cases: median learned/MD {10 ** np.median(log_ratio):.2f}, mean |log10| {mean_log:.3f}; "
          f"sensitivity k = {args.sensitivity:g}")
    res0 = log_w_star - math.log(args.factor) - args.exponent * log_r
    print(f"rule used: w = {args.factor:g} r^{args.exponent:g}; residual of log w*: mean {res0.mean():+.4f}, "
          f"rms {np.sqrt(np.mean(res0 ** 2)):.4f}")
    x1 = np.c_[np.ones_like(log_r), log_r]
    c1 = np.linalg.lstsq(x1, log_w_star, rcond=None)[0]
    res1 = log_w_star - x1 @ c1
    print(f"least squares: w = {math.exp(c1[0]):.3f} r^{c1[1]:.3f}; residual rms {np.sqrt(np.mean(res1 ** 2)):.4f}")
    x2 = np.c_[np.ones_like(log_r), log_r, log_t]
    c2 = np.linalg.lstsq(x2, log_w_star, rcond=None)[0]
    res2 = log_w_star - x2 @ c2
    print(f"with temperature: w = {math.exp(c2[0]):.3f} r^{c2[1]:.3f} (T/1000 K)^{c2[2]:+.3f}; residual rms "
          f"{np.sqrt(np.mean(res2 ** 2)):.4f}")
    for t in sorted({x[1] for x in rows}):
        sel = [i for i, x in enumerate(rows) if x[1] == t]
        print(f"  {t:.0f} K: {len(sel)} cases, mean log10 learned/MD {np.mean(log_ratio[sel]):+.3f}")
    if args.second:
        other = {x[0]: x for x in read_rows(args.second, args)}
        pairs = [(x, other[x[0]]) for x in rows if x[0] in other]
        a = np.log([x[5] for x, _ in pairs]) - math.log(args.factor) - args.exponent * np.log([x[2] for x, _ in pairs])
        b = np.log([y[5] for _, y in pairs]) - math.log(args.factor) - args.exponent * np.log([y[2] for _, y in pairs])
        noise = np.sqrt(np.mean((a - b) ** 2) / 2)  # one seed's rollout noise in log w*
        total = np.sqrt(np.mean(np.r_[a, b] ** 2))
        print(f"second seed, {len(pairs)} cases: residuals correlate {np.corrcoef(a, b)[0, 1]:.2f} between seeds; "
              f"one seed's rms {total:.4f} = rollout noise {noise:.4f} and a part that repeats "
              f"{math.sqrt(max(total ** 2 - noise ** 2, 0.0)):.4f}; two-seed mean rms {np.sqrt(np.mean(((a + b) / 2) ** 2)):.4f}")
    if args.cases:
        for cid, t, r, w, ratio, w_star in rows:
            print(f"  {cid}: r {r:.3f}  w {w:.4f}  learned/MD {ratio:.2f}  w* {w_star:.4f}")


if __name__ == "__main__":
    main()
