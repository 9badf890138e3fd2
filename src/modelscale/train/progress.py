"""A rich progress bar for `fit`: steps done, epoch, live training loss and the last validation metric.

Shown only when asked for and stderr is a terminal; otherwise `make_progress` returns None and the
training loop pays nothing. The loss is read from the device at most ten times a second.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import torch

REFRESH_S = 0.1


class TrainProgress:
    def __init__(self, total_steps: int, done_steps: int = 0, console: Any = None) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TextColumn("{task.fields[val]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console if console is not None else Console(stderr=True),
        )
        self._task = self._progress.add_task(
            "train", total=total_steps, completed=done_steps, loss="-", val=""
        )
        self._progress.start()
        self._last = 0.0

    def step(self, step: int, epoch: int, epochs: int, loss: torch.Tensor) -> None:
        now = time.monotonic()
        if now - self._last < REFRESH_S:
            return
        self._last = now
        self._progress.update(
            self._task, completed=step, description=f"epoch {epoch}/{epochs}", loss=f"{loss.item():.4f}"
        )

    def epoch(self, row: dict[str, Any]) -> None:
        shown = {k: v for k, v in row.items() if k in ("val_loss", "val_accuracy", "val_bits_per_byte")}
        text = "  ".join(f"{k} {v:.4f}" for k, v in shown.items())
        self._progress.update(self._task, completed=row["step"], val=text)

    def close(self) -> None:
        self._progress.stop()


def make_progress(enabled: bool, total_steps: int, done_steps: int = 0) -> TrainProgress | None:
    if not enabled or not sys.stderr.isatty():
        return None
    return TrainProgress(total_steps, done_steps)
