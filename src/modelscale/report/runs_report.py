"""`build_report`: one readable report (report.md with PNG plots beside it, and one self-contained
report.html) for one or many runs of the run store.

What it shows, read from the store (runs, steps, metrics, configs) and the saved step models:

- accuracy vs size (non-zero parameters, zipped bytes) and vs measured latency: each variant's final
  step a labelled point, each distinct baseline a grey square, the Pareto front starred (★);
- a per-step waterfall for each run (params, MACs, bytes, latency, accuracy, loss): table + plot;
- theoretical (MACs ratio) next to measured (latency ratio) speedup for every step;
- per-layer sparsity / rank / bit-width / byte ratio from each technique step's ChangeRecord;
- weight histograms of the baseline vs the final model, first-conv feature maps for image CNNs;
- agreement with the original model and linear CKA per top-level block on the test split.

Example::

    md, page = build_report(["05eba6099ac4", "cfd4626d5b3c"], store="runs/modelscale.db",
                            out_dir="reports/digits")
    text, data = report_command(["05eba6099ac4"])        # what `modelscale report RUN...` prints
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelscale.core.errors import ModelscaleError
from modelscale.report.model_sections import activations, model_pairs, similarity_section, weights
from modelscale.report.run_data import RunView, collect_runs, variant_points
from modelscale.report.sections import (
    PARETO_AXES,
    Doc,
    frontier,
    layers,
    mb,
    overview,
    slug,
    speedups,
    waterfalls,
)
from modelscale.report.tables import human, millis, percent


@dataclass
class ReportResult:
    markdown: Path
    html: Path
    plots: list[Path]
    runs: list[RunView]
    points: list[dict[str, Any]]
    notes: list[str] = field(default_factory=list)


def _build(run_ids: list[str] | str, *, store: Any, out_dir: str | Path, title: str | None) -> ReportResult:
    from modelscale.core.io import write_text
    from modelscale.pipeline.store import RunStore, open_store
    from modelscale.report.html import to_html, to_markdown

    own = not isinstance(store, RunStore)
    db = open_store(store, create=False)  # a report reads the store; it never creates one
    try:
        runs = collect_runs(run_ids, db)
        location = db.location
    finally:
        if own:
            db.close()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    recipes = sorted({r.recipe for r in runs})
    title = title or f"modelscale report: {', '.join(recipes)}"
    doc = Doc(out)
    doc.add("h1", title)
    overview(doc, runs, location)
    points = variant_points(runs)
    frontier(doc, points)
    waterfalls(doc, runs)
    speedups(doc, runs)
    layers(doc, runs)
    pairs = model_pairs(doc, runs)
    weights(doc, pairs)
    activations(doc, pairs)
    similarity_section(doc, pairs)
    for r in runs:  # technique caveats, and what the measurement of each final model says
        for s in r.steps:
            for n in s.summary.get("notes", []):
                doc.note(f"{s.name} ({s.technique or s.kind}): {n}")
        if r.final is not None:
            for n in r.final.summary.get("measure_notes", []):
                doc.note(f"{r.label}, {r.final.idx}-{r.final.name}: {n}")
    if doc.notes:
        doc.add("h2", "Notes")
        doc.add("list", doc.notes)
    meta = f"generated {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')} by modelscale; runs " + ", ".join(
        f"`{r.id}`" for r in runs
    )
    md = write_text(out / "report.md", to_markdown(doc.blocks, base=out, meta=meta))
    page = write_text(out / "report.html", to_html(doc.blocks, title, meta=meta))
    return ReportResult(md, page, doc.plots, runs, points, doc.notes)


def build_report(
    run_ids: list[str] | str, *, store: Any, out_dir: str | Path, title: str | None = None
) -> tuple[Path, Path]:
    """Write `report.md` (PNG plots beside it) and a self-contained `report.html` into `out_dir` for the
    given runs of `store` (a RunStore, a path or an SQLAlchemy URL); returns (markdown_path, html_path).
    Raises ModelscaleError for an unknown run id or an empty list."""
    result = _build(run_ids, store=store, out_dir=out_dir, title=title)
    return result.markdown, result.html


def default_out(run_ids: list[str]) -> Path:
    head = "-".join(run_ids[:3]) + (f"-and-{len(run_ids) - 3}-more" if len(run_ids) > 3 else "")
    return Path("reports") / slug(head)


def report_command(
    run_ids: list[str] | str, *, store: Any = None, out: str | Path | None = None
) -> tuple[str, dict[str, Any]]:
    """`modelscale report RUN...`: build the report (default folder `reports/<run ids>`); returns the
    summary text for the terminal and JSON-safe data (paths, plots, points with their Pareto flags)."""
    from modelscale.report.tables import table

    ids = [run_ids] if isinstance(run_ids, str) else list(run_ids)
    if not ids:
        raise ModelscaleError("give at least one run id to report on; see `modelscale runs list`")
    result = _build(ids, store=store, out_dir=out if out is not None else default_out(ids), title=None)
    rows = [
        [
            p["label"],
            percent(p["accuracy"]),
            human(p["nonzero_params"]),
            mb(p["zipped_bytes"]),
            millis(p["latency_ms"]),
            " ".join(name for key, name in PARETO_AXES if p.get(f"pareto_{key}")) or "",
        ]
        for p in result.points
    ]
    headers = ["model", "accuracy", "non-zero", "zipped MB", "latency ms", "Pareto front on"]
    summary = table(headers, rows, markdown=False) if rows else "no measured step in these runs yet"
    text = (
        f"report for {len(result.runs)} run(s): {result.markdown}\n"
        f"self-contained page: {result.html} (open in a browser; {len(result.plots)} plots embedded)\n\n"
        + summary
    )
    data = {
        "markdown": str(result.markdown),
        "html": str(result.html),
        "plots": [str(p) for p in result.plots],
        "runs": [r.id for r in result.runs],
        "points": result.points,
        "notes": result.notes,
    }
    return text, data
