"""What a report needs from the run store, gathered once: runs, their steps and each step's numbers.

Every run has one measurement setting that the report reads (its first device and dtype, as the
runner ordered them); latency is kept for each batch size that was timed, every other number is taken
at the smallest batch size. A step's checkpoint folder is the one the runner recorded (or the folder
of its `model.safetensors` artifact); it may be gone if files were deleted by hand.

Example::

    with RunStore("runs/modelscale.db") as db:
        runs = collect_runs(["05eba6099ac4"], db)
        print(runs[0].final.metrics["quality.accuracy"], runs[0].final.latency)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelscale.core.errors import ModelscaleError

ACCURACY = "quality.accuracy"
PARAMS = "params.total"
NONZERO = "params.nonzero"
ZIPPED = "size.zipped_bytes"
SERIALIZED = "size.serialized_bytes"
MACS = "macs.macs"
LATENCY = "latency.median_ms"
PAIRED = "latency.speedup_vs_baseline"  # baseline / step latency, timed interleaved in one process
P90_LIMIT = 1.5  # p90 / median above this: the latency figure is flagged unstable (measure.paired_stats)


@dataclass
class StepView:
    idx: int
    name: str
    kind: str  # baseline | technique | finetune | distill | export
    technique: str | None  # the technique's type for technique steps
    status: str
    folder: Path | None  # checkpoint folder (model.safetensors + modelscale.json), None if unknown/missing
    metrics: dict[str, float] = field(default_factory=dict)  # at the run's setting, smallest batch size
    latency: dict[int, float] = field(default_factory=dict)  # batch size -> median latency (ms)
    summary: dict[str, Any] = field(default_factory=dict)
    paired: dict[int, float] = field(default_factory=dict)  # batch size -> paired speedup vs the baseline
    unstable: set[int] = field(default_factory=set)  # batch sizes whose paired ratio is flagged unstable

    @property
    def source(self) -> str | None:
        """Where this step's model came from: the folder a baseline loaded, else its own checkpoint."""
        loaded = self.summary.get("loaded")
        if loaded:
            return str(Path(loaded).resolve())
        return str(self.folder.resolve()) if self.folder is not None else None

    @property
    def title(self) -> str:
        what = self.technique if self.kind == "technique" else self.kind
        return self.name if what == self.name else f"{self.name} ({what})"

    @property
    def measured(self) -> bool:
        return self.status == "completed" and bool(self.metrics)


@dataclass
class RunView:
    id: str
    recipe: str
    label: str  # the variant label, made unique among the runs of one report
    status: str
    error: str | None
    config: dict[str, Any]
    device: str | None
    dtype: str | None
    steps: list[StepView] = field(default_factory=list)

    @property
    def baseline(self) -> StepView | None:
        return next((s for s in self.steps if s.idx == 0 and s.measured), None)

    @property
    def final(self) -> StepView | None:
        """The last completed step that measured something (export steps measure nothing new)."""
        done = [s for s in self.steps if s.measured]
        return done[-1] if done else None

    @property
    def batch_sizes(self) -> list[int]:
        return sorted({b for s in self.steps for b in s.latency})

    def setting(self) -> str:
        sizes = ", ".join(map(str, self.batch_sizes)) or "—"
        return f"{self.device or '?'} / {self.dtype or '?'}, latency at batch size {sizes}"


def _number(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _folder(step: dict[str, Any], artifacts: list[dict[str, Any]]) -> Path | None:
    candidates = [step.get("checkpoint")] + [
        str(Path(a["path"]).parent)
        for a in artifacts
        if a["step_idx"] == step["idx"] and a["kind"] == "checkpoint"
    ]
    for c in candidates:
        if c and (Path(c) / "modelscale.json").is_file():
            return Path(c)
    return None


def _step_metrics(
    rows: list[dict[str, Any]], device: str | None, dtype: str | None
) -> tuple[dict, dict, dict, set]:
    """(name -> value at the smallest batch size of the setting, batch size -> median latency,
    batch size -> paired speedup vs the baseline, batch sizes whose paired ratio is unstable)."""
    chosen: dict[str, tuple[int, float]] = {}
    latency: dict[int, float] = {}
    paired: dict[int, float] = {}
    unstable: set[int] = set()
    for row in rows:
        value = _number(row.get("value"))
        if value is None:
            continue
        tagged = row.get("device") is not None
        if tagged and (row.get("device") != device or row.get("dtype") != dtype):
            continue
        batch = int(row["batch_size"]) if row.get("batch_size") is not None else 0
        if row["name"] == LATENCY and tagged:
            latency[batch] = value
        if row["name"] == PAIRED and tagged:
            paired[batch] = value
        if row["name"] == f"{PAIRED}_unstable" and tagged and value:
            unstable.add(batch)
        have = chosen.get(row["name"])
        if have is None or batch < have[0]:
            chosen[row["name"]] = (batch, value)
    return {k: v for k, (_, v) in chosen.items()}, latency, paired, unstable


def collect_run(db: Any, run_id: str) -> RunView:
    run = db.run(run_id)  # raises ModelscaleError for an unknown id
    rows = db.metrics(run["id"])
    setting = next((r for r in rows if r["name"] == LATENCY and r.get("device")), None)
    setting = setting or next((r for r in rows if r.get("device")), None)
    device = setting["device"] if setting else None
    dtype = setting["dtype"] if setting else None
    by_step: dict[int, list[dict[str, Any]]] = {}
    for row in rows:
        by_step.setdefault(int(row["step_idx"]), []).append(row)
    artifacts = db.artifacts(run["id"])
    view = RunView(
        run["id"], run["recipe"], run["label"], run["status"], run.get("error"), run["config"], device, dtype
    )
    for s in db.steps(run["id"]):
        config = s.get("config") or {}
        technique = config.get("technique") if s["kind"] == "technique" else None
        metrics, latency, paired, unstable = _step_metrics(by_step.get(int(s["idx"]), []), device, dtype)
        if s["status"] != "completed":
            metrics, latency, paired, unstable = {}, {}, {}, set()
        summary = s.get("summary") if isinstance(s.get("summary"), dict) else {}
        view.steps.append(
            StepView(
                int(s["idx"]),
                s["name"],
                s["kind"],
                technique,
                s["status"],
                _folder(s, artifacts),
                metrics,
                latency,
                summary,
                paired,
                unstable,
            )
        )
    return view


def collect_runs(run_ids: list[str], db: Any) -> list[RunView]:
    """The runs in the order given (duplicates dropped); labels made unique (recipe, then id, added)."""
    if isinstance(run_ids, str):
        run_ids = [run_ids]
    if not run_ids:
        raise ModelscaleError("give at least one run id to report on; see `modelscale runs list`")
    runs: list[RunView] = []
    for rid in run_ids:
        view = collect_run(db, rid)
        if all(r.id != view.id for r in runs):
            runs.append(view)
    if len({r.recipe for r in runs}) > 1:
        for r in runs:
            r.label = f"{r.recipe} {r.label}"
    seen: dict[str, int] = {}
    for r in runs:
        seen[r.label] = seen.get(r.label, 0) + 1
    for r in runs:
        if seen[r.label] > 1:
            r.label = f"{r.label} [{r.id[:6]}]"
    return runs


def variant_points(runs: list[RunView]) -> list[dict[str, Any]]:
    """One point per run (its final measured step) plus each distinct baseline, for the Pareto plots.

    Runs whose baselines are the same model (one trained it, the others loaded its folder) share one
    baseline point, with the numbers of the first run listed."""
    points: list[dict[str, Any]] = []
    baselines: dict[tuple, dict[str, Any]] = {}
    keys = [_baseline_key(r) for r in runs if r.baseline is not None]
    several = len(set(keys)) > 1
    for r in runs:
        base, final = r.baseline, r.final
        if base is not None:
            key = _baseline_key(r)
            if key in baselines:
                baselines[key]["runs"].append(r.id)
            else:
                baselines[key] = _point(r, base, f"baseline ({r.recipe})" if several else "baseline", True)
        if final is not None and final is not base:
            points.append(_point(r, final, r.label, False))
    return list(baselines.values()) + points


def _baseline_key(run: RunView) -> tuple:
    base = run.baseline
    if base.source is not None:
        return ("source", base.source)
    return (run.recipe, *(base.metrics.get(k) for k in (ACCURACY, NONZERO, ZIPPED, MACS)))


def _point(run: RunView, step: StepView, label: str, is_baseline: bool) -> dict[str, Any]:
    m, base = step.metrics, run.baseline
    acc, acc0 = m.get(ACCURACY), base.metrics.get(ACCURACY) if base else None
    lat_batch = min(step.latency) if step.latency else None
    latency = step.latency.get(lat_batch) if lat_batch is not None else m.get(LATENCY)
    p90 = m.get("latency.p90_ms")
    unstable = bool(m.get(f"{PAIRED}_unstable")) or bool(latency and p90 and p90 / latency > P90_LIMIT)
    return {
        "label": label,
        "baseline": is_baseline,
        "runs": [run.id],
        "step": f"{step.idx}-{step.name}",
        "accuracy": acc,
        "delta_accuracy": acc0 - acc if acc is not None and acc0 is not None else None,
        "params": m.get(PARAMS),
        "nonzero_params": m.get(NONZERO),
        "zipped_bytes": m.get(ZIPPED),
        "macs": m.get(MACS),
        "latency_ms": latency,
        "latency_batch": lat_batch,
        "latency_unstable": unstable,
        # what a latency front may use: an unstable figure never earns a ★
        "latency_trusted_ms": None if unstable else latency,
    }
