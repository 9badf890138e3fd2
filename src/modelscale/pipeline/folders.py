"""Run-folder helpers: the step-complete marker and the one-runner-per-folder lock."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from modelscale.core.errors import ModelscaleError

MARKER = "DONE.json"


def read_marker(step_dir: Path) -> dict[str, Any] | None:
    """The step-complete marker of `step_dir`, or None when the step did not finish."""
    path = step_dir / MARKER
    try:
        marker = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) and marker.get("status") == "completed" else None


@contextlib.contextmanager
def run_lock(
    run_path: Path,
    *,
    name: str = ".lock",
    busy: str = "another process is running a recipe in {path}; wait for it to finish or use another run_dir",
) -> Iterator[None]:
    """One runner per folder: an advisory lock the OS drops when the process dies (even SIGKILL).
    `busy` is the one-line error when another process holds it (`{path}` is filled in)."""
    run_path.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # no flock on this platform: run unlocked
        yield
        return
    with open(run_path / name, "a+") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise ModelscaleError(busy.format(path=run_path)) from None
        yield
