#!/usr/bin/env python3
"""Time to fit the joint Chinchilla law with bootstrap intervals (target: < 30 s on 2 cores).

Synthetic runs from the Besiroglu et al. (2024) re-fit L = 1.82 + 482/N^0.348 + 2085/D^0.366, with N
log-uniform in 1e7..1e10, D log-uniform in 1e9..1e12 and 1 % multiplicative noise (seeded). Synthetic
data is fine here: this measures speed, and checks only that the truth lies inside the intervals.

`modelscale.scaling.fit_law` is timed end to end (grid fit + leave-one-out + bootstrap), then each
stage alone; wall and process CPU seconds are both printed, with the load average, because a shared
machine inflates wall time. Results go to benchmarks/results/fit_law.json with machine notes.

Usage, from the repository root::

    .venv/bin/python benchmarks/fit_law.py                       # 300 points, n_boot 200
    .venv/bin/python benchmarks/fit_law.py --points 60 --n-boot 50 --json /tmp/fit_law.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from modelscale.core.machine import machine_notes
from modelscale.scaling import JointLaw, fit_law, law_markdown
from modelscale.scaling.bootstrap import bootstrap, leave_one_out
from modelscale.scaling.laws import fit_joint

TRUTH = JointLaw(E=1.82, A=482.0, B=2085.0, alpha=0.348, beta=0.366)
DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "fit_law.json"


def make_runs(points: int, seed: int, noise: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    n = 10.0 ** rng.uniform(7, 10, points)
    d = 10.0 ** rng.uniform(9, 12, points)
    loss = TRUTH.predict(n, d) * np.exp(rng.normal(0.0, noise, points))
    return n, d, loss


def machine() -> dict:
    try:
        threads = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        threads = os.cpu_count()
    try:
        from threadpoolctl import threadpool_info

        blas = [
            f"{i['internal_api']} {i.get('version')} ({i['num_threads']} threads)" for i in threadpool_info()
        ]
    except ImportError:
        blas = []
    notes = machine_notes(packages=("numpy", "scipy"))
    return notes | {"threads_available": threads, "blas": blas, "argv": sys.argv[1:]}


def timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=300)
    parser.add_argument("--n-boot", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--noise", type=float, default=0.01, help="multiplicative noise (log-normal sigma)")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON)
    args = parser.parse_args()

    meta = machine()
    n, d, loss = make_runs(args.points, args.seed, args.noise)
    result, wall, cpu = timed(lambda: fit_law(loss, n=n, d=d, n_boot=args.n_boot, seed=args.seed))
    # Stage by stage (the same work fit_law does).
    raw, grid_wall, grid_cpu = timed(lambda: fit_joint(n, d, loss))
    _, loo_wall, loo_cpu = timed(lambda: leave_one_out(raw.problem, raw.theta))
    _, boot_wall, boot_cpu = timed(
        lambda: bootstrap(raw.problem, raw.theta, n_boot=args.n_boot, seed=args.seed)
    )

    print(law_markdown(result))
    print(f"points {args.points}, n_boot {args.n_boot}, load average {meta['load_average']}")
    print(f"fit_law total: {wall:.2f} s wall, {cpu:.2f} s CPU  (target < 30 s)")
    print(
        f"  grid fit      {grid_wall:6.2f} s wall {grid_cpu:6.2f} s CPU ({raw.n_starts} of {raw.n_grid} starts)"
    )
    print(f"  leave-one-out {loo_wall:6.2f} s wall {loo_cpu:6.2f} s CPU ({args.points} refits)")
    print(
        f"  bootstrap     {boot_wall:6.2f} s wall {boot_cpu:6.2f} s CPU ({args.n_boot} refits, 2 starts each)"
    )
    covered = {
        p.name: bool(p.low is not None and p.low < getattr(TRUTH, p.name) < p.high) for p in result.parameters
    }
    print("truth inside interval:", covered)

    report = {
        "benchmark": "fit_law: joint Chinchilla law, Huber + L-BFGS-B, percentile bootstrap",
        "machine": meta,
        "setup": {
            "points": args.points,
            "n_boot": args.n_boot,
            "seed": args.seed,
            "noise": args.noise,
            "truth": TRUTH.to_dict(),
            "n_range": [1e7, 1e10],
            "d_range": [1e9, 1e12],
        },
        "seconds": {
            "fit_law_wall": round(wall, 3),
            "fit_law_cpu": round(cpu, 3),
            "grid_fit_wall": round(grid_wall, 3),
            "grid_fit_cpu": round(grid_cpu, 3),
            "leave_one_out_wall": round(loo_wall, 3),
            "leave_one_out_cpu": round(loo_cpu, 3),
            "bootstrap_wall": round(boot_wall, 3),
            "bootstrap_cpu": round(boot_cpu, 3),
        },
        "target_seconds": 30,
        "truth_inside_interval": covered,
        "result": result.to_dict(),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1, allow_nan=False) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
