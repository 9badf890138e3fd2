"""Report sections built from the run store's numbers: overview, Pareto plots, per-step waterfalls,
speedups and per-layer records. Each appends blocks (see `html.py`) and plots to a `Doc`.

Example::

    doc = Doc(Path("reports/x"))
    overview(doc, runs, "runs/modelscale.db"); frontier(doc, variant_points(runs))
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from modelscale.analysis.pareto import pareto_front
from modelscale.core.errors import ModelscaleError
from modelscale.report.run_data import ACCURACY, MACS, NONZERO, PARAMS, SERIALIZED, ZIPPED, RunView
from modelscale.report.tables import DASH, human, millis, percent, signed, times

MAX_LAYERS = 60  # rows of a per-layer plot
PREFERRED_KEYS = ("sparsity", "rank", "bits", "compression", "energy_kept")
FRACTION_KEYS = ("sparsity", "energy_kept", "rank_fraction")
STAR = "★"
PARETO_AXES = (
    ("nonzero_params", "non-zero parameters"),
    ("zipped_bytes", "zipped size"),
    ("latency_trusted_ms", "latency"),  # unstable latency figures are left off the latency front
)


class Doc:
    """The document being built, the plots written so far, and caches of loaded models and data."""

    def __init__(self, out: Path) -> None:
        self.out, self.blocks, self.plots, self.notes = out, [], [], []
        self.models: dict[str, Any] = {}
        self.data: dict[str, Any] = {}

    def add(self, *block: Any) -> None:
        self.blocks.append(block)

    def plot(self, fn: Any, name: str, caption: str, *args: Any) -> None:
        try:
            path = fn(*args, self.out / name)
        except ModelscaleError:
            raise
        except Exception as exc:  # noqa: BLE001 - one plot that fails to draw must not lose the report
            self.notes.append(f"plot {name} could not be drawn: {type(exc).__name__}: {exc}")
            return
        self.plots.append(path)
        self.add("img", path, caption)

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower() or "x"


def mb(value: float | None) -> str:
    return DASH if value is None else f"{value / 1e6:.3f}"


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


# --- sections from the store's numbers ---------------------------------------------------------------


def overview(doc: Doc, runs: list[RunView], location: str) -> None:
    recipes = sorted({r.recipe for r in runs})
    settings = sorted({r.setting() for r in runs})
    doc.add(
        "p",
        f"{len(runs)} run(s) of {', '.join(f'`{x}`' for x in recipes)} from the run store `{location}`. "
        f"Measured on {'; '.join(settings)}. Accuracy is on each run's held-out test split; "
        "ΔP = baseline − variant accuracy (positive: accuracy lost).",
    )
    rows = []
    for r in runs:
        data = r.config.get("data", {})
        done = sum(s.status == "completed" for s in r.steps)
        total = len(r.config.get("steps", [])) + 1
        rows.append(
            [
                f"`{r.id}`",
                r.recipe,
                r.label,
                r.status,
                f"{done}/{total}",
                _model_label(r.config.get("model", {})),
                f"{data.get('source', '?')} (seed {data.get('seed', '?')})",
            ]
        )
        if r.error:
            doc.note(f"run {r.id} ({r.label}) failed: {r.error}")
    doc.add("table", ["Run", "Recipe", "Variant", "Status", "Steps done", "Model", "Data"], rows)


def frontier(doc: Doc, points: list[dict[str, Any]]) -> None:
    from modelscale.report import plots

    doc.add("h2", "Accuracy vs size and latency")
    if not points:
        doc.add("p", "No run has a measured step yet; nothing to plot.")
        return
    for key, _ in PARETO_AXES:
        front = set(pareto_front(points, maximize="accuracy", minimize=key))
        for i, p in enumerate(points):
            p[f"pareto_{key}"] = i in front
    batches = sorted({p["latency_batch"] for p in points if p["latency_batch"] is not None})
    lat_head = f"Latency ms (batch {', '.join(map(str, batches))})" if batches else "Latency ms"
    rows = [
        [
            p["label"],
            p["step"],
            percent(p["accuracy"]),
            signed(p["delta_accuracy"], "rate") if not p["baseline"] else DASH,
            human(p["nonzero_params"]),
            mb(p["zipped_bytes"]),
            human(p["macs"]),
            millis(p["latency_ms"]) + (" ⚠ unstable" if p.get("latency_unstable") else ""),
            *[STAR if p[f"pareto_{k}"] else "" for k, _ in PARETO_AXES],
        ]
        for p in points
    ]
    headers = ["Model", "Step", "Accuracy", "ΔP", "Non-zero params", "Zipped MB", "MACs", lat_head]
    doc.add("table", headers + [f"Pareto: {name}" for _, name in PARETO_AXES], rows)
    doc.add(
        "p",
        f"{STAR} marks the **Pareto front**: no other model is at least as accurate and at least as small "
        "(or fast), and strictly better in one. Points: the final measured step of each variant; grey "
        "squares are baselines. A latency marked ⚠ unstable (its paired ratio's interval was wide, its "
        "p90 far above its median, or the machine was loaded beyond its cores) gets no latency ★ and is "
        "left off the latency plot.",
    )
    size_panels = [
        ("nonzero_params", "non-zero parameters (count)", 1.0),
        ("zipped_bytes", "zipped size (MB)", 1e-6),
    ]
    doc.plot(
        plots.pareto_plot,
        "accuracy_vs_size.png",
        "Test accuracy vs non-zero parameters and zipped bytes; ★ and the dashed staircase: Pareto front.",
        points,
        size_panels,
        "Accuracy vs size",
    )
    lat_label = f"median latency (ms, batch {batches[0]})" if len(batches) == 1 else "median latency (ms)"
    doc.plot(
        plots.pareto_plot,
        "accuracy_vs_latency.png",
        "Test accuracy vs measured median latency; ★ and the dashed staircase: Pareto front.",
        points,
        [("latency_trusted_ms", lat_label, 1.0)],
        "Accuracy vs measured latency",
    )


def step_rows(run: RunView) -> list[dict[str, Any]]:
    base = run.baseline
    out = []
    for s in run.steps:
        if not s.measured:
            continue
        m = s.metrics
        out.append(
            {
                "idx": s.idx,
                "name": f"{s.idx}-{s.name}",
                "title": s.title,
                "params": m.get(PARAMS),
                "nonzero": m.get(NONZERO),
                "macs": m.get(MACS),
                "serialized": m.get(SERIALIZED),
                "zipped": m.get(ZIPPED),
                "latency": dict(s.latency),
                "accuracy": m.get(ACCURACY),
                "loss": m.get("quality.loss"),
                "delta": (base.metrics.get(ACCURACY) - m[ACCURACY])
                if base and ACCURACY in m and ACCURACY in base.metrics
                else None,
            }
        )
    return out


def waterfalls(doc: Doc, runs: list[RunView]) -> None:
    from modelscale.report import plots

    doc.add("h2", "Step by step")
    for r in runs:
        steps = step_rows(r)
        doc.add("h3", f"{r.label} (`{r.id}`)")
        if not steps:
            doc.add("p", "No measured step.")
            continue
        sizes = r.batch_sizes
        headers = ["Step", "Accuracy", "ΔP", "Params", "Non-zero", "MACs", "torch.save MB", "Zipped MB"]
        headers += [f"Latency ms (batch {b})" for b in sizes]
        rows = [
            [
                f"{s['idx']}-{s['title']}",
                percent(s["accuracy"]),
                signed(s["delta"], "rate"),
                human(s["params"]),
                human(s["nonzero"]),
                human(s["macs"]),
                mb(s["serialized"]),
                mb(s["zipped"]),
                *[millis(s["latency"].get(b)) for b in sizes],
            ]
            for s in steps
        ]
        doc.add("table", headers, rows)
        doc.plot(
            plots.waterfall_plot,
            f"steps_{r.id}.png",
            f"{r.label}: every measure after each step.",
            r.label,
            steps,
        )
        for s in r.steps:
            if s.status == "failed":
                doc.note(f"{r.label}: step {s.idx} ({s.name}) failed")


def speedups(doc: Doc, runs: list[RunView]) -> None:
    from modelscale.report import plots

    doc.add("h2", "Theoretical vs measured speedup")
    groups, rows = [], []
    sizes = sorted({b for r in runs for b in r.batch_sizes})
    for r in runs:
        base = r.baseline
        if base is None:
            continue
        for s in r.steps:
            if not s.measured or s.idx == 0:
                continue
            theory = ratio(base.metrics.get(MACS), s.metrics.get(MACS))
            measured = dict(s.paired) or {b: ratio(base.latency.get(b), s.latency.get(b)) for b in s.latency}
            label = f"{r.label}\n{s.name}" if len(runs) > 1 else s.name
            groups.append({"label": label, "theoretical": theory, "measured": measured})
            cells = [times(measured.get(b)) + (" ⚠ unstable" if b in s.unstable else "") for b in sizes]
            rows.append([r.label, s.title, times(theory), *cells])
    if not groups:
        doc.add("p", "No measured step after a baseline.")
        return
    headers = ["Variant", "Step", "Theoretical (MACs base / step)"]
    doc.add("table", headers + [f"Measured, batch {b} (latency base / step)" for b in sizes], rows)
    doc.add(
        "p",
        "Both ratios are against the run's own baseline; above 1× is faster. MACs count the zeros of "
        "masked (unstructured-pruned) weights, since dense kernels multiply them too, so pruning alone "
        "shows 1.00× in theory. The measured ratio is timed paired and interleaved against the run's "
        "baseline model in one process, after each step (older runs without that pairing show the ratio "
        "of medians measured in turn): the median of per-pair ratios, repeated until its 95% interval is "
        "narrow or the time budget is spent. ⚠ unstable marks a ratio that cannot be read as a speedup "
        "(wide interval, p90 far above the median, or a machine loaded beyond its cores); tiny models are "
        "dominated by per-call overhead.",
    )
    doc.plot(
        plots.speedup_plot, "speedup.png", "MACs ratio next to the measured latency ratio, per step.", groups
    )


def _layer_groups(runs: list[RunView], doc: Doc) -> dict[tuple[str, str], dict[str, list[dict[str, Any]]]]:
    from modelscale.report.record_views import derived_fields, step_record

    groups: dict[tuple[str, str], dict[str, list[dict[str, Any]]]] = {}
    for r in runs:
        for s in r.steps:
            if s.kind != "technique" or s.status != "completed" or not s.technique:
                continue
            if s.folder is None:
                doc.note(
                    f"{r.label}: step {s.idx} ({s.name}) has no checkpoint folder; per-layer rows not shown"
                )
                continue
            record = step_record(s.folder, s.technique)
            if record and record.get("layers"):
                rows = [{**row, **derived_fields(row)} for row in record["layers"]]
                groups.setdefault((s.name, s.technique), {})[r.label] = rows
    return groups


def _fmt_field(key: str, value: Any) -> str:
    if value is None:
        return DASH
    if key in FRACTION_KEYS:
        return percent(value)
    if key == "compression":
        return times(value)
    if isinstance(value, float) and not value.is_integer():
        return f"{value:.4g}"
    return human(value) if isinstance(value, int | float) else str(value)


def layers(doc: Doc, runs: list[RunView]) -> None:
    from modelscale.report import plots
    from modelscale.report.record_views import numeric_keys

    doc.add("h2", "Per-layer changes")
    groups = _layer_groups(runs, doc)
    if not groups:
        doc.add("p", "No technique step recorded per-layer changes.")
        return
    for (step, technique), by_run in groups.items():
        doc.add("h3", f"Step `{step}` ({technique})")
        names: list[str] = []
        shapes: dict[str, str] = {}
        for rows in by_run.values():
            for row in rows:
                if row["name"] not in names:
                    names.append(row["name"])
                if isinstance(row.get("shape"), list):
                    shapes.setdefault(row["name"], "×".join(map(str, row["shape"])))
        keys = numeric_keys([row for rows in by_run.values() for row in rows])
        plot_key = next((k for k in PREFERRED_KEYS if k in keys), keys[0] if keys else None)
        shown = keys if len(by_run) == 1 else [k for k in keys if k == plot_key or k in PREFERRED_KEYS][:2]
        lookup = {lab: {row["name"]: row for row in rows} for lab, rows in by_run.items()}
        labels = list(by_run)
        headers = ["Layer", "Shape"] + [
            k if len(labels) == 1 else f"{k} ({lab})" for k in shown for lab in labels
        ]
        table_rows = [
            [f"`{n}`", shapes.get(n, DASH)]
            + [_fmt_field(k, lookup[lab].get(n, {}).get(k)) for k in shown for lab in labels]
            for n in names
        ]
        text_keys = sorted(
            {
                k
                for rows in by_run.values()
                for row in rows
                for k, v in row.items()
                if isinstance(v, str) and k != "name"
            }
        )
        if len(labels) == 1 and text_keys:
            headers += text_keys
            for row, n in zip(table_rows, names):
                row += [str(lookup[labels[0]].get(n, {}).get(k, DASH)) for k in text_keys]
        doc.add("table", headers, table_rows)
        if plot_key is None:
            continue
        frac = plot_key in FRACTION_KEYS
        shown_names = names[:MAX_LAYERS]
        if len(names) > MAX_LAYERS:
            doc.note(f"per-layer plot of {step}: first {MAX_LAYERS} of {len(names)} layers shown")
        series = {
            lab: [
                (100 * v if frac else v)
                if isinstance(v := lookup[lab].get(n, {}).get(plot_key), int | float)
                else None
                for n in shown_names
            ]
            for lab in labels
        }
        unit = {"sparsity": "sparsity (% zero weights)", "rank": "kept rank", "bits": "bits per weight"}.get(
            plot_key, f"{plot_key} (%)" if frac else plot_key
        )
        if plot_key == "compression":
            unit = "compression (float32 bytes / stored bytes, ×)"
        doc.plot(
            plots.layer_plot,
            f"layers_{slug(step)}_{slug(plot_key)}.png",
            f"Per-layer {plot_key} after step `{step}` ({technique}).",
            f"{technique}: {plot_key} per layer",
            unit,
            shown_names,
            series,
        )


def _model_label(model: dict) -> str:
    """The recipe's model: a zoo name, or the last folder name of a loaded model."""
    if model.get("name"):
        return str(model["name"])
    if model.get("load"):
        return "loaded: " + str(model["load"]).rstrip("/").split("/")[-1]
    return "?"
