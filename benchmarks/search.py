#!/usr/bin/env python3
"""Our recipe search vs random search vs a small uniform grid, at the same trial budget, on real digits.

The model is the zoo CNN trained on scikit-learn's digits (30 epochs, seed 0, cached under runs/).
Objectives: validation accuracy (max) and bytes on disk of the saved model file (min), under
`accuracy_drop <= 1` (points, validation). Methods:

- `search`: `modelscale.search` as shipped (TPE multivariate + constraints, sensitivity-knapsack and
  corner warm starts, paired-test early stopping), default space;
- `random`: the same space and budget with Optuna's RandomSampler, no warm starts, no early stopping;
- `grid`: global magnitude pruning {0, 0.5, 0.75} × {static int8, int4 weight-only} × fine-tune {0, 5}
  epochs (12 recipes, each run once: the grid is deterministic).

Per run: trials-to-target (first feasible trial with bytes ≤ the target, 24,000 B by default; a trial
stopped early spends one trial of the budget like any other; a run that never reaches the target counts
as +∞ in the median, which is reported unless it is itself +∞) and the
hypervolume of the feasible front in (accuracy, bytes / baseline bytes), reference point
(baseline accuracy − 3 pt, 1.0): the area a method's front dominates. Search and random run with 5
seeds each. The test split is never used here. Results: benchmarks/results/search_digits.json with
machine notes (threads, load before and after).

Usage, from the repository root::

    .venv/bin/python benchmarks/search.py                   # 5 seeds × 50 trials (a few minutes)
    .venv/bin/python benchmarks/search.py --seeds 2 --trials 20 --json /tmp/search.json
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from modelscale.core.machine import machine_notes

DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "search_digits.json"
BASELINE = Path("runs") / "bench-search-cnn"
CONSTRAINTS = ["accuracy_drop <= 1"]


def baseline() -> Path:
    from modelscale.cli import main

    if not (BASELINE / "modelscale.json").is_file():
        code = main(
            ["train", "cnn", "--data", "digits", "--epochs", "30", "--lr", "0.003", "--out", str(BASELINE)]
        )
        if code != 0:
            raise SystemExit("training the baseline failed")
    return BASELINE


def grid_space() -> tuple[dict, list[dict]]:
    space = {
        "stages": [
            {"name": "prune", "optional": True,
             "options": [{"technique": "magnitude_prune", "knobs": {"amount": [0.5, 0.75]}, "fixed": {"scope": "global"}}]},
            {"name": "tune", "finetune": {"epochs": [0, 5], "lr": 0.001}},
            {"name": "quantize",
             "options": [{"technique": "static_int8"}, {"technique": "weight_only", "knobs": {"bits": [4]}}]},
        ]
    }  # fmt: skip
    points = []
    for prune, quant, epochs in itertools.product([None, 0.5, 0.75], ["static_int8", "weight_only"], [0, 5]):
        p = {"prune.technique": "none" if prune is None else "magnitude_prune", "tune.epochs": epochs,
             "quantize.technique": quant}  # fmt: skip
        if prune is not None:
            p["prune.magnitude_prune.amount"] = prune
        if quant == "weight_only":
            p["quantize.weight_only.bits"] = 4
        points.append(p)
    return space, points


def hypervolume(points: list[tuple[float, float]], ref: tuple[float, float]) -> float:
    """Area dominated by (accuracy ↑, relative bytes ↓) points above ref accuracy and below ref bytes."""
    usable = sorted({(a, b) for a, b in points if a > ref[0] and b < ref[1]}, key=lambda p: p[1])
    area, best_acc = 0.0, ref[0]
    for i, (acc, size) in enumerate(usable):
        best_acc = max(best_acc, acc)
        nxt = usable[i + 1][1] if i + 1 < len(usable) else ref[1]
        area += (best_acc - ref[0]) * (nxt - size)
    return area


def analyse(out: Path, target: float) -> dict:
    import optuna

    study = optuna.load_study(study_name="search", storage=f"sqlite:///{out / 'search.db'}")
    base = study.user_attrs["baseline"]
    trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    feasible = [
        t for t in trials
        if t.state.name == "COMPLETE" and "metrics" in t.user_attrs
        and all(v <= 0 for v in t.user_attrs.get("constraint_violation", [1.0]))
    ]  # fmt: skip
    hit = next((t.number + 1 for t in feasible if t.user_attrs["metrics"]["bytes"] <= target), None)
    stopped = [t for t in trials if t.state.name == "PRUNED" and "early_stop" in t.user_attrs]
    warm = [t.number + 1 for t in trials if "warm_start" in t.user_attrs]
    pts = [
        (t.user_attrs["metrics"]["accuracy"], t.user_attrs["metrics"]["bytes"] / base["bytes"])
        for t in feasible
    ]
    smallest = min((t.user_attrs["metrics"]["bytes"] for t in feasible), default=None)
    return {
        "trials": len(trials),
        "feasible": len(feasible),
        "trials_to_target": hit,
        "stopped_early": len(stopped),
        "stopped_early_p_values": [t.user_attrs["early_stop"]["p_value"] for t in stopped],
        "warm_start_trials": warm,
        "sensitivity_seconds": study.user_attrs.get("sensitivity", {}).get("seconds"),
        "hypervolume": hypervolume(pts, (base["accuracy"] - 0.03, 1.0)),
        "smallest_feasible_bytes": smallest,
        "baseline_bytes": base["bytes"],
        "baseline_val_accuracy": base["accuracy"],
    }


def _finished(out: Path, trials: int) -> bool:
    import optuna

    try:
        study = optuna.load_study(study_name="search", storage=f"sqlite:///{out / 'search.db'}")
    except Exception:  # noqa: BLE001 - no study yet
        return False
    spent = [t for t in study.get_trials(deepcopy=False)
             if t.state.name == "COMPLETE" or (t.state.name == "PRUNED" and "early_stop" in t.user_attrs)]  # fmt: skip
    return len(spent) >= trials and (out / "pareto.json").is_file()


def run(method: str, seed: int, trials: int, target: float, model: Path, root: Path) -> dict:
    from modelscale.search import search

    out = root / f"{method}-{seed}"
    if out.exists():  # --work: a run finished by an earlier (killed) invocation is read, not rerun
        done = _finished(out, trials if method != "grid" else len(grid_space()[1]))
        if done:
            result = analyse(out, target)
            result.update({"method": method, "seed": seed, "seconds": None, "reused": True})
            return result
        shutil.rmtree(out)  # an unfinished run starts again from scratch
    kwargs: dict = {"objectives": ["accuracy", "bytes"], "constraints": CONSTRAINTS, "out": out, "confirm_seeds": 0,
                    "seed": seed, "progress": False}  # fmt: skip
    t0 = time.perf_counter()
    if method == "grid":
        space, points = grid_space()
        search(str(model), "digits", space=space, n_trials=len(points), sampler="random", warm_start=False,
               enqueue=points, early_stop=False, **kwargs)  # fmt: skip
    else:
        search(str(model), "digits", n_trials=trials, sampler="auto" if method == "search" else "random",
               warm_start=method == "search", early_stop=method == "search", **kwargs)  # fmt: skip
    result = analyse(out, target)
    result.update({"method": method, "seed": seed, "seconds": time.perf_counter() - t0})
    return result


def summary(rows: list[dict], method: str) -> dict:
    mine = [r for r in rows if r["method"] == method]
    hits = [r["trials_to_target"] for r in mine]
    reached = sorted(h for h in hits if h is not None)
    hv = sorted(r["hypervolume"] for r in mine)
    median = statistics.median([math.inf if h is None else h for h in hits]) if hits else math.inf
    return {
        "runs": len(mine),
        "reached_target": len(reached),
        "median_trials_to_target": None if math.isinf(median) else median,  # not reached = +inf
        "trials_to_target": hits,
        "hypervolume_median": statistics.median(hv),
        "hypervolume_p75": hv[min(len(hv) - 1, int(round(0.75 * (len(hv) - 1))))],
        "hypervolume": hv,
    }


def acceptance(rows: list[dict]) -> dict:
    """The issue's bar: median trials-to-target at most half of random's; HV median >= random p75 and grid."""
    s, r, g = (summary(rows, m) for m in ("search", "random", "grid"))
    med = {k: statistics.median([math.inf if h is None else h for h in x["trials_to_target"]]) for k, x in
           (("search", s), ("random", r))}  # fmt: skip
    return {
        "median_trials_to_target_at_most_half_random": med["search"] <= 0.5 * med["random"]
        if math.isfinite(med["search"])
        else False,
        "hypervolume_median_vs_random_p75": [s["hypervolume_median"], r["hypervolume_p75"],
                                             s["hypervolume_median"] >= r["hypervolume_p75"]],
        "hypervolume_median_vs_grid": [s["hypervolume_median"], g["hypervolume_median"],
                                       s["hypervolume_median"] >= g["hypervolume_median"]],
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--trials", type=int, default=50)
    parser.add_argument("--target", type=float, default=24_000.0, help="bytes on disk to reach")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON)
    parser.add_argument("--work", type=Path, default=None,
                        help="keep every run in this folder; runs an earlier (killed) call finished are reused")  # fmt: skip
    args = parser.parse_args()
    torch.set_num_threads(1)
    load_before = os.getloadavg()
    model = baseline()
    rows = []
    with contextlib.ExitStack() as stack:
        tmp = args.work or stack.enter_context(tempfile.TemporaryDirectory(prefix="modelscale-search-bench-"))
        for seed in range(args.seeds):  # interleave the methods seed by seed: load hits them alike
            for method in ("search", "random"):
                rows.append(run(method, seed, args.trials, args.target, model, Path(tmp)))
                r = rows[-1]
                print(f"{method:7s} seed {seed}: trials-to-target {r['trials_to_target']}, HV {r['hypervolume']:.5f}, "
                      f"smallest {r['smallest_feasible_bytes']} B, {r['seconds'] or 0:.0f} s{' (reused)' if r.get('reused') else ''}", flush=True)  # fmt: skip
        rows.append(run("grid", 0, 12, args.target, model, Path(tmp)))
        r = rows[-1]
        print(f"grid   : trials-to-target {r['trials_to_target']}, HV {r['hypervolume']:.5f}, "
              f"smallest {r['smallest_feasible_bytes']} B", flush=True)  # fmt: skip
    result = {
        "benchmark": "search_digits",
        "description": "modelscale search vs random search vs grid on the digits CNN (validation split only)",
        "constraints": CONSTRAINTS,
        "target_bytes": args.target,
        "trials": args.trials,
        "summary": {m: summary(rows, m) for m in ("search", "random", "grid")},
        "runs": rows,
        "acceptance": acceptance(rows),
        "machine": {**machine_notes(1), "load_before": load_before, "load_after": os.getloadavg()},
        "command": "python benchmarks/search.py " + " ".join(sys.argv[1:]),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    for m, s in result["summary"].items():
        print(f"{m:7s}: reached {s['reached_target']}/{s['runs']}, median trials-to-target "
              f"{s['median_trials_to_target']}, HV median {s['hypervolume_median']:.5f} p75 {s['hypervolume_p75']:.5f}")  # fmt: skip
    print("acceptance:", json.dumps(result["acceptance"]))


if __name__ == "__main__":
    main()
