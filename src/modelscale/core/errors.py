"""User-facing errors: one line that names the problem and the fix.

Raise `ModelscaleError` for anything a user can correct (unknown name, bad value, missing file).
The CLI prints its message on one line and exits with code 2; it never shows a traceback for it.
"""

from __future__ import annotations

from collections.abc import Iterable


class ModelscaleError(ValueError):
    """A problem with the user's input, with a message that says how to fix it."""


def unknown_name(kind: str, name: str, valid: Iterable[str]) -> ModelscaleError:
    """Error for an unknown registry key, listing the valid options."""
    options = ", ".join(sorted(valid)) or "(none registered)"
    return ModelscaleError(f"unknown {kind} {name!r}; valid options: {options}")


def check(condition: bool, message: str) -> None:
    """Raise `ModelscaleError(message)` unless `condition` holds."""
    if not condition:
        raise ModelscaleError(message)


class ModelscaleWarning(UserWarning):
    """Something a user may want to fix but can run with (the CLI prints it as one line)."""
