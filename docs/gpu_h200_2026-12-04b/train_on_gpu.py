"""Train one config inside a fixed wall-time budget (one device lease), sizing its schedule first.

A short probe run measures this machine's optimizer-step rate for the config; the real run's cosine
schedule is then sized to the budget (so the learning rate anneals fully rather than being cut by
max_minutes, which stays as a safety stop only). Usage, from the repository root:

    python3 docs/gpu_h200_2026-12-04b/train_on_gpu.py {gpff,flow} CONFIG LOG_DIR --budget-s 300
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from engine_plugins.train.gpff import read_config_file


def _trainer(kind: str):
    if kind == "gpff":
        from engine_plugins.train.gpff import train_gpff
        return train_gpff
    from engine_plugins.train.propagator import train_flow
    return train_flow


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("kind", choices=["gpff", "flow"])
    ap.add_argument("config")
    ap.add_argument("log_dir")
    ap.add_argument("--budget-s", type=float, default=300.0, help="wall time for the real run's steps")
    ap.add_argument("--probe-steps", type=int, default=40)
    args = ap.parse_args()
    train = _trainer(args.kind)
    cfg = read_config_file(args.config)
    name = Path(args.config).stem

    probe = json.loads(json.dumps(cfg))
    probe["output_dir"] = f"/tmp/probe_{name}"
    probe["train"].update(steps=args.probe_steps, val_every=10**9, checkpoint_every=10**9, progress=False,
                          resume=False, max_minutes=None)
    probe["export"] = {**probe.get("export", {}), "path": f"/tmp/probe_{name}/model.pt", "copy_to": None}
    stamps: dict = {}
    t0 = time.perf_counter()
    train(probe, callback=lambda step, stats: stamps.setdefault(step, time.perf_counter()))
    first = 10
    rate = (args.probe_steps - first) / (stamps[args.probe_steps] - stamps[first])
    steps = max(100, int(rate * args.budget_s) // 100 * 100)
    info = {"config": args.config, "probe_steps_per_s": rate, "probe_wall_s": time.perf_counter() - t0,
            "batch_size": cfg["train"]["batch_size"], "steps": steps, "budget_s": args.budget_s}
    print(json.dumps(info), flush=True)
    Path(args.log_dir, f"probe_{name}.json").write_text(json.dumps(info, indent=1))

    cfg["train"].update(steps=steps, val_every=max(steps // 2, 1), progress=False)
    cfg["train"]["max_minutes"] = (args.budget_s + 90.0) / 60.0  # a safety stop only
    t1 = time.perf_counter()
    last = {"t": t1, "step": 0}

    def log(step: int, stats: dict) -> None:
        if step % 200 == 0 or step == steps:
            now = time.perf_counter()
            print(f"{name} step {step}/{steps} loss {stats['loss']:.4g} lr {stats['lr']:.3g} "
                  f"{(step - last['step']) / (now - last['t']):.1f} steps/s elapsed {now - t1:.0f} s", flush=True)
            last.update(t=now, step=step)

    path = train(cfg, callback=log)
    print(f"{name}: wrote {path} after {time.perf_counter() - t1:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
