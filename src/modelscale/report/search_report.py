"""The search's outputs as a report a person reads: the Pareto set with each point's recipe, its
validation and test figures, which constraints bind, theory (params, MACs) next to measurement (file
bytes, paired latency), and the accuracy-vs-bytes (and -latency) plot of every trial with the front.

Example::

    from modelscale.report.search_report import search_report
    md, html = search_report(result, out_dir="runs/search")     # result: SearchResult or pareto.json data
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from modelscale.core.formatting import DASH, human, percent, times
from modelscale.report.html import to_html, to_markdown
from modelscale.report.sections import Doc


def _points(result: dict[str, Any]) -> list[dict[str, Any]]:
    base = result["baseline"]
    pareto = {p["number"] for p in result["pareto"]}
    points = [
        {
            "label": "baseline",
            "baseline": True,
            "accuracy": base.get("accuracy"),
            "bytes": base.get("bytes"),
            "latency_ms": base.get("latency_p50_b1"),
        }
    ]
    for p in result.get("points", []):
        if not p.get("feasible"):
            continue
        points.append(
            {
                "label": f"trial {p['number']}" + (" (front)" if p["number"] in pareto else ""),
                "baseline": False,
                "accuracy": p.get("accuracy"),
                "bytes": p.get("bytes"),
                "latency_ms": p.get("latency_p50_b1"),
            }
        )
    return points


def search_report(
    result: Any, out_dir: str | Path | None = None, *, title: str | None = None
) -> tuple[Path, Path]:
    """Write `report.md` and a self-contained `report.html` for a search into `out_dir`."""
    from modelscale.core.io import write_text
    from modelscale.report import plots

    data = result.to_dict() if hasattr(result, "to_dict") else dict(result)
    out = Path(out_dir or data["out_dir"])
    doc = Doc(out)
    names = [o["metric"] for o in data["objectives"]]
    base = data["baseline"]
    doc.add("h1", title or f"Recipe search `{data['study']}`")
    doc.add(
        "p",
        f"{data['trials']} trial(s), {data['feasible']} feasible, {len(data['pareto'])} on the Pareto front of "
        f"{', '.join(names)}. Constraints: {', '.join(data['constraints']) or 'none'}. Baseline: validation "
        f"accuracy {percent(base.get('accuracy'))}, {human(base.get('bytes'))} B on disk, "
        f"{human(base.get('params'))} parameters, {human(base.get('macs'))} MACs.",
    )
    headers = ["Trial", "Recipe", "Val accuracy", "Test accuracy", "Bytes (file)", "× smaller", "Params",
               "MACs ratio", "Speedup b1 (paired)", "Binding"]  # fmt: skip
    rows = []
    for p in data["pareto"]:
        m = p["metrics"]
        macs = base.get("macs") / m["macs"] if base.get("macs") and m.get("macs") else None
        size = base["bytes"] / m["bytes"] if m.get("bytes") else None
        rows.append(
            [
                str(p["number"]),
                p["label"],
                percent(m.get("accuracy")),
                percent(p.get("test", {}).get("accuracy")),
                human(m.get("bytes")),
                times(size),
                human(m.get("params")),
                times(macs),
                times(m.get("speedup_b1")) if m.get("speedup_b1") is not None else DASH,
                ", ".join(p.get("binding_constraints", [])) or DASH,
            ]
        )
    doc.add("h2", "Pareto set")
    if rows:
        doc.add("table", headers, rows)
        doc.add(
            "p",
            "Recipes: "
            + "; ".join(f"trial {p['number']} → `{Path(p['recipe_file']).name}`" for p in data["pareto"])
            + " (each runs as is with `modelscale run`). Validation accuracy is what the search saw; test "
            "accuracy was measured once, after the search. The MACs ratio is theoretical; the speedup is a "
            "paired, interleaved measurement against the baseline (an unstable pair counts as none).",
        )
    else:
        doc.add("p", "No trial met every constraint.")
    points = _points(data)
    panels = [("bytes", "bytes on disk", 1.0)]
    if any(p.get("latency_ms") for p in points):
        panels.append(("latency_ms", "median latency b1 (ms)", 1.0))
    doc.add("h2", "Every feasible trial")

    def front(points: Any, panels: Any, title: str, path: Path) -> Path:
        return plots.pareto_plot(points, panels, title, path, ylabel="validation accuracy (%)")

    doc.plot(front, "search_front.png", "Validation accuracy vs bytes on disk (and latency): "
             "★ and the dashed staircase are the front.", points, panels, "Search")  # fmt: skip
    doc.add("list", data.get("notes", []) + doc.notes)
    md = to_markdown(doc.blocks, base=out)
    html_text = to_html(doc.blocks, title or f"search {data['study']}")
    md_path, html_path = out / "report.md", out / "report.html"
    write_text(md_path, md)
    write_text(html_path, html_text)
    return md_path, html_path
