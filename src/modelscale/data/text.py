"""Byte-level text corpora: text:<file-or-dir> and pystdlib (the Python standard library's own source).

A corpus is one byte string: a file's bytes, or the text files of a folder (*.txt, *.md, *.py, *.rst,
sorted by path, joined with a newline). `pystdlib` reads the standard library's .py files found via
`sysconfig.get_paths()["stdlib"]`, in sorted order, skipping site-packages and test folders, up to
`max_bytes` (8 MB by default) so loading stays quick.

Example::

    data, meta = read_pystdlib(max_bytes=1_000_000)
    len(data), meta["files"]              # about 1 MB from the first files in sorted order
"""

from __future__ import annotations

import sysconfig
from pathlib import Path
from typing import Any

from modelscale.core.errors import ModelscaleError

TEXT_SUFFIXES = (".txt", ".md", ".py", ".rst")
PYSTDLIB_MAX_BYTES = 8_000_000
_SKIP_DIRS = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}


def _join(files: list[Path], max_bytes: int | None) -> tuple[bytes, int]:
    """Concatenate files (newline-separated) up to max_bytes; returns the bytes and files used."""
    parts: list[bytes] = []
    total = used = 0
    for path in files:
        if max_bytes is not None and total >= max_bytes:
            break
        try:
            chunk = path.read_bytes() + b"\n"
        except OSError:
            continue  # unreadable file (permissions, broken link): skip it
        parts.append(chunk)
        total += len(chunk)
        used += 1
    data = b"".join(parts)
    return (data[:max_bytes] if max_bytes is not None else data), used


def read_text(target: str, *, max_bytes: int | None = None) -> tuple[bytes, dict[str, Any]]:
    """Bytes of one file, or of all text files under a folder."""
    path = Path(target).expanduser()
    if path.is_file():
        data = path.read_bytes()
        data = data[:max_bytes] if max_bytes is not None else data
        return data, {"source": str(path), "files": 1}
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in TEXT_SUFFIXES and p.is_file())
        if not files:
            raise ModelscaleError(
                f"no text files ({', '.join(TEXT_SUFFIXES)}) under {path}; add some or point to a file"
            )
        data, used = _join(files, max_bytes)
        return data, {"source": str(path), "files": used}
    raise ModelscaleError(
        f"text path not found: {path}; give a text file or a folder of .txt/.md/.py/.rst files"
    )


def stdlib_files() -> list[Path]:
    """The standard library's .py files, sorted, without site-packages and test folders."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = []
    for path in root.rglob("*.py"):
        rel = path.relative_to(root).parts
        if _SKIP_DIRS.isdisjoint(rel[:-1]) and path.is_file():
            files.append(path)
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def read_pystdlib(*, max_bytes: int | None = PYSTDLIB_MAX_BYTES) -> tuple[bytes, dict[str, Any]]:
    """The Python standard library's source as one byte string (capped at max_bytes)."""
    files = stdlib_files()
    if not files:
        root = sysconfig.get_paths()["stdlib"]
        raise ModelscaleError(f"no .py files found under the stdlib folder {root}; use text:<path> instead")
    data, used = _join(files, max_bytes)
    return data, {"source": sysconfig.get_paths()["stdlib"], "files": used}
