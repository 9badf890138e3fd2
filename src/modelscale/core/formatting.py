"""Number and table formatting shared by every layer that prints (pipeline, scaling, report, CLI).

Counts use SI prefixes (1.23 M, 4.09 G), sizes MB (10^6 bytes), latencies milliseconds; a missing or
non-finite value prints as an em dash. It sits in `core` so that nothing below the report layer has to
import the report to format a number.

Example::

    from modelscale.core.formatting import human, table
    print(table(["model", "params"], [["cnn", human(94190)]], markdown=False))
"""

from __future__ import annotations

import math

_PREFIXES = ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K"))
DASH = "—"


def human(value: float | None, unit: str = "") -> str:
    """1234567 -> '1.23 M'; 4.089e9 -> '4.09 G'; small numbers as they are."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return DASH
    for scale, prefix in _PREFIXES:
        if abs(value) >= scale:
            return f"{value / scale:.2f} {prefix}{unit}".rstrip()
    text = f"{value:.0f}" if float(value).is_integer() else f"{value:.3g}"
    return f"{text} {unit}".rstrip()


def megabytes(nbytes: int | None) -> str:
    if nbytes is None:
        return DASH
    mb = nbytes / 1e6
    return f"{mb:.2f}" if mb >= 0.1 else f"{mb:.4f}"


def millis(ms: float | None) -> str:
    if ms is None or not math.isfinite(ms):
        return DASH
    if ms >= 100:
        return f"{ms:.1f}"
    return f"{ms:.2f}" if ms >= 1 else f"{ms:.3f}"


def percent(fraction: float | None) -> str:
    return DASH if fraction is None or not math.isfinite(fraction) else f"{100 * fraction:.2f} %"


def times(ratio: float | None) -> str:
    return DASH if ratio is None or not math.isfinite(ratio) else f"{ratio:.2f}×"


def number(value: float | None, digits: int = 4) -> str:
    return DASH if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def signed(value: float | None, kind: str) -> str:
    """A quality delta: percentage points for rates, plain numbers for losses."""
    if value is None or not math.isfinite(value):
        return DASH
    return f"{100 * value:+.2f} pp" if kind == "rate" else f"{value:+.4f}"


def table(headers: list[str], rows: list[list[str]], *, markdown: bool = True) -> str:
    """A Markdown table, or space-aligned text with the same cells."""
    if markdown:
        align = ["---"] + ["---:"] * (len(headers) - 1)
        lines = [headers, align, *rows]
        return "\n".join("| " + " | ".join(cells) + " |" for cells in lines)
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]

    def fmt(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = [c.rjust(w) for c, w in zip(cells[1:], widths[1:])]
        return "  ".join([first, *rest]).rstrip()

    return "\n".join([fmt(headers), "  ".join("-" * w for w in widths), *(fmt(r) for r in rows)])
