"""Render measurement reports as Markdown tables (for report.md) or aligned text (for terminals).

Every row names its unit. Counts use SI prefixes (1.23 M, 4.09 G); sizes are MB (10^6 bytes);
latencies are milliseconds. A comparison puts the theoretical speedup (MACs ratio) next to the
measured one (latency ratio), and quality changes as Δ = base − other.

Example::

    from modelscale.report import compare_markdown, profile_text
    print(profile_text(report))
    Path("report.md").write_text(compare_markdown(cmp))
"""

from __future__ import annotations

from typing import Any

from modelscale.core.formatting import (  # noqa: F401 - re-exported for the report's users
    DASH,
    human,
    megabytes,
    millis,
    number,
    percent,
    signed,
    table,
    times,
)

# --- one model ----------------------------------------------------------------------------------------


def _size_rows(reports: list[Any]) -> list[tuple[str, list[str], list[Any]]]:
    """(label, cells per report, raw values per report) for the size/speed measures."""

    def row(label: str, get: Any, fmt: Any) -> tuple[str, list[str], list[Any]]:
        values = [get(r) for r in reports]
        return label, [fmt(v) for v in values], values

    def lat(field: str) -> Any:
        return lambda r: getattr(r.latency, field) if r.latency else None

    rows = [
        row("Parameters", lambda r: r.params.total, human),
        row("Non-zero parameters", lambda r: r.params.nonzero, human),
        row("Non-embedding parameters", lambda r: r.params.non_embedding, human),
        row("Sparsity (zero params)", lambda r: r.params.sparsity, percent),
        row("MACs (multiply-accumulates / forward)", lambda r: r.macs.macs, human),
        row("FLOPs (= 2 × MACs)", lambda r: r.macs.flops, human),
        row("Weights file, model.safetensors (MB)", lambda r: r.size.file_bytes, megabytes),
        row("Weights file zipped, deflate level 9 (MB)", lambda r: r.size.zipped_bytes, megabytes),
        row("Estimate: torch.save, effective weights (MB)", lambda r: r.size.serialized_bytes, megabytes),
        row("Estimate: safetensors, dense effective (MB)", lambda r: r.size.safetensors_bytes, megabytes),
    ]
    if any(r.latency for r in reports):
        rows += [
            row("Latency median (ms)", lat("median_ms"), millis),
            row("Latency p90 (ms)", lat("p90_ms"), millis),
            row("Throughput (items/s)", lat("throughput"), human),
        ]
    if any(r.memory for r in reports):
        rows.append(
            row("Peak forward memory (MB)", lambda r: r.memory.peak_bytes if r.memory else None, megabytes)
        )
    return rows


_QUALITY = (
    ("Accuracy", "accuracy", percent, "rate"),
    ("Top-5 accuracy", "top5", percent, "rate"),
    ("Loss (cross-entropy, nats)", "loss", number, "value"),
    ("ECE (15 bins)", "ece", number, "value"),
    ("Bits per byte", "bits_per_byte", number, "value"),
)


def _quality_rows(reports: list[Any]) -> list[tuple[str, str, list[str], list[Any]]]:
    rows = []
    for label, key, fmt, kind in _QUALITY:
        values = [getattr(r.quality, key) if r.quality else None for r in reports]
        if all(v is None for v in values):
            continue
        if key == "top5" and reports[0].quality and reports[0].quality.topk != 5:
            label = f"Top-{reports[0].quality.topk} accuracy"
        rows.append((label, kind, [fmt(v) for v in values], values))
    return rows


def _setup_line(report: Any) -> str:
    shapes = ", ".join("×".join(map(str, s)) for s in report.input_shapes) or "no tensor inputs"
    parts = [
        f"device {report.device}",
        f"dtype {report.dtype}",
        f"batch {report.batch_size}",
        f"inputs {shapes}",
    ]
    if report.latency:
        lat = report.latency
        parts.append(
            f"{lat.threads} thread(s), {lat.repeats} repeats after {lat.warmup} warm-up ({lat.timer})"
        )
    if report.memory:
        parts.append(f"memory by {report.memory.method}")
    if report.quality:
        parts.append(f"quality on {report.quality.examples} examples ({report.quality.task})")
    return "; ".join(parts)


def _layer_table(report: Any, top: int, markdown: bool) -> str:
    layers = sorted(report.macs.layers, key=lambda r: -r.macs)[:top]
    total = max(report.macs.macs, 1)
    rows = [
        [f"`{r.name}`" if markdown else r.name, r.type, human(r.macs), percent(r.macs / total)]
        for r in layers
    ]
    return table(["Layer", "Type", "MACs", "Share"], rows, markdown=markdown)


def _profile(report: Any, *, markdown: bool, top_layers: int) -> str:
    rows = [[label, *cells] for label, cells, _ in _size_rows([report])]
    rows += [[label, *cells] for label, _, cells, _ in _quality_rows([report])]
    head = f"## Profile: {report.model}" if markdown else f"Profile: {report.model}"
    parts = [head, "", _setup_line(report), "", table(["Measure", "Value"], rows, markdown=markdown)]
    if report.macs.layers and top_layers > 0:
        title = f"Largest layers by MACs (top {min(top_layers, len(report.macs.layers))})"
        parts += ["", f"### {title}" if markdown else title, "", _layer_table(report, top_layers, markdown)]
    if report.notes:
        parts += ["", *[f"- {n}" for n in report.notes]]
    return "\n".join(parts) + "\n"


def profile_markdown(report: Any, *, top_layers: int = 10) -> str:
    """A Markdown section for one `ProfileReport`: measures with units, then the largest layers."""
    return _profile(report, markdown=True, top_layers=top_layers)


def profile_text(report: Any, *, top_layers: int = 10) -> str:
    """The same content as `profile_markdown`, as aligned plain text for a terminal."""
    return _profile(report, markdown=False, top_layers=top_layers)


# --- two models ---------------------------------------------------------------------------------------


_NO_RATIO = ("Sparsity", "Throughput")  # a ratio of these would read backwards


def _ratio_cell(values: list[Any]) -> str:
    a, b = values
    if a is None or b is None or not isinstance(a, int | float) or not b:
        return DASH
    return times(a / b)


def _compare(cmp: Any, *, markdown: bool) -> str:
    base, other = cmp.base, cmp.other
    names = (f"Base ({base.model})", f"Other ({other.model})")
    size_rows = [
        [label, *cells, DASH if label.startswith(_NO_RATIO) else _ratio_cell(values)]
        for label, cells, values in _size_rows([base, other])
    ]
    title = "## Comparison: base vs other" if markdown else "Comparison: base vs other"
    parts = [title, "", f"Base: {_setup_line(base)}", "", f"Other: {_setup_line(other)}", ""]
    parts.append(table(["Measure", *names, "Base / Other"], size_rows, markdown=markdown))
    parts += ["", "Base / Other above 1× means other is smaller (or, for latency, faster)."]
    parts.append(_size_source(base, other))

    speed = [[times(cmp.theoretical_speedup), _measured_cell(cmp)]]
    sub = "### Speedup: theory next to measurement" if markdown else "Speedup: theory next to measurement"
    headers = [
        "Theoretical (MACs base / other)",
        "Measured (median of paired latency ratios base / other, 95% CI)",
    ]
    speed_table = table(headers, speed, markdown=markdown)
    parts += ["", sub, "", speed_table]

    quality = _quality_rows([base, other])
    if quality:
        q_rows = [
            [label, *cells, signed(cmp.deltas.get(_key(label)), kind)] for label, kind, cells, _ in quality
        ]
        sub = "### Quality (Δ = base − other; positive accuracy Δ is a drop)"
        parts += ["", sub if markdown else sub[4:], ""]
        parts.append(table(["Metric", *names, "Δ"], q_rows, markdown=markdown))
        agree = []
        if cmp.agreement is not None:
            agree.append(f"identical predictions: {percent(cmp.agreement)}")
        if cmp.cka is not None:
            layer = cmp.cka_layer if cmp.cka_layer == "(outputs)" else f"layer `{cmp.cka_layer}`"
            agree.append(
                f"linear CKA of {layer if markdown else layer.replace('`', '')}: {number(cmp.cka, 4)}"
            )
        if agree:
            parts += ["", "Agreement — " + "; ".join(agree)]
    if cmp.notes:
        parts += ["", *[f"- {n}" for n in cmp.notes]]
    return "\n".join(parts) + "\n"


def _measured_cell(cmp: Any) -> str:
    """The measured ratio with its interval and what may be read from it."""
    stats = getattr(cmp, "latency_stats", None)
    if cmp.measured_speedup is None or stats is None:
        return times(cmp.measured_speedup)
    cell = f"{times(stats.ratio)} [{stats.ci_low:.2f}–{stats.ci_high:.2f}]"
    if stats.unstable:
        return cell + " UNSTABLE"
    if stats.verdict == "no clear difference":
        return cell + " (no clear difference)"
    return cell + (" faster" if stats.verdict == "faster" else " slower")


def _size_source(*reports: Any) -> str:
    """Where the file sizes come from: a file on disk, or the same writer run in memory."""
    parts = []
    for name, r in zip(("base", "other"), reports, strict=False):
        where = getattr(r.size, "measured_on", "memory")
        storage = getattr(r.size, "storage", "dense")
        if where == "memory":
            parts.append(f"{name}: the {storage} weights file a save writes, serialized in memory")
        else:
            parts.append(f"{name}: {where} on disk ({storage})")
    return "Weights file sizes — " + "; ".join(parts) + ". Estimates are labelled as such."


def _key(label: str) -> str:
    for lab, key, _, _ in _QUALITY:
        if lab == label:
            return key
    return "top5" if label.startswith("Top-") else label


def compare_markdown(cmp: Any) -> str:
    """A Markdown before/after section for a `Comparison`: sizes, speedups side by side, quality Δ."""
    return _compare(cmp, markdown=True)


def compare_text(cmp: Any) -> str:
    """The same content as `compare_markdown`, as aligned plain text for a terminal."""
    return _compare(cmp, markdown=False)
