"""What the report reads from a step folder besides the store: the records a technique step added.

- `load_step_model(folder, cache)`: the ModelBundle of a step folder, loaded once per report.
- `step_record(folder, technique)`: the ChangeRecord a technique step added (its `layers` rows).
- `numeric_keys(layers)` / `derived_fields(row)`: which per-layer numbers are worth plotting.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

NUMERIC_SKIP = {"numel"}


def load_step_model(folder: Path, cache: dict[str, Any]) -> Any:
    """The ModelBundle saved in `folder`, loaded once per report."""
    from modelscale.models.loading import load_model_dir

    key = str(Path(folder).resolve())
    if key not in cache:
        bundle = load_model_dir(folder)
        bundle.model.eval()
        cache[key] = bundle
    return cache[key]


def step_record(folder: Path, technique: str) -> dict[str, Any] | None:
    """The last record of `technique` in the step's manifest: the one this step added."""
    from modelscale.core.saving import read_manifest

    records = read_manifest(folder).get("records", [])
    return next((r for r in reversed(records) if r.get("technique") == technique), None)


def numeric_keys(layers: list[dict[str, Any]]) -> list[str]:
    """The numeric fields present in a record's layer rows, in first-seen order."""
    keys: list[str] = []
    for row in layers:
        for k, v in row.items():
            if k in NUMERIC_SKIP or k in keys or isinstance(v, bool):
                continue
            if isinstance(v, int | float):
                keys.append(k)
    return keys


def derived_fields(row: dict[str, Any]) -> dict[str, float]:
    """Numbers worth plotting that a record implies but does not hold (rank share, byte ratio)."""
    out: dict[str, float] = {}
    if isinstance(row.get("rank"), int | float) and row.get("full_rank"):
        out["rank_fraction"] = row["rank"] / row["full_rank"]
    if row.get("bytes") and isinstance(row.get("float_bytes"), int | float):
        out["compression"] = row["float_bytes"] / row["bytes"]
    return out
