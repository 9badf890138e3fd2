"""Measure the model after a step: one `modelscale.measure.profile` per device × dtype × batch size.

Accuracy (the test split) is measured once per device × dtype, at the first batch size; latency for
every combination. After every step but the baseline, `paired_with_baseline` also times the model
against the run's baseline model, interleaved in one process, so the speedup a report shows is a
paired ratio (`latency.speedup_vs_baseline`) rather than two medians measured minutes apart. Each report is kept whole (for profile.json) and flattened into metric rows
`{"name": "quality.accuracy", "value", "device", "dtype", "batch_size"}` for the run store.
"""

from __future__ import annotations

from typing import Any

from modelscale.engine.specs import MeasureSection

# recipe metric name -> section of ProfileReport.to_dict() it records
SECTIONS = {
    "params": "params",
    "size": "size",
    "macs": "macs",
    "accuracy": "quality",
    "latency": "latency",
    "memory": "memory",
}
SKIP = {"layers", "input_shapes", "repeats", "warmup", "threads", "batch_size", "topk", "ece_bins"}


def _flatten(prefix: str, value: Any, out: dict[str, float]) -> None:
    if isinstance(value, dict):
        for key, inner in value.items():
            if key not in SKIP:
                _flatten(f"{prefix}.{key}", inner, out)
    elif isinstance(value, int | float) and not isinstance(value, bool):
        out[prefix] = float(value)


def measure(
    model: Any, data: Any, measure_cfg: MeasureSection
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[str]]:
    """(profiles as dicts, metric rows, notes) for `model` on `data` as `measure_cfg` asks."""
    from modelscale.data import make_loader
    from modelscale.engine.session import Session
    from modelscale.measure import profile

    wanted = [SECTIONS[m] for m in measure_cfg.metrics]
    loader = None
    if "quality" in wanted:
        loader = make_loader(data.test, batch_size=measure_cfg.eval_batch_size, shuffle=False)
    profiles, rows, notes = [], [], []
    for device in measure_cfg.devices:
        for dtype in measure_cfg.dtypes:
            for n, batch_size in enumerate(measure_cfg.batch_sizes):
                where = f"{device}/{dtype}/batch {batch_size}"
                try:
                    report = profile(
                        model,
                        Session(None, data).example_inputs(batch_size),
                        latency="latency" in wanted,
                        memory="memory" in wanted,
                        device=device,
                        dtype=dtype,
                        warmup=measure_cfg.warmup,
                        repeats=measure_cfg.repeats,
                        threads=measure_cfg.threads,
                        loader=loader if n == 0 else None,
                        task=data.task,
                        max_batches=measure_cfg.max_batches,
                    )
                except Exception as exc:  # noqa: BLE001 - a measurement that cannot run is a note, not a failure
                    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                    notes.append(f"measuring on {where} failed: {first}")
                    continue
                as_dict = report.to_dict()
                profiles.append(
                    {"device": device, "dtype": dtype, "batch_size": batch_size, "report": as_dict}
                )
                flat: dict[str, float] = {}
                for section in wanted:
                    if as_dict.get(section) is not None:
                        _flatten(section, as_dict[section], flat)
                rows += [
                    {"name": k, "value": v, "device": device, "dtype": dtype, "batch_size": batch_size}
                    for k, v in flat.items()
                ]
                notes += [n_ for n_ in report.notes if n_ not in notes]
    return profiles, rows, notes


def file_size_rows(rows: list[dict[str, Any]], folder: Any) -> list[dict[str, Any]]:
    """`rows` with the size of the weights file as saved in `folder` (measured on disk) in place of the
    in-memory figures (`size.file_bytes`, `size.zipped_bytes`, `size.zip_ratio`)."""
    from modelscale.measure.size import measure_file

    if not any(r["name"].startswith("size.") for r in rows):
        return rows
    on_disk = measure_file(folder)
    values = {
        "size.file_bytes": float(on_disk.file_bytes),
        "size.zipped_bytes": float(on_disk.zipped_bytes),
        "size.zip_ratio": float(on_disk.zip_ratio),
    }
    return [{**r, "value": values.get(r["name"], r["value"])} for r in rows]


PAIRED = "latency.speedup_vs_baseline"


def paired_with_baseline(
    model: Any, baseline_folder: Any, data: Any, measure_cfg: MeasureSection
) -> tuple[list[dict[str, Any]], list[str]]:
    """(rows, notes): the baseline-over-model latency ratio per batch size, timed interleaved on the
    first device and dtype the recipe measures."""
    from modelscale.engine.session import Session
    from modelscale.measure import measure_latency_pair
    from modelscale.models.loading import load_model_dir

    device, dtype = measure_cfg.devices[0], measure_cfg.dtypes[0]
    try:
        base = load_model_dir(baseline_folder).model
    except Exception as exc:  # noqa: BLE001 - no baseline checkpoint: the ratio is simply not recorded
        return [], [
            f"paired latency vs the baseline skipped: {str(exc).splitlines()[0] if str(exc) else exc}"
        ]
    rows, notes = [], []
    for batch_size in measure_cfg.batch_sizes:
        x = Session(None, data).example_inputs(batch_size)
        try:
            pair = measure_latency_pair(
                base,
                model,
                x,
                device=device,
                dtype=dtype,
                warmup=measure_cfg.warmup,
                repeats=measure_cfg.repeats,
                threads=measure_cfg.threads,
            )
        except Exception as exc:  # noqa: BLE001 - a pair that cannot run is a note, not a failure
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            notes.append(f"paired latency on {device}/{dtype}/batch {batch_size} failed: {first}")
            continue
        stats = pair.stats
        values = {
            PAIRED: float(pair.speedup),
            f"{PAIRED}_ci_low": float(stats.ci_low),
            f"{PAIRED}_ci_high": float(stats.ci_high),
            f"{PAIRED}_unstable": float(stats.unstable),
        }
        rows += [
            {"name": k, "value": v, "device": device, "dtype": dtype, "batch_size": batch_size}
            for k, v in values.items()
        ]
        if stats.unstable:
            notes.append(f"paired latency at batch {batch_size}: " + stats.describe())
    return rows, notes
