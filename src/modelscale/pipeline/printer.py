"""Progress output of the runner: one line per step on stderr, colored with rich on a terminal."""

from __future__ import annotations

import sys


class Printer:
    """One line per step on stderr; colored with rich when stderr is a terminal."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.console = None
        if enabled and sys.stderr.isatty():
            from rich.console import Console

            self.console = Console(stderr=True, highlight=False)

    def __call__(self, text: str, style: str = "") -> None:
        if not self.enabled:
            return
        if self.console is not None:
            from rich.markup import escape

            self.console.print(f"[{style}]{escape(text)}[/]" if style else escape(text), soft_wrap=True)
        else:
            print(text, file=sys.stderr, flush=True)


def headline_text(h: dict[str, float]) -> str:
    from modelscale.core.formatting import human, millis

    parts = []
    if "quality.accuracy" in h:
        parts.append(f"acc {100 * h['quality.accuracy']:.2f}%")
    if "quality.bits_per_byte" in h:
        parts.append(f"bpb {h['quality.bits_per_byte']:.3f}")
    if "params.total" in h:
        nz = (
            f" ({human(h['params.nonzero'])} nonzero)"
            if h.get("params.nonzero", h["params.total"]) < h["params.total"]
            else ""
        )
        parts.append(f"params {human(h['params.total'])}{nz}")
    if "size.file_bytes" in h:
        parts.append(f"file {h['size.file_bytes'] / 1e6:.3f} MB")
    if "size.zipped_bytes" in h:
        parts.append(f"zipped {h['size.zipped_bytes'] / 1e6:.3f} MB")
    if "latency.median_ms" in h:
        parts.append(f"latency {millis(h['latency.median_ms'])} ms")
    return "  ".join(parts)
