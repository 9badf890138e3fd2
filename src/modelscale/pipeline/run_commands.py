"""Functions behind `modelscale run` and `modelscale runs list|show|compare|delete`.

Each returns `(text, data)`: aligned text for a terminal and JSON-safe data for `--json`, and raises
`ModelscaleError` for bad input (unknown run id, bad recipe). The CLI only parses arguments.

Example::

    text, data = run_command("recipes/digits_cnn_prune_finetune.yaml", epochs=1)
    print(runs_list()[0]); print(runs_compare([r["id"] for r in data["runs"]])[0])
"""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

from modelscale.core.errors import ModelscaleError
from modelscale.pipeline.store import RunStore, open_store


def _when(ts: float | None) -> str:
    return datetime.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M") if ts else "—"


def _fmt(value: float | None, kind: str) -> str:
    from modelscale.core.formatting import DASH, human, millis

    if value is None:
        return DASH
    if kind == "pct":
        return f"{100 * value:.2f}%"
    if kind == "pp":
        return f"{100 * value:+.2f} pp"
    if kind == "mb":
        return f"{value / 1e6:.3f}"
    if kind == "ms":
        return millis(value)
    if kind == "x":
        return f"{value:.2f}×"
    if kind == "s":
        return f"{value:.1f}"
    return human(value)


def _table(headers: list[str], rows: list[list[str]]) -> str:
    from modelscale.core.formatting import table

    return table(headers, rows, markdown=False)


def _headlines(db: RunStore, run_id: str) -> dict[int, dict[str, float]]:
    """Per step: the first value of each headline metric (first device/dtype/batch size)."""
    from modelscale.pipeline.store import headline

    by_step: dict[int, list[dict[str, Any]]] = {}
    for row in db.metrics(run_id):
        by_step.setdefault(int(row["step_idx"]), []).append(row)
    return {idx: headline(rows) for idx, rows in by_step.items()}


def _with_store(store: Any, fn: Any) -> tuple[str, Any]:
    own = not isinstance(store, RunStore)
    db = open_store(store, create=False)  # reading never creates a store
    try:
        return fn(db)
    finally:
        if own:
            db.close()


def run_command(
    path: str | Path,
    *,
    store: RunStore | str | Path | None = None,
    run_dir: str | Path | None = None,
    resume: bool = True,
    progress: bool = True,
    epochs: int | None = None,
    allow_pickle: bool = False,
) -> tuple[str, dict[str, Any]]:
    """`modelscale run RECIPE`: validate, run or resume, and summarize. `epochs` shortens every
    training section (a smoke run of a full recipe, kept in `runs/<name>-epochs<N>` by default).
    `allow_pickle` is the user's own opt-in to pickled weights the recipe names."""
    from modelscale.pipeline.recipe import load_recipe, patch_recipe, read_recipe
    from modelscale.pipeline.runner import run_recipe

    data = read_recipe(path)
    if epochs is not None:
        data = patch_recipe(data, epochs=epochs)
    plan = load_recipe(data)
    if run_dir is None and epochs is not None:  # keep smoke runs apart from the full run's checkpoints
        run_dir = Path("runs") / f"{plan.name}-epochs{epochs}"
    result = run_recipe(
        plan, store=store, run_dir=run_dir, resume=resume, progress=progress, allow_pickle=allow_pickle
    )
    headers = [
        "variant",
        "run id",
        "status",
        "accuracy",
        "params",
        "nonzero",
        "zipped MB",
        "latency ms",
        "note",
    ]
    rows = []
    for v in result.variants:
        measured = [s for s in v.steps if s.status == "completed" and s.headline]
        h = measured[-1].headline if measured else {}
        rows.append(
            [
                v.label,
                v.run_id,
                v.status,
                _fmt(h.get("quality.accuracy"), "pct"),
                _fmt(h.get("params.total"), "n"),
                _fmt(h.get("params.nonzero"), "n"),
                _fmt(h.get("size.zipped_bytes"), "mb"),
                _fmt(h.get("latency.median_ms"), "ms"),
                v.error or "",
            ]
        )
    n_ok = sum(v.status == "completed" for v in result.variants)
    text = (
        f"recipe {plan.name}: {n_ok}/{len(result.variants)} variant(s) completed\n"
        f"run folder {result.run_dir}, store {result.store}\n\n" + _table(headers, rows)
    )
    if len(result.variants) > 1:
        ids = " ".join(v.run_id for v in result.variants)
        text += f"\n\ncompare: modelscale runs compare {ids}"
    return text, {
        "result": result.to_dict(),
        "runs": [{"id": v.run_id, "label": v.label, "status": v.status} for v in result.variants],
    }


def runs_list(
    *, store: RunStore | str | Path | None = None, recipe: str | None = None
) -> tuple[str, list[dict[str, Any]]]:
    """`modelscale runs list`: every run in the store, oldest first."""

    from modelscale.pipeline.store import DEFAULT_STORE

    location = DEFAULT_STORE if store is None else store
    if not isinstance(location, RunStore) and "://" not in str(location) and not Path(location).exists():
        return f"no runs: there is no run store at {location} yet", []

    def go(db: RunStore) -> tuple[str, list[dict[str, Any]]]:
        runs = db.runs(recipe=recipe)
        out, rows = [], []
        for run in runs:
            steps = db.steps(run["id"])
            done = sum(s["status"] == "completed" for s in steps)
            total = len(run["config"].get("steps", [])) + 1
            out.append(
                {
                    k: run[k]
                    for k in (
                        "id",
                        "recipe",
                        "variant",
                        "label",
                        "status",
                        "run_dir",
                        "created_at",
                        "finished_at",
                        "error",
                    )
                }
                | {"steps_done": done, "steps_total": total}
            )
            rows.append(
                [
                    run["id"],
                    run["recipe"],
                    run["label"],
                    run["status"],
                    f"{done}/{total}",
                    _when(run["created_at"]),
                ]
            )
        if not runs:
            return f"no runs in {db.location}", []
        return _table(["id", "recipe", "variant", "status", "steps", "created"], rows), out

    return _with_store(store, go)


def runs_show(run_id: str, *, store: RunStore | str | Path | None = None) -> tuple[str, dict[str, Any]]:
    """`modelscale runs show ID`: a run's steps with their status, timing and headline metrics."""

    def go(db: RunStore) -> tuple[str, dict[str, Any]]:
        run = db.run(run_id)
        steps = db.steps(run["id"])
        heads = _headlines(db, run["id"])
        rows = []
        for s in steps:
            h = heads.get(int(s["idx"]), {})
            rows.append(
                [
                    f"{s['idx']}-{s['name']}",
                    s["kind"],
                    s["status"] + (" (reused)" if s.get("reused_from") else ""),
                    str(s["attempts"]),
                    _fmt(s.get("seconds"), "s"),
                    _fmt(h.get("quality.accuracy"), "pct"),
                    _fmt(h.get("params.nonzero"), "n"),
                    _fmt(h.get("size.zipped_bytes"), "mb"),
                    _fmt(h.get("latency.median_ms"), "ms"),
                ]
            )
        lines = [
            f"run {run['id']}: recipe {run['recipe']}, variant {run['label']}, {run['status']}",
            f"folder {run['run_dir']}/{run['variant']}; created {_when(run['created_at'])}, finished {_when(run.get('finished_at'))}",
        ]
        if run.get("error"):
            lines.append(f"error: {run['error']}")
        lines += [
            "",
            _table(
                [
                    "step",
                    "kind",
                    "status",
                    "tries",
                    "seconds",
                    "accuracy",
                    "nonzero params",
                    "zipped MB",
                    "latency ms",
                ],
                rows,
            ),
        ]
        for s in steps:
            if s.get("error"):
                lines.append(f"step {s['idx']} ({s['name']}) failed: {s['error']}")
            for note in (
                (s.get("summary") or {}).get("notes", []) if isinstance(s.get("summary"), dict) else []
            ):
                lines.append(f"step {s['idx']} note: {note}")
        data = {
            "run": run,
            "steps": steps,
            "metrics": db.metrics(run["id"]),
            "artifacts": db.artifacts(run["id"]),
        }
        return "\n".join(lines), data

    return _with_store(store, go)


def runs_compare(
    ids: list[str], *, store: RunStore | str | Path | None = None
) -> tuple[str, list[dict[str, Any]]]:
    """`modelscale runs compare ID...`: the last completed step of each run against its own baseline."""
    if not ids:
        raise ModelscaleError("give at least one run id to compare; see `modelscale runs list`")

    def go(db: RunStore) -> tuple[str, list[dict[str, Any]]]:
        out, rows = [], []
        for rid in ids:
            run = db.run(rid)
            steps = [s for s in db.steps(run["id"]) if s["status"] == "completed"]
            heads = _headlines(db, run["id"])
            base = heads.get(0, {})
            measured = [s for s in steps if heads.get(int(s["idx"]))]
            last = measured[-1] if measured else None  # export steps measure nothing new
            final = heads.get(int(last["idx"]), {}) if last else {}
            acc, acc0 = final.get("quality.accuracy"), base.get("quality.accuracy")
            lat, lat0 = final.get("latency.median_ms"), base.get("latency.median_ms")
            entry = {
                "id": run["id"],
                "recipe": run["recipe"],
                "label": run["label"],
                "status": run["status"],
                "final_step": f"{last['idx']}-{last['name']}" if last else None,
                "accuracy": acc,
                "delta_accuracy": (acc0 - acc) if acc is not None and acc0 is not None else None,
                "params": final.get("params.total"),
                "nonzero_params": final.get("params.nonzero"),
                "zipped_bytes": final.get("size.zipped_bytes"),
                "macs": final.get("macs.macs"),
                "latency_ms": lat,
                "speedup": (lat0 / lat) if lat and lat0 else None,
                "sweep": run.get("sweep"),
            }
            out.append(entry)
            rows.append(
                [
                    run["id"],
                    f"{run['recipe']} {run['label']}",
                    run["status"],
                    entry["final_step"] or "—",
                    _fmt(acc, "pct"),
                    _fmt(entry["delta_accuracy"], "pp"),
                    _fmt(entry["nonzero_params"], "n"),
                    _fmt(entry["zipped_bytes"], "mb"),
                    _fmt(entry["macs"], "n"),
                    _fmt(lat, "ms"),
                    _fmt(entry["speedup"], "x"),
                ]
            )
        headers = [
            "id",
            "run",
            "status",
            "final step",
            "accuracy",
            "ΔP vs base",
            "nonzero params",
            "zipped MB",
            "MACs",
            "latency ms",
            "speedup",
        ]
        note = (
            "\n\nΔP = baseline − final accuracy on the same test split (positive: accuracy lost). Speedup is "
            "measured latency vs the run's own baseline (same process, not interleaved; small models are noisy)."
        )
        return _table(headers, rows) + note, out

    return _with_store(store, go)


def runs_delete(
    run_id: str | list[str], *, store: RunStore | str | Path | None = None
) -> tuple[str, dict[str, Any]]:
    """`modelscale runs delete ID...`: remove runs' records from the store (their files are kept).

    Every id (or unique prefix) is resolved before anything is deleted, so one unknown id deletes none."""
    ids = [run_id] if isinstance(run_id, str) else list(run_id)

    def go(db: RunStore) -> tuple[str, dict[str, Any]]:
        runs = [db.run(rid) for rid in ids]
        lines, deleted = [], []
        for run in {r["id"]: r for r in runs}.values():
            db.delete_run(run["id"])
            folder = Path(run["run_dir"]) / run["variant"]
            lines.append(
                f"deleted run {run['id']} ({run['recipe']} {run['label']}) from {db.location}; "
                f"its files in {folder} were kept"
            )
            deleted.append({"deleted": run["id"], "folder": str(folder)})
        return "\n".join(lines), deleted[0] if isinstance(run_id, str) else {"deleted": deleted}

    return _with_store(store, go)
