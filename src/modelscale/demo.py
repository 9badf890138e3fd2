"""The main job (`modelscale demo`): train the small CNN on digits, then a small sweep of compression
recipes, each measured after every step, and one comparison report with the Pareto front.

Every part runs through the one engine as a recipe: first a baseline recipe (train the CNN once, a
recorded and measured step), then the variants, each loading that trained baseline and timing every
later step paired and interleaved against it. The report shows the baseline once.

Writes a run folder with:

- `runs/baseline/…/0-baseline/`: the trained CNN (weights + spec), `results.json`: every number with
  the seed and split,
- `report.md` + `report.html` (self-contained, plots embedded): accuracy vs size and vs measured
  latency with the Pareto front, per-step waterfalls, theoretical vs measured speedup, per-layer
  sparsity / rank / bit-width, weights, activations, agreement and CKA,
- `runs/` (per-step checkpoints) and `modelscale.db` (the run store; `modelscale runs list --store ...`).

Variants: unstructured pruning at three amounts, structured pruning at two ratios, low-rank SVD at two
energies, static int8, and a combined pipeline (structured prune → distill from the baseline → int8).
Each is one recipe run by the same runner as `modelscale run`, so a killed demo resumes.
"""

from __future__ import annotations

import platform
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from modelscale.core.errors import ModelscaleError
from modelscale.models.loading import load_model_dir

SEED = 0
FINETUNE = {"epochs": 5, "lr": 5e-4, "seed": SEED}
BASELINE_TRAIN = {"epochs": 30, "lr": 3e-3, "weight_decay": 1e-4, "seed": SEED}
MEASURE = {"batch_sizes": [32], "metrics": ["params", "size", "macs", "accuracy", "latency"], "repeats": 30}


def baseline_recipe() -> dict[str, Any]:
    """The demo's first recipe: train the zoo CNN on digits once (step 0, measured like every step)."""
    return {
        "version": 1,
        "name": "baseline",
        "model": {"name": "cnn"},
        "data": {"source": "digits", "seed": SEED},
        "baseline": {"train": dict(BASELINE_TRAIN)},
        "steps": [],
        "measure": dict(MEASURE),
    }


def demo_recipes(baseline_dir: Path, *, quick: bool = False) -> list[dict[str, Any]]:
    """The demo's recipes, all starting from the same trained baseline (`quick`: one point per sweep)."""

    def sweep(*values: float) -> Any:
        return values[-1] if quick else {"sweep": list(values)}

    def recipe(name: str, steps: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "version": 1,
            "name": name,
            "model": {"load": str(baseline_dir)},
            "data": {"source": "digits", "seed": SEED},
            "steps": steps,
            "measure": dict(MEASURE),
        }

    finetune = {"finetune": dict(FINETUNE)}
    return [
        recipe("unstructured", [
            {"name": "prune", "technique": "magnitude_prune",
             "config": {"amount": sweep(0.5, 0.8, 0.9), "scope": "global"}},
            finetune,
        ]),
        recipe("structured", [
            {"name": "prune", "technique": "structured_prune", "config": {"ratio": sweep(0.3, 0.5)}},
            finetune,
        ]),
        recipe("lowrank", [
            {"name": "svd", "technique": "lowrank_svd", "config": {"energy": sweep(0.8, 0.9)}},
            finetune,
        ]),
        recipe("int8", [{"name": "int8", "technique": "static_int8", "config": {}}]),
        recipe("prune-distill-int8", [
            {"name": "prune", "technique": "structured_prune", "config": {"ratio": 0.5}},
            {"name": "distill", "distill": {"teacher": "baseline", "config": {"alpha": 0.3, "temperature": 4.0},
                                            "train": dict(FINETUNE)}},
            {"name": "int8", "technique": "static_int8", "config": {}},
        ]),
    ]  # fmt: skip


def run_demo(out: str | Path | None = None, *, quick: bool = False) -> dict[str, Any]:
    from modelscale.core.io import write_json
    from modelscale.pipeline import patch_recipe, run_recipe
    from modelscale.pipeline.store import open_store
    from modelscale.report import build_report

    started = time.perf_counter()
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    run_dir = Path(out) if out else Path("runs") / f"demo-{stamp}"
    run_dir.mkdir(parents=True, exist_ok=True)
    store = open_store(run_dir / "modelscale.db")

    def run(recipe: dict[str, Any]) -> Any:
        if quick:
            recipe = patch_recipe(
                recipe, epochs=4 if recipe["name"] == "baseline" else 1, repeats=5, warmup=2
            )
        print(f"[demo] recipe {recipe['name']}", flush=True)
        return run_recipe(recipe, store=store, run_dir=run_dir / "runs" / recipe["name"], progress=True)

    base_run = run(baseline_recipe()).variants[0]
    if base_run.status != "completed":
        raise ModelscaleError(f"the demo's baseline failed: {base_run.error}")
    baseline_dir = Path(base_run.steps[0].folder).resolve()
    base = load_model_dir(baseline_dir)
    base_headline = base_run.steps[0].headline
    print(
        f"[demo] baseline test accuracy {base_headline.get('quality.accuracy', float('nan')):.4f}", flush=True
    )

    run_ids: list[str] = [base_run.run_id]
    variants: list[dict[str, Any]] = []
    for recipe in demo_recipes(baseline_dir, quick=quick):
        result = run(recipe)
        for v in result.variants:
            run_ids.append(v.run_id)
            variants.append({"recipe": recipe["name"], "label": v.label, "run_id": v.run_id, "status": v.status,
                             "error": v.error})  # fmt: skip

    print("[demo] building the report", flush=True)
    report_md, report_html = build_report(
        run_ids, store=store, out_dir=run_dir, title="modelscale demo: digits CNN"
    )
    elapsed = time.perf_counter() - started
    data = base_run_data(store, base_run.run_id)
    results = {
        "created": stamp,
        "seed": SEED,
        "data": data,
        "baseline": {
            "model": base.spec,
            "run_id": base_run.run_id,
            "test": {
                k.removeprefix("quality."): v for k, v in base_headline.items() if k.startswith("quality.")
            },
            "folder": str(baseline_dir),
        },
        "variants": variants,
        "runs": [_run_summary(store, rid) for rid in run_ids],
        "report": {"markdown": str(report_md), "html": str(report_html)},
        "elapsed_s": elapsed,
        "machine": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
        },
    }
    write_json(run_dir / "results.json", results)
    print(f"[demo] done in {elapsed:.0f} s; open {report_html}", flush=True)
    text = Path(report_md).read_text(encoding="utf-8") + f"\nRun folder: {run_dir}\n"
    return {"text": text, "run_dir": str(run_dir), "results": results}


def base_run_data(store: Any, run_id: str) -> dict[str, Any]:
    """The baseline run's data section (source, seed, split fractions) as the store recorded it."""
    return dict(store.run(run_id).get("config", {}).get("data", {}))


def _run_summary(store: Any, run_id: str) -> dict[str, Any]:
    """The run's steps with their headline metrics, from the store."""
    run = store.run(run_id)
    steps = []
    for step in store.steps(run_id):
        steps.append({k: step.get(k) for k in ("index", "name", "kind", "status", "error") if k in step})
    metrics = store.metrics(run_id) if hasattr(store, "metrics") else []
    return {"run_id": run_id, "recipe": run.get("recipe"), "label": run.get("label"), "status": run.get("status"),
            "steps": steps, "metrics": metrics}  # fmt: skip


def _jsonable(value: Any) -> bool:
    return isinstance(value, str | int | float | bool | list | dict | tuple | type(None))
