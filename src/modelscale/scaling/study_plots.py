"""Figures of a scaling study: loss vs parameters / data / compute with the fitted law and its band,
iso-FLOP curves, generalization gap vs size, and the compress-or-train-small frontier.

matplotlib is imported lazily and only through its object-oriented API (`matplotlib.figure.Figure`
rendered by the Agg canvas), so no global backend or pyplot state is touched. Bands are the
percentile-bootstrap interval of the law's value from `LawFit.predict_interval` (none when the fit
had no bootstrap). Every function returns the paths of the PNG files it wrote.

Example::

    from modelscale.scaling.study import aggregate, fit_study
    from modelscale.scaling.study_plots import plot_study
    rows = aggregate(sweep_result); fits, _ = fit_study(rows)
    paths = plot_study(rows, fits, "runs/scale/cnn/figures", title="cnn on digits")
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

DPI = 150
SIZE = (6.4, 4.6)
ISO_RTOL = 0.05  # runs within 5 % of each other's compute share an iso-FLOP budget


def _figure(title: str, xlabel: str, ylabel: str, *, logy: bool = True) -> tuple[Any, Any]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=SIZE, dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    ax.set_title(title, fontsize=11)
    ax.set_xlabel(xlabel, fontsize=10)
    ax.set_ylabel(ylabel, fontsize=10)
    ax.grid(True, which="major", alpha=0.35)
    ax.grid(True, which="minor", alpha=0.12)
    return fig, ax


def _save(fig: Any, path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return str(path)


def _law_curve(ax: Any, fit: Any, x: np.ndarray, label: str) -> None:
    """The fitted one-variable law over x, with its bootstrap band."""
    grid = np.logspace(np.log10(x.min()) - 0.15, np.log10(x.max()) + 0.3, 120)
    pred = fit.predict_interval(grid)
    ax.plot(grid, pred.loss, color="black", lw=1.4, label=label)
    if pred.low is not None:
        ax.fill_between(grid, pred.low, pred.high, color="black", alpha=0.12, lw=0,
                        label=f"{pred.confidence:.0%} bootstrap band")  # fmt: skip


def _exponent_label(fit: Any) -> str:
    law, alpha = fit.law, next(p for p in fit.parameters if p.name == "alpha")
    text = f"fit: {law.E:.3g} + {law.A:.3g}·{law.variable}^(−{law.alpha:.3f})"
    if alpha.low is not None:
        text += f"; α {fit.confidence:.0%} CI [{alpha.low:.2f}, {alpha.high:.2f}]"
    return text


def _by(rows: list[dict[str, Any]], key: str) -> dict[Any, list[dict[str, Any]]]:
    out: dict[Any, list[dict[str, Any]]] = {}
    for r in rows:
        out.setdefault(r[key], []).append(r)
    return dict(sorted(out.items()))


def _size_label(r: dict[str, Any]) -> str:
    return f"φ={r['phi']:g}" if r.get("phi") is not None else f"w={r['width']:g}, d={r['depth']:g}"


def plot_study(
    rows: list[dict[str, Any]], fits: dict[str, Any], out_dir: str | Path, *, title: str = ""
) -> list[str]:
    """All study figures into `out_dir`: loss vs params, vs data, vs compute, iso-FLOP (when present), gap."""
    out = Path(out_dir)
    loss_name = rows[0]["loss_name"].replace("_", " ")
    head = f"{title}: " if title else ""
    paths = []

    fig, ax = _figure(f"{head}{loss_name} vs parameters", "non-embedding parameters N", loss_name)
    for frac, group in _by(rows, "data_fraction").items():
        group.sort(key=lambda r: r["N"])
        ax.plot(
            [r["N"] for r in group], [r["loss"] for r in group], "o-", ms=5, label=f"data fraction {frac:g}"
        )
    if "loss_vs_params" in fits:
        top = max(r["data_fraction"] for r in rows)
        _law_curve(ax, fits["loss_vs_params"], np.array([r["N"] for r in rows if r["data_fraction"] == top]),
                   _exponent_label(fits["loss_vs_params"]))  # fmt: skip
    ax.legend(fontsize=8)
    paths.append(_save(fig, out / "loss_vs_params.png"))

    fig, ax = _figure(f"{head}{loss_name} vs data", "training data D (examples; tokens for LMs)", loss_name)
    sizes = _by(rows, "N")
    for n, group in sizes.items():
        group.sort(key=lambda r: r["D"])
        ax.plot(
            [r["D"] for r in group],
            [r["loss"] for r in group],
            "o-",
            ms=5,
            label=f"N={n:,} ({_size_label(group[0])})",
        )
    if "loss_vs_data" in fits:
        top = max(sizes)
        _law_curve(
            ax,
            fits["loss_vs_data"],
            np.array([r["D"] for r in sizes[top]]),
            _exponent_label(fits["loss_vs_data"]),
        )
    ax.legend(fontsize=8)
    paths.append(_save(fig, out / "loss_vs_data.png"))

    from modelscale.scaling.study import compute_frontier

    fig, ax = _figure(
        f"{head}{loss_name} vs training compute", "training compute C (FLOPs, counted)", loss_name
    )
    for n, group in sizes.items():
        group.sort(key=lambda r: r["C"])
        ax.plot([r["C"] for r in group], [r["loss"] for r in group], "o-", ms=4, alpha=0.75, label=f"N={n:,}")
    front = compute_frontier(rows)
    ax.plot(
        [r["C"] for r in front],
        [r["loss"] for r in front],
        "s",
        mfc="none",
        mec="black",
        ms=9,
        label="compute frontier",
    )
    if "loss_vs_compute" in fits:
        _law_curve(
            ax,
            fits["loss_vs_compute"],
            np.array([r["C"] for r in front]),
            _exponent_label(fits["loss_vs_compute"]),
        )
    ax.legend(fontsize=7, ncol=2)
    paths.append(_save(fig, out / "loss_vs_compute.png"))

    iso = iso_flop_groups(rows)
    if iso:
        fig, ax = _figure(f"{head}iso-FLOP curves", "non-embedding parameters N", loss_name)
        for budget, group in iso:
            group.sort(key=lambda r: r["N"])
            ax.plot(
                [r["N"] for r in group],
                [r["loss"] for r in group],
                "o-",
                ms=5,
                label=f"C ≈ {budget:.2g} FLOPs",
            )
            best = min(group, key=lambda r: r["loss"])
            ax.plot([best["N"]], [best["loss"]], "*", color="black", ms=11)
        ax.legend(fontsize=8)
        paths.append(_save(fig, out / "isoflop.png"))

    fig, ax = _figure(
        f"{head}generalization gap vs size",
        "non-embedding parameters N",
        "test loss − train loss",
        logy=False,
    )
    for frac, group in _by(rows, "data_fraction").items():
        group.sort(key=lambda r: r["N"])
        ax.plot(
            [r["N"] for r in group], [r["gap"] for r in group], "o-", ms=5, label=f"data fraction {frac:g}"
        )
    ax.axhline(0.0, color="grey", lw=0.8)
    ax.legend(fontsize=8)
    paths.append(_save(fig, out / "gap_vs_size.png"))
    return paths


def iso_flop_groups(
    rows: list[dict[str, Any]], *, rtol: float = ISO_RTOL
) -> list[tuple[float, list[dict[str, Any]]]]:
    """Groups of ≥ 3 runs with (nearly) equal compute and ≥ 3 different model sizes: (budget, rows)."""
    from modelscale.scaling.optimal import budget_groups

    out = []
    for idx in budget_groups([r["C"] for r in rows], rtol=rtol):
        group = [rows[i] for i in idx]
        if len({r["N"] for r in group}) >= 3:
            out.append((float(np.mean([r["C"] for r in group])), group))
    return out


def plot_frontier(result: Any, path: str | Path) -> str:
    """Test metric vs serialized bytes: the family trained from scratch next to each compression technique."""
    rows = result.rows if hasattr(result, "rows") else result["rows"]
    metric = (result.metric if hasattr(result, "metric") else result["metric"]).replace("_", " ")
    fig, ax = _figure(
        f"compress the largest or train small ({metric})", "serialized bytes", f"test {metric}", logy=False
    )
    family = sorted((r for r in rows if r["kind"] == "trained"), key=lambda r: r["bytes"])
    ax.plot([r["bytes"] for r in family], [r["metric"] for r in family], "o-", color="black", ms=6,
            label="trained from scratch")  # fmt: skip
    for r in family:
        ax.annotate(
            r["label"], (r["bytes"], r["metric"]), textcoords="offset points", xytext=(4, -10), fontsize=7
        )
    markers = iter("s^vDPXh<>")
    for tech in dict.fromkeys(r["technique"] for r in rows if r["kind"] == "compressed"):
        group = sorted((r for r in rows if r.get("technique") == tech), key=lambda r: r["bytes"])
        ax.plot([r["bytes"] for r in group], [r["metric"] for r in group], next(markers, "o") + "--", ms=6,
                label=f"largest, {tech} + fine-tune" if group[0].get("finetuned") else f"largest, {tech}")  # fmt: skip
    ax.margins(x=0.08)  # room for the size labels at both ends
    ax.legend(fontsize=8)
    return _save(fig, Path(path))
