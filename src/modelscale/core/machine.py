"""Machine notes stored next to measured results: CPU, cores, threads, versions, date, load average.

Benchmarks and `export_command` write these beside every timing so a number can be judged later (a
shared, loaded machine inflates wall time). Standard library only at import: torch's version and
thread count are reported when torch is already imported or named in `packages`, so a script that
never loads torch (the scaling-law fit) does not load it here either.

Example::

    from modelscale.core.machine import machine_notes
    notes = machine_notes(threads=2, packages=("numpy", "onnxruntime"))
    notes["cpu"], notes["threads"], notes["numpy"], notes["load_average"]
    payload = {"machine": notes | {"argv": sys.argv[1:]}, "results": rows}
"""

from __future__ import annotations

import datetime
import importlib
import os
import platform
import sys
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import Any


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo; else what `platform` knows; else "unknown"."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def package_version(name: str) -> str | None:
    """Installed version of distribution `name` (importlib.metadata), or None when it is not installed.

    A module already imported under `name` but installed under another distribution name (for
    example `onnxruntime` from `onnxruntime-gpu`) reports its `__version__`.
    """
    try:
        return version(name)
    except PackageNotFoundError:
        found = getattr(sys.modules.get(name), "__version__", None)
        return None if found is None else str(found)


def machine_notes(threads: int | None = None, packages: Sequence[str] = ()) -> dict[str, Any]:
    """Notes on the machine and software a measurement ran on, as a JSON-safe flat dict.

    Keys: `cpu`, `logical_cpus`, `threads` (the given count, else torch's when torch is loaded; absent
    when neither), `platform`, `python`, `torch` (when torch is already imported or in `packages`), one
    key per name in `packages` (its version, None if not installed), `date` (UTC, ISO 8601) and
    `load_average` (1, 5 and 15 minutes when the notes are taken; None where the OS has none).
    Callers add their own keys on top (`notes | {"argv": ...}`).
    """
    names = (packages,) if isinstance(packages, str) else tuple(packages)
    torch = sys.modules.get("torch")
    if torch is None and "torch" in names:
        torch = importlib.import_module("torch")
    if threads is None and torch is not None:
        threads = torch.get_num_threads()
    notes: dict[str, Any] = {"cpu": cpu_model(), "logical_cpus": os.cpu_count()}
    if threads is not None:
        notes["threads"] = threads
    notes["platform"] = platform.platform()
    notes["python"] = platform.python_version()
    if torch is not None:
        notes["torch"] = str(torch.__version__)
    for name in names:
        if name != "torch":
            notes[name] = package_version(name)
    notes["date"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    notes["load_average"] = [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None
    return notes
