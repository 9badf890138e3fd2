"""Output locations are checked before any work, and a failed command leaves nothing behind.

`undo_on_failure(args)` wraps one subcommand: every output option it has (`--out`, `--run-dir`, a
file `--store`) must name a place that can be written — not an existing file where a folder is
wanted, not below a file, not read-only — which is tried for real (a folder made and a probe file
written) before the command starts. If the command then fails, every file and folder it created at
those places is removed again; what was there before is left alone.

`PartialFailure` is what a command raises when it did its work but some of it failed (a recipe with
a failed variant): the CLI prints the result, then the one-line reason, and exits 1.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from modelscale.core.errors import ModelscaleError

# command -> (option attribute, what it names: "dir" or "file")
OUTPUTS: dict[str, tuple[tuple[str, str], ...]] = {
    "train": (("out", "dir"),),
    "compress": (("out", "dir"),),
    "export": (("out", "dir"),),
    "report": (("out", "dir"),),
    "search": (("out", "dir"),),
    "demo": (("out", "dir"),),
    "scale": (("out", "dir"), ("store", "file")),
    "run": (("run_dir", "dir"), ("store", "file")),
}
DEFAULT_STORE = "runs/modelscale.db"
STORE_SIDE_FILES = ("-wal", "-shm", "-journal")


class PartialFailure(Exception):  # noqa: N818 - a result, not only an error
    """The command ran, but part of it failed: print `result`, then this message; exit 1."""

    def __init__(self, message: str, result: Any) -> None:
        super().__init__(message)
        self.result = result


def _option(attr: str) -> str:
    return "--" + attr.replace("_", "-")


def _first_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_writable(path: str | Path, option: str, kind: str) -> list[Path]:
    """Raise one line unless `path` can be written as a `kind` ("dir" or "file"); returns what was made."""
    path = Path(path).expanduser()
    if kind == "dir" and path.exists() and not path.is_dir():
        raise ModelscaleError(f"{option} {path} is an existing file, not a folder; give a folder path")
    if kind == "file" and path.is_dir():
        raise ModelscaleError(
            f"{option} {path} is a folder; give a file path (e.g. {path / 'modelscale.db'})"
        )
    base = _first_existing(path if kind == "dir" else path.parent)
    if not base.is_dir():
        raise ModelscaleError(f"{option} {path} lies below the file {base}; give a path in a folder")
    folder = path if kind == "dir" else path.parent
    made: list[Path] = []
    probe = folder / f".modelscale-probe-{os.getpid()}"
    try:
        missing = []
        p = folder
        while not p.exists():
            missing.append(p)
            p = p.parent
        for p in reversed(missing):
            p.mkdir()
            made.append(p)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        for p in reversed(made):
            with contextlib.suppress(OSError):
                p.rmdir()
        reason = exc.strerror or type(exc).__name__
        raise ModelscaleError(f"cannot write {option} {path} ({reason}); give a writable location") from None
    return made


def _outputs(args: argparse.Namespace) -> list[tuple[Path, str, str]]:
    out = []
    for attr, kind in OUTPUTS.get(getattr(args, "command", ""), ()):
        value = getattr(args, attr, None)
        if value is None and attr == "store":
            value = DEFAULT_STORE
        if value is None or (attr == "store" and "://" in str(value)):
            continue
        out.append((Path(str(value)).expanduser(), _option(attr), kind))
    return out


def _entries(path: Path) -> set[Path]:
    if not path.exists():
        return set()
    if not path.is_dir():
        return {path}
    found = {path}
    for root, dirs, files in os.walk(path):
        found.update(Path(root) / d for d in dirs)
        found.update(Path(root) / f for f in files)
    return found


@contextlib.contextmanager
def undo_on_failure(args: argparse.Namespace) -> Iterator[None]:
    """Check the command's output places first; on failure remove what the command created there."""
    outputs = _outputs(args)
    before: dict[Path, set[Path]] = {}
    made: list[Path] = []
    for path, option, kind in outputs:
        watched = [path] if kind == "dir" else [path, *(Path(f"{path}{s}") for s in STORE_SIDE_FILES)]
        for w in watched:
            before[w] = _entries(w)
        made += check_writable(path, option, kind)
    try:
        yield
    except PartialFailure:
        raise
    except Exception:  # an interrupt keeps what a resumable run wrote
        for watched, existed in before.items():
            for entry in sorted(_entries(watched) - existed, key=lambda p: len(p.parts), reverse=True):
                with contextlib.suppress(OSError):
                    shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
        for p in sorted(made, key=lambda p: len(p.parts), reverse=True):
            with contextlib.suppress(OSError):
                p.rmdir()
        raise
