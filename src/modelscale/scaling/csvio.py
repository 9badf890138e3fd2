"""Input checks for law fitting, and reading named numeric columns from a CSV file (stdlib csv only).

Every problem a user can fix raises `ModelscaleError` with one line: which column or value is wrong and
what is expected. The delimiter (comma, semicolon or tab) is detected from the header line.

Example::

    from modelscale.scaling.csvio import read_columns
    cols = read_columns("runs.csv", {"n": "params", "loss": "val_loss"})
    cols["n"], cols["loss"]          # float arrays
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from modelscale.core.errors import ModelscaleError


def positive_array(name: str, values) -> np.ndarray:
    """`values` as a 1-D float array; refuses non-numeric, non-finite and non-positive entries."""
    try:
        arr = np.asarray(values, dtype=float)
    except (TypeError, ValueError) as exc:
        raise ModelscaleError(f"{name} must be numbers; could not read them ({exc})") from None
    if arr.ndim != 1:
        arr = arr.ravel() if arr.ndim > 1 else arr.reshape(1)
    bad = np.flatnonzero(~np.isfinite(arr))
    if bad.size:
        raise ModelscaleError(
            f"{name} has a non-finite value ({arr[bad[0]]}) at index {bad[0]}; drop or fix that run"
        )
    bad = np.flatnonzero(arr <= 0)
    if bad.size:
        raise ModelscaleError(
            f"{name} must be positive (a power law is fitted in log space); got {arr[bad[0]]:g} at index "
            f"{bad[0]}; drop or fix that run"
        )
    return arr


def check_varies(name: str, arr: np.ndarray, law: str | None = None) -> None:
    """Refuse an input that is the same for every point (`law` names the form in the message)."""
    if arr.size and np.ptp(np.log(arr)) <= 1e-12 * max(1.0, float(np.abs(np.log(arr)).max())):
        law = law or f"a law in {name}"
        raise ModelscaleError(
            f"{name} is the same ({arr[0]:g}) for every run; {law} needs runs at several values of it"
        )


def _detect_dialect(first_line: str) -> str:
    counts = {sep: first_line.count(sep) for sep in (",", ";", "\t")}
    sep = max(counts, key=lambda s: counts[s])
    return sep if counts[sep] else ","


def read_columns(path: str | Path, columns: dict[str, str]) -> dict[str, np.ndarray]:
    """Read the numeric CSV columns named by the values of `columns`; returns arrays under its keys.

    Rows whose requested cells are all empty are skipped; a partly empty row is an error.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelscaleError(f"CSV file {str(path)!r} not found; pass the path of a file with a header row")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelscaleError(f"could not read {str(path)!r} as UTF-8 text ({exc})") from None
    lines = text.splitlines()
    if not lines or not lines[0].strip():
        raise ModelscaleError(f"{str(path)!r} is empty; it needs a header row naming the columns")
    reader = csv.reader(lines, delimiter=_detect_dialect(lines[0]))
    header = [h.strip() for h in next(reader)]
    missing = [name for name in columns.values() if name not in header]
    if missing:
        raise ModelscaleError(
            f"column(s) {', '.join(repr(m) for m in missing)} not in {path.name}; "
            f"available columns: {', '.join(header)}"
        )
    where = {key: header.index(name) for key, name in columns.items()}
    values: dict[str, list[float]] = {key: [] for key in columns}
    for line_no, row in enumerate(reader, start=2):
        cells = {key: (row[i].strip() if i < len(row) else "") for key, i in where.items()}
        if not any(cells.values()):
            continue
        for key, cell in cells.items():
            try:
                number = float(cell)
            except ValueError:
                shown = cell if cell else "an empty cell"
                raise ModelscaleError(
                    f"{path.name} line {line_no}, column {columns[key]!r}: {shown!r} is not a number; "
                    "fix or remove that row"
                ) from None
            if not math.isfinite(number):
                raise ModelscaleError(
                    f"{path.name} line {line_no}, column {columns[key]!r}: {cell!r} is not finite; "
                    "fix or remove that row"
                )
            values[key].append(number)
    return {key: np.asarray(v, dtype=float) for key, v in values.items()}
