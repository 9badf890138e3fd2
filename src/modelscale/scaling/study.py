"""A scaling study end to end: run the sweep, fit the laws, write a Markdown summary, JSON and figures.

After `run_sweep`, runs with several seeds are averaged per (size, data fraction), then fitted with
`modelscale.scaling.fit_law` (Huber on log-loss residuals, bootstrap intervals):

- loss vs parameters N (non-embedding, Kaplan et al. 2020) at the largest data fraction: L = E + A·N^(−α);
- loss vs data D at the largest model: L = E + A·D^(−α), D = training examples (language models:
  tokens seen);
- loss vs training compute C on the compute frontier (runs no cheaper run beats): L = E + A·C^(−α);
- the joint law L(N, D) = E + A/N^α + B/D^β when there are ≥ 6 runs with varying N and D.

Each needs ≥ 4 distinct inputs (6 for the joint law); a law that cannot be fitted is listed with the
reason. Language models are fitted on bits per byte (= loss / ln 2, so exponents are unchanged).

Example::

    from modelscale.scaling.study import scale_command
    text, data = scale_command("study.yaml", out="runs/scale", jobs=2)
    print(data["fits"]["loss_vs_params"]["parameters"])
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from modelscale.core.errors import ModelscaleError
from modelscale.scaling.sweep import SweepConfig, SweepResult, run_sweep

LAWS = {
    "loss_vs_params": "loss vs parameters (largest data fraction)",
    "loss_vs_data": "loss vs data (largest model)",
    "loss_vs_compute": "loss vs training compute (compute frontier)",
    "joint": "joint law L(N, D)",
}


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def aggregate(result: SweepResult) -> list[dict[str, Any]]:
    """One row per (size, data fraction): means over seeds of loss, metric, gap, compute."""
    cfg = result.config
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for rec in result.points:
        key = (rec["width"], rec["depth"], rec.get("phi"), rec["data_fraction"])
        groups.setdefault(key, []).append(rec)
    rows = []
    for (width, depth, phi, fraction), recs in groups.items():
        lm = recs[0]["task"] == "lm"
        split = "test" if cfg.fit_loss == "test_loss" else "val"
        loss_key = f"{split}_bits_per_byte" if lm else cfg.fit_loss
        metric = recs[0]["metric"]
        rows.append(
            {
                "width": width,
                "depth": depth,
                "phi": phi,
                "data_fraction": fraction,
                "seeds": len(recs),
                "N": recs[0]["params_non_embedding"],
                "params": recs[0]["params"],
                "D": _mean([r["tokens_seen"] if lm else r["train_size"] for r in recs]),
                "C": _mean([r["train_flops"] for r in recs]),
                "loss": _mean([r[loss_key] for r in recs]),
                "loss_name": loss_key,
                "train_loss": _mean([r["train_loss"] for r in recs]),
                "test_loss": _mean([r["test_loss"] for r in recs]),
                "metric": metric,
                "test_metric": _mean([r[f"test_{metric}"] for r in recs]),
                "gap": _mean([r["generalization_gap"] for r in recs]),
                "wall_seconds": _mean([r["wall_seconds"] for r in recs]),
            }
        )
    rows.sort(key=lambda r: (r["N"], r["D"]))
    return rows


def compute_frontier(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows on the Pareto front of (compute, loss), cheapest first: the lower envelope of loss vs C
    (`analysis.pareto.pareto_front`, the one front used by reports, studies and the search)."""
    from modelscale.analysis.pareto import pareto_front

    front = pareto_front(rows, minimize=["C", "loss"])
    return sorted((rows[i] for i in front), key=lambda r: (r["C"], r["loss"]))


def fit_study(rows: list[dict[str, Any]], *, n_boot: int = 200, seed: int = 0) -> tuple[dict, dict[str, str]]:
    """Fit the study's laws; returns ({name: LawFit}, {name: why it was skipped})."""
    from modelscale.scaling import fit_law

    fits: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    if not rows:
        return fits, {name: "no completed points" for name in LAWS}
    top_d = max(r["data_fraction"] for r in rows)
    top_n = max(r["N"] for r in rows)
    sets = {
        "loss_vs_params": ([r for r in rows if r["data_fraction"] == top_d], "n"),
        "loss_vs_data": ([r for r in rows if r["N"] == top_n], "d"),
        "loss_vs_compute": (compute_frontier(rows), "c"),
        "joint": (rows, "nd"),
    }
    for name, (subset, axes) in sets.items():
        if name == "joint" and (len({r["N"] for r in rows}) < 2 or len({r["D"] for r in rows}) < 2):
            skipped[name] = "needs runs with several model sizes and several data sizes"
            continue
        kwargs = {
            "n": [r["N"] for r in subset] if "n" in axes else None,
            "d": [r["D"] for r in subset] if "d" in axes else None,
            "c": [r["C"] for r in subset] if "c" in axes else None,
        }
        try:
            fits[name] = fit_law([r["loss"] for r in subset], n_boot=n_boot, seed=seed, **kwargs)
        except ModelscaleError as exc:
            skipped[name] = f"{len(subset)} runs: {exc}"
    return fits, skipped


def _fmt(value: float | None, digits: int = 4) -> str:
    from modelscale.scaling.render import fmt

    return fmt(value, digits)


def exponents(fits: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The fitted exponents with intervals, per law (α of the one-variable laws; α and β of the joint law)."""
    out = {}
    for name, fit in fits.items():
        row = {}
        for est in fit.parameters:
            if est.name in ("alpha", "beta"):
                row[est.name] = {"value": est.value, "low": est.low, "high": est.high}
        row["r2_log"] = fit.goodness.r2_log
        row["formula"] = str(fit.law)
        out[name] = row
    return out


def study_markdown(result: SweepResult, rows, fits, skipped, figures: list[str]) -> str:
    from modelscale.core.formatting import human, table
    from modelscale.scaling.render import law_markdown

    cfg = result.config
    metric = rows[0]["metric"] if rows else "accuracy"
    lines = [
        f"# Scaling study: {cfg.name}",
        "",
        f"Model `{cfg.model}` on `{cfg.data}`; {len(result.points)} completed points "
        f"({result.executed} trained now, {result.skipped} from the store, {len(result.failed)} failed); "
        f"training: {cfg.train.optimizer} lr {cfg.train.lr:g}, {cfg.train.epochs} epochs, batch {cfg.train.batch_size}"
        + (f", max_steps {cfg.train.max_steps}" if cfg.train.max_steps else "")
        + f". Laws fitted to {rows[0]['loss_name'] if rows else cfg.fit_loss}.",
        "",
        "## Points (mean over seeds)",
        "",
    ]
    headers = [
        "width",
        "depth",
        "data",
        "params N",
        "D",
        "compute C",
        "train loss",
        "test loss",
        f"test {metric}",
        "gap",
        "s",
    ]
    body = [
        [
            _fmt(r["width"], 3) if r["phi"] is None else f"φ={r['phi']:g}",
            _fmt(r["depth"], 3),
            f"{r['data_fraction']:g}",
            human(r["N"]),
            human(r["D"]),
            f"{r['C']:.3g}",
            f"{r['train_loss']:.4f}",
            f"{r['test_loss']:.4f}",
            f"{100 * r['test_metric']:.2f}%" if metric == "accuracy" else f"{r['test_metric']:.4f}",
            f"{r['gap']:+.4f}",
            f"{r['wall_seconds']:.1f}",
        ]
        for r in rows
    ]
    lines += [table(headers, body), "", "## Fitted exponents", ""]
    exp_rows = []
    for name, title in LAWS.items():
        if name in fits:
            fit = fits[name]
            cells = []
            for key in ("alpha", "beta"):
                est = next((p for p in fit.parameters if p.name == key), None)
                ci = "" if est is None or est.low is None else f" ({_fmt(est.low, 3)} – {_fmt(est.high, 3)})"
                cells.append("—" if est is None else f"{_fmt(est.value, 3)}{ci}")
            exp_rows.append([title, f"`{fit.law}`", *cells, _fmt(fit.goodness.r2_log, 4)])
        else:
            exp_rows.append([title, f"not fitted: {skipped.get(name, '')}", "—", "—", "—"])
    conf = next(iter(fits.values())).confidence if fits else 0.95
    lines += [table(["law", "fit", f"α ({conf:.0%} interval)", "β", "R² log L"], exp_rows), ""]
    for name, fit in fits.items():
        section = law_markdown(fit).replace("## Scaling law fit", f"## {LAWS[name]}", 1)
        lines += [section.replace("### ", "#### ").rstrip(), ""]
    if figures:
        lines += ["## Figures", ""] + [f"- `{f}`" for f in figures] + [""]
    notes = list(result.notes)
    if result.failed:
        notes += [f"failed point {f['key']}: {f['error']}" for f in result.failed]
    if notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    return "\n".join(lines)


def _configs(source: Any) -> list[Any]:
    from modelscale.core.io import read_structured

    if isinstance(source, SweepConfig):
        return [source]
    data = read_structured(source) if isinstance(source, str | Path) else source
    if not isinstance(data, dict):
        raise ModelscaleError("a study file must be a mapping (one sweep) or {sweeps: [...]} (several)")
    if "sweeps" in data:
        sweeps = data["sweeps"]
        if set(data) - {"sweeps"} or not isinstance(sweeps, list) or not sweeps:
            raise ModelscaleError(
                "{sweeps: [...]} must hold a non-empty list of sweep mappings and nothing else"
            )
        names = [s.get("name", "sweep") if isinstance(s, dict) else None for s in sweeps]
        if len(set(names)) != len(names):
            raise ModelscaleError(f"sweeps need distinct names, got {names}")
        return sweeps
    return [data]


def run_study(
    config: SweepConfig | dict[str, Any],
    *,
    store: Any = None,
    out: str | Path,
    jobs: int = 1,
    gpu_sizes: bool = False,
    plots: bool = True,
    progress: bool = True,
    allow_pickle: bool = False,
    storage: str | None = None,
    worker: bool = False,
    heartbeat: int = 30,
    join_wait: float = 0.0,
) -> tuple[str, dict[str, Any]]:
    """One sweep + fits + summary.md, study.json and figures under `out`; returns (Markdown, data).

    With `storage` (an Optuna RDB URL) the points are shared with other workers (`scaling.workers`)."""
    from modelscale.core.io import write_json, write_text

    out = Path(out)
    if storage is not None:
        from modelscale.scaling.workers import run_sweep_workers

        cfg = SweepConfig.from_dict(config) if isinstance(config, dict) else config
        result = run_sweep_workers(
            cfg,
            storage=storage,
            out_dir=out,
            store=store,
            worker=worker,
            gpu_sizes=gpu_sizes,
            progress=progress,
            allow_pickle=allow_pickle,
            heartbeat=heartbeat,
            join_wait=join_wait,
        )
    elif worker:
        raise ModelscaleError("--worker joins a shared sweep: give its --storage URL too")
    else:
        result = run_sweep(
            config,
            store=store,
            out_dir=out,
            progress=progress,
            jobs=jobs,
            gpu_sizes=gpu_sizes,
            allow_pickle=allow_pickle,
        )
    rows = aggregate(result)
    fits, skipped = fit_study(rows, n_boot=result.config.n_boot)
    if "joint" in fits and rows and rows[0]["metric"] != "bits_per_byte":
        result.notes.append(
            "the joint law's compute-optimal table assumes C = 6·N·D (the transformer rule, D in tokens); here D "
            "counts training examples of a non-transformer, so read it as a trend, not as FLOPs"
        )
    figures: list[str] = []
    if plots and rows:
        try:
            from modelscale.scaling.study_plots import plot_study

            figures = plot_study(rows, fits, out / "figures", title=result.config.name)
        except ImportError:
            result.notes.append("figures skipped: matplotlib is not installed (pip install matplotlib)")
    text = study_markdown(result, rows, fits, skipped, figures)
    frontier = None
    if result.config.compress_or_train_small:
        frontier = _frontier(result, out, plots, figures)
        text += "\n\n" + frontier.markdown()
    data = {
        "study": result.config.name,
        "sweep": result.to_dict(),
        "aggregated": rows,
        "fits": {name: fit.to_dict() for name, fit in fits.items()},
        "skipped_fits": skipped,
        "exponents": exponents(fits),
        "figures": figures,
        "compress_or_train_small": frontier.to_dict() if frontier is not None else None,
    }
    write_text(out / "summary.md", text)
    write_json(out / "study.json", data)
    return text, data


def _frontier(result: Any, out: Path, plots: bool, figures: list[str]) -> Any:
    """Compress the sweep's largest model and compare it, size by size, with the family from scratch."""
    from modelscale.core.errors import ModelscaleError
    from modelscale.data import load_data
    from modelscale.scaling.compress_or_train import compress_or_train_small

    cfg = result.config
    if not cfg.save_models:
        raise ModelscaleError(
            "compress_or_train_small needs save_models: true (the largest model is compressed)"
        )
    data = load_data(cfg.data, seed=cfg.data_seed, block_size=cfg.block_size, max_bytes=cfg.max_bytes,
                     **cfg.data_options)  # fmt: skip
    frontier = compress_or_train_small(result, None, data, threads=cfg.threads)
    if plots:
        try:
            from modelscale.scaling.study_plots import plot_frontier

            figures.append(plot_frontier(frontier, out / "figures" / "compress_or_train_small.png"))
        except ImportError:
            frontier.notes.append("frontier figure skipped: matplotlib is not installed")
    return frontier


def check_sweep_fits(cfg: SweepConfig) -> None:
    """Before any point trains: the data loads (finite, labels 0..K-1) and the family fits it."""
    from modelscale.data import load_data
    from modelscale.engine.compat import check_fits, check_source_kind
    from modelscale.models import build_model, model_spec
    from modelscale.models.loading import ModelBundle

    try:
        data = load_data(
            cfg.data,
            seed=cfg.data_seed,
            block_size=cfg.block_size,
            max_bytes=cfg.max_bytes,
            **cfg.data_options,
        )
    except ModelscaleError as exc:
        raise ModelscaleError(f"{cfg.name}: data: {exc}") from None
    if "weights" in cfg.model_options:
        return  # the point loader checks trust first; its first forward checks the fit
    check_source_kind(cfg.model, data)
    kwargs = dict(cfg.model_options, num_classes=data.num_classes, input_shape=data.input_shape)
    kwargs.update(width=min(cfg.widths), depth=min(cfg.depths))  # as a point builds it (scaling/point.py)
    try:
        bundle = ModelBundle(build_model(cfg.model, **kwargs), model_spec(cfg.model, **kwargs), [])
        check_fits(bundle, data, label=cfg.model)
    except ModelscaleError as exc:
        raise ModelscaleError(f"{cfg.name}: model: {exc}") from None


def scale_command(
    config_path_or_dict: str | Path | dict[str, Any],
    *,
    store: Any = None,
    out: str | Path | None = None,
    jobs: int = 1,
    gpu_sizes: bool = False,
    plots: bool = True,
    progress: bool = True,
    allow_pickle: bool = False,
    storage: str | None = None,
    worker: bool = False,
    heartbeat: int = 30,
    join_wait: float = 0.0,
) -> tuple[str, dict[str, Any]]:
    """`modelscale scale study.yaml [--out DIR] [--jobs N] [--gpu-sizes]`: sweep(s), laws, summary, JSON.

    The file holds one sweep config (`SweepConfig` fields) or `{sweeps: [...]}`; each sweep's files go
    to `<out>/<name>/` (default out: runs/scale). Returns (Markdown text, JSON-safe data).
    """
    configs = [SweepConfig.from_dict(c) if isinstance(c, dict) else c for c in _configs(config_path_or_dict)]
    for cfg in configs:
        check_sweep_fits(cfg)
    base = Path(out) if out is not None else Path("runs/scale")
    texts, studies = [], []
    for cfg in configs:
        text, data = run_study(
            cfg,
            store=store,
            out=base / cfg.name,
            jobs=jobs,
            gpu_sizes=gpu_sizes,
            plots=plots,
            progress=progress,
            allow_pickle=allow_pickle,
            storage=storage,
            worker=worker,
            heartbeat=heartbeat,
            join_wait=join_wait,
        )
        texts.append(text)
        studies.append(data)
    if len(studies) == 1:
        return texts[0], studies[0]
    return "\n\n".join(texts), {"studies": studies}
