"""PNG plots for run reports, drawn with matplotlib's object API on the Agg canvas (no pyplot, no
global backend switch), so they render headless and thread-safely. matplotlib is imported lazily.

Each function takes plain numbers (dicts / arrays, see `runs_report.py`), writes one PNG and returns
its path. Axes carry units; the Pareto front is drawn as a dashed staircase through starred points.

Example::

    pareto_plot(points, [("zipped_bytes", "zipped size (MB)", 1e-6)], "Accuracy vs size", "acc_size.png")
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from modelscale.analysis.pareto import pareto_front
from modelscale.core.errors import ModelscaleError

DPI = 110
STYLE = {
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.titleweight": "bold",
    "axes.labelsize": 9,
    "legend.fontsize": 8,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
}
PARETO_LABEL = "Pareto front (★)"


def _mpl() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise ModelscaleError(
            "plots need matplotlib: pip install 'modelscale[report]' (or pip install matplotlib)"
        ) from None
    return matplotlib


def _figure(
    width: float, height: float, nrows: int = 1, ncols: int = 1, layout: str | None = "constrained"
) -> tuple[Any, Any]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout=layout)
    FigureCanvasAgg(fig)  # attach the Agg canvas: text extents for label placement, PNG output
    return fig, fig.subplots(nrows, ncols, squeeze=False)


def _human_axis(ax: Any, axis: str = "y") -> None:
    from matplotlib.ticker import FuncFormatter

    (ax.yaxis if axis == "y" else ax.xaxis).set_major_formatter(FuncFormatter(lambda v, _pos: _short(v)))


def _save(fig: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=DPI)
    return path


def colors(n: int) -> list[Any]:
    cmap = _mpl().colormaps["tab10"]
    return [cmap(i % 10) for i in range(n)]


def _short(value: float) -> str:
    from modelscale.report.tables import human

    return human(value)


def _log_if_wide(ax: Any, values: list[float], axis: str = "x") -> None:
    values = [v for v in values if v and v > 0]
    if values and max(values) / min(values) > 20:
        (ax.set_xscale if axis == "x" else ax.set_yscale)("log")


# --- accuracy vs size / latency ----------------------------------------------------------------------


def pareto_plot(
    points: list[dict[str, Any]],
    panels: list[tuple[str, str, float]],
    title: str,
    path: str | Path,
    *,
    ylabel: str = "test accuracy (%)",
) -> Path:
    """Accuracy (%) against each panel's x (`key`, axis label, scale); front: max accuracy, min x.

    Baselines are grey squares, variants coloured in run order; front points are starred and joined
    by a dashed staircase. Each point is labelled beside it where the label overlaps least; long or
    many labels become numbers keyed in the legend below the plot."""
    palette = colors(max(1, sum(not p["baseline"] for p in points)))
    colour, n_variant = {}, 0
    for i, p in enumerate(points):
        if p["baseline"]:
            colour[i] = "0.45"
        else:
            colour[i], n_variant = palette[n_variant], n_variant + 1
    numbered = len(points) > 8 or max((len(p["label"]) for p in points), default=0) > 18
    tags = [str(i + 1) if numbered else p["label"] for i, p in enumerate(points)]
    with _mpl().rc_context(STYLE):
        fig, axes = _figure(
            5.4 * len(panels), 4.3 + (0.2 * ((len(points) + 1) // 2) if numbered else 0), 1, len(panels)
        )
        placed_on: list[tuple[Any, list[tuple[float, float, str]]]] = []
        for ax, (key, xlabel, scale) in zip(axes[0], panels):
            usable = [
                i for i, p in enumerate(points) if p.get(key) is not None and p.get("accuracy") is not None
            ]
            front = set(pareto_front(points, maximize="accuracy", minimize=key))
            for i in usable:
                x, y = points[i][key] * scale, 100 * points[i]["accuracy"]
                ax.scatter(
                    x, y, marker="s" if points[i]["baseline"] else "o", s=55, color=colour[i], zorder=3
                )
                if i in front:
                    ax.scatter(x, y, marker="*", s=300, facecolor="none", edgecolor="black", lw=1.1, zorder=4)
            ordered = sorted(front & set(usable), key=lambda i: points[i][key])
            if len(ordered) > 1:
                xs = [points[i][key] * scale for i in ordered]
                ys = [100 * points[i]["accuracy"] for i in ordered]
                ax.step(xs, ys, where="post", ls="--", color="black", lw=1, alpha=0.7, zorder=2)
            _log_if_wide(ax, [points[i][key] * scale for i in usable])
            if ax.get_xscale() != "log":
                _human_axis(ax, "x")
            ax.set_xlabel(xlabel + ("  (log scale)" if ax.get_xscale() == "log" else ""))
            ax.set_ylabel(ylabel)
            ax.set_title(f"Accuracy vs {xlabel.split(' (')[0]}")
            ax.margins(x=0.3, y=0.2)
            labelled = [(points[i][key] * scale, 100 * points[i]["accuracy"], tags[i]) for i in usable]
            placed_on.append((ax, labelled))
        fig.suptitle(title, fontweight="bold")
        handles = _legend_handles(any(p["baseline"] for p in points))
        if numbered:
            from matplotlib.lines import Line2D

            handles += [
                Line2D(
                    [],
                    [],
                    marker="s" if p["baseline"] else "o",
                    ls="",
                    color=colour[i],
                    label=f"{i + 1}: {p['label']}",
                )
                for i, p in enumerate(points)
            ]
        fig.legend(handles=handles, loc="outside lower center", ncol=3 if not numbered else 2)
        fig.canvas.draw()  # fix the layout and limits before placing labels
        for ax, labelled in placed_on:
            _place_labels(ax, labelled)
        return _save(fig, path)


# (dx, dy) in points and alignment, tried in order for each label
_SPOTS = (
    (8, 6, "left", "bottom"),
    (8, -6, "left", "top"),
    (-8, 6, "right", "bottom"),
    (-8, -6, "right", "top"),
    (0, 12, "center", "bottom"),
    (0, -12, "center", "top"),
)


def _place_labels(ax: Any, labelled: list[tuple[float, float, str]]) -> None:
    """Annotate each point at the spot where its text overlaps the least of the markers, the earlier
    labels and the outside of the axes (the first free spot in `_SPOTS` order)."""
    from matplotlib.transforms import Bbox

    renderer = ax.figure.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    pad = 11  # half a marker, in pixels
    taken = [
        Bbox.from_extents(px - pad, py - pad, px + pad, py + pad)
        for px, py in ax.transData.transform([(x, y) for x, y, _ in labelled])
    ]

    def overlap(a: Any, b: Any) -> float:
        w = min(a.x1, b.x1) - max(a.x0, b.x0)
        h = min(a.y1, b.y1) - max(a.y0, b.y0)
        return w * h if w > 0 and h > 0 else 0.0

    for x, y, text in labelled:
        best = None
        for dx, dy, ha, va in _SPOTS:
            ann = ax.annotate(
                text, (x, y), xytext=(dx, dy), textcoords="offset points", ha=ha, va=va, fontsize=8, zorder=5
            )
            ann.set_in_layout(False)  # labels must not move the axes they were placed on
            box = ann.get_window_extent(renderer).padded(2)
            outside = box.width * box.height - overlap(box, frame)
            cost = 3 * outside + sum(overlap(box, t) for t in taken)
            if best is None or cost < best[0]:
                if best is not None:
                    best[1].remove()
                best = (cost, ann, box)
            else:
                ann.remove()
            if cost == 0:
                break
        taken.append(best[2])


def _legend_handles(with_baseline: bool) -> list[Any]:
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], marker="o", ls="", mfc="white", mec="0.2", label="variant (final step)")]
    if with_baseline:
        handles.append(Line2D([], [], marker="s", ls="", color="0.45", label="baseline"))
    handles.append(
        Line2D([], [], marker="*", ms=12, ls="--", color="black", mfc="none", lw=1, label=PARETO_LABEL)
    )
    return handles


# --- per-step waterfall -----------------------------------------------------------------------------


def _bars(
    ax: Any, names: list[str], series: list[tuple[str, list[float | None]]], fmt: Any, legend: bool = True
) -> None:
    """Grouped bars (one group per step), each bar labelled with its value (turned upright when the
    bars are narrow); with several series, the legend sits above the axes, right of a left title."""
    x = np.arange(len(names))
    width = 0.8 / max(len(series), 1)
    upright = len(series) > 1 and len(names) >= 3
    for k, (label, values) in enumerate(series):
        heights = [np.nan if v is None else v for v in values]
        pos = x - 0.4 + width * (k + 0.5)
        bars = ax.bar(pos, heights, width, label=label, color=colors(len(series))[k], alpha=0.85)
        ax.bar_label(
            bars,
            labels=["" if v is None else fmt(v) for v in values],
            fontsize=7,
            padding=2,
            rotation=90 if upright else 0,
        )
    ax.set_xticks(x, names, rotation=20, ha="right")
    ax.margins(y=0.3 if upright else 0.15)
    if len(series) > 1 and legend:
        ax.legend(loc="lower right", bbox_to_anchor=(1.0, 1.0), ncol=len(series), frameon=False, fontsize=7)


def waterfall_plot(run_label: str, steps: list[dict[str, Any]], path: str | Path) -> Path:
    """Small multiples of params, MACs, bytes, latency, accuracy and loss after each step of one run."""
    names = [s["name"] for s in steps]
    sizes = sorted({b for s in steps for b in s["latency"]})

    def col(key: str, scale: float = 1.0) -> list[float | None]:
        return [None if s.get(key) is None else s[key] * scale for s in steps]

    panels = [
        (
            "Parameters",
            "parameters (count)",
            [("total", col("params")), ("non-zero", col("nonzero"))],
            _short,
        ),
        ("Compute", "MACs per example", [("MACs", col("macs"))], _short),
        (
            "Size on disk",
            "MB (10⁶ bytes)",
            [("torch.save", col("serialized", 1e-6)), ("zipped", col("zipped", 1e-6))],
            lambda v: f"{v:.3f}",
        ),
        (
            "Measured latency",
            "median latency (ms)",
            [(f"batch {b}", [s["latency"].get(b) for s in steps]) for b in sizes],
            lambda v: f"{v:.3g}",
        ),
        ("Accuracy", "test accuracy (%)", [("accuracy", col("accuracy", 100))], lambda v: f"{v:.1f}"),
        ("Loss", "test loss (nats)", [("loss", col("loss"))], lambda v: f"{v:.3f}"),
    ]
    with _mpl().rc_context(STYLE):
        fig, axes = _figure(13, 7, 2, 3)
        for ax, (title, ylabel, series, fmt) in zip(axes.flat, panels):
            series = [(lab, vals) for lab, vals in series if any(v is not None for v in vals)]
            if not series:
                ax.set_visible(False)
                continue
            _bars(ax, names, series, fmt)
            ax.set_title(title, loc="left")
            ax.set_ylabel(ylabel)
            if title in ("Parameters", "Compute"):
                _human_axis(ax)
        fig.suptitle(f"{run_label}: after each step", fontweight="bold")
        return _save(fig, path)


# --- theoretical vs measured speedup -------------------------------------------------------------------


def speedup_plot(groups: list[dict[str, Any]], path: str | Path) -> Path:
    """Bars per (variant, step): MACs ratio vs measured latency ratio per batch size, both vs baseline."""
    sizes = sorted({b for g in groups for b in g["measured"]})
    series = [("theoretical: MACs base / step", [g["theoretical"] for g in groups])]
    series += [
        (f"measured: latency base / step, batch {b}", [g["measured"].get(b) for g in groups]) for b in sizes
    ]
    with _mpl().rc_context(STYLE):
        fig, axes = _figure(max(7.0, 1.3 * len(groups) + 3), 4.6)
        ax = axes[0][0]
        _bars(ax, [g["label"] for g in groups], series, lambda v: f"{v:.2f}×", legend=False)
        ax.axhline(1.0, color="black", lw=1, ls=":")
        _log_if_wide(ax, [v for _, vals in series for v in vals if v], "y")
        log = ax.get_yscale() == "log"
        ax.set_ylabel("speedup vs the run's baseline (×, > 1 is faster)" + (", log scale" if log else ""))
        ax.set_title("Theoretical vs measured speedup")
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
        return _save(fig, path)


# --- per-layer records ---------------------------------------------------------------------------------


def layer_plot(
    title: str, xlabel: str, layers: list[str], series: dict[str, list[float | None]], path: str | Path
) -> Path:
    """Horizontal grouped bars: one row per layer, one bar per run."""
    y = np.arange(len(layers))
    height = 0.8 / max(len(series), 1)
    with _mpl().rc_context(STYLE):
        fig, axes = _figure(8.5, max(2.0, 0.34 * len(layers) * max(1, len(series)) ** 0.5 + 1.2))
        ax = axes[0][0]
        palette = colors(len(series))
        for k, (label, values) in enumerate(series.items()):
            widths = [np.nan if v is None else v for v in values]
            bars = ax.barh(y - 0.4 + height * (k + 0.5), widths, height, label=label, color=palette[k])
            ax.bar_label(
                bars, labels=["" if v is None else f"{v:.3g}" for v in values], fontsize=7, padding=2
            )
        ax.set_yticks(y, layers)
        ax.invert_yaxis()
        ax.set_xlabel(xlabel)
        ax.set_title(title)
        ax.margins(x=0.12)
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
        return _save(fig, path)


# --- weights and activations ---------------------------------------------------------------------------


def weights_plot(panels: list[dict[str, Any]], path: str | Path) -> Path:
    """Histogram of every weight of the baseline vs the final model, one panel per run (log counts).

    Each panel holds the histograms the runner recorded (`measure.model_views.weight_histograms`)."""
    with _mpl().rc_context(STYLE):
        ncols = min(3, len(panels))
        nrows = -(-len(panels) // ncols)
        fig, axes = _figure(4.6 * ncols, 3.6 * nrows, nrows, ncols)
        for ax, panel in zip(axes.flat, panels):
            hist = panel["histograms"]
            edges = np.asarray(hist["edges"])
            base, final = np.asarray(hist["baseline"]["counts"]), np.asarray(hist["final"]["counts"])
            zb = 100 * hist["baseline"]["stats"]["zeros"]
            zf = 100 * hist["final"]["stats"]["zeros"]
            ax.stairs(base, edges, fill=True, color="0.55", alpha=0.6, label=f"baseline ({zb:.1f}% zeros)")
            ax.stairs(final, edges, lw=1.4, color="tab:red", label=f"{panel['final_step']} ({zf:.1f}% zeros)")
            ax.set_yscale("log")
            low, high = ax.get_ylim()
            ax.set_ylim(max(low, 0.5), high * 60)  # headroom for the legend above the bars
            ax.set_xlabel("weight value")
            ax.set_ylabel("count (log scale)")
            ax.set_title(panel["label"])
            ax.legend(loc="upper right")
        for ax in list(axes.flat)[len(panels) :]:
            ax.set_visible(False)
        fig.suptitle("Weight distributions: baseline vs final model", fontweight="bold")
        return _save(fig, path)


def activation_plot(
    maps: dict[str, Any], labels: list[int], title: str, path: str | Path, channels: int = 8
) -> Path:
    """Input digit, then `channels` feature maps of the original and of the compressed model, per example."""
    base, other, inputs = maps["base"], maps["other"], maps["inputs"]
    common = min(base.shape[1], other.shape[1])
    n_ch = min(channels, common)
    strength = np.abs(base[:, :common]).mean(axis=(0, 2, 3))
    picks = sorted(np.argsort(-strength)[:n_ch].tolist())
    rows = 2 * len(labels)
    with _mpl().rc_context(STYLE):
        fig, axes = _figure(1.15 * (n_ch + 1) + 1.0, 1.2 * rows + 0.8, rows, n_ch + 1, layout=None)
        fig.subplots_adjust(left=0.04, right=0.99, top=1 - 0.55 / (1.2 * rows + 0.8), bottom=0.01, hspace=0.3)
        for e, label in enumerate(labels):
            for r, (which, maps_) in enumerate((("original", base), ("compressed", other))):
                row = axes[2 * e + r]
                img = inputs[e].mean(axis=0) if inputs[e].ndim == 3 else inputs[e]
                if r == 0:
                    row[0].imshow(img, cmap="gray_r", interpolation="nearest")
                    row[0].set_title(f"input: {label}", fontsize=8)
                else:
                    row[0].set_visible(False)
                for c, ch in enumerate(picks):
                    m = max(float(np.abs(base[e, ch]).max()), float(np.abs(other[e, ch]).max()), 1e-8)
                    row[c + 1].imshow(maps_[e, ch], cmap="RdBu_r", vmin=-m, vmax=m, interpolation="nearest")
                    if e == 0 and r == 0:
                        row[c + 1].set_title(f"channel {ch}", fontsize=8)
                row[1].set_ylabel(which, fontsize=8)
                for ax in row:
                    ax.set_xticks([])
                    ax.set_yticks([])
                    ax.grid(False)
        fig.suptitle(title, fontweight="bold")
        return _save(fig, path)


# --- similarity ----------------------------------------------------------------------------------------


def cka_plot(blocks: list[str], series: dict[str, list[float | None]], path: str | Path) -> Path:
    """Linear CKA with the original model per block (1 = same representation), one bar per run."""
    with _mpl().rc_context(STYLE):
        fig, axes = _figure(max(6.5, 1.1 * len(blocks) * max(1, len(series)) ** 0.5 + 2), 4.2)
        ax = axes[0][0]
        _bars(ax, blocks, list(series.items()), lambda v: f"{v:.3f}", legend=False)
        ax.set_ylim(0, 1.2)
        ax.set_yticks(np.linspace(0, 1, 6))
        ax.axhline(1.0, color="black", lw=1, ls=":")
        ax.set_ylabel("linear CKA with the original (0–1)")
        ax.set_xlabel("block (module name)")
        ax.set_title("Representation similarity per block")
        ax.legend(loc="lower left", framealpha=0.9)
        return _save(fig, path)
