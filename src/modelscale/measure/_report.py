"""Base for measurement reports: dataclasses that round-trip through JSON-safe dicts.

`to_dict()` turns a report (and nested reports, lists, tuples) into plain JSON data; non-finite
floats become None so the output is strict JSON. `from_dict()` rebuilds the report from the
declared field types, so nested reports come back as dataclasses again.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, TypeVar, Union, get_args, get_origin

R = TypeVar("R", bound="Report")


class Report:
    """Mixin for report dataclasses: `to_dict()` (JSON-safe) and `from_dict()` (rebuild)."""

    def to_dict(self) -> dict[str, Any]:
        return _plain(self)

    @classmethod
    def from_dict(cls: type[R], data: dict[str, Any]) -> R:
        return _build(cls, data)


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, bool | int | str) or value is None:
        return value
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:  # numpy / torch scalars
        return _plain(value.item())
    return str(value)  # dtypes, devices: stored by name


def _build(hint: Any, value: Any) -> Any:
    if value is None:
        return None
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(hint) if a is not type(None)]
        for arg in args:
            if dataclasses.is_dataclass(arg) and isinstance(value, dict):
                return _build(arg, value)
        return _build(args[0], value) if len(args) == 1 else value
    if dataclasses.is_dataclass(hint) and isinstance(value, dict):
        hints = typing.get_type_hints(hint)
        known = {f.name for f in dataclasses.fields(hint) if f.init}
        return hint(**{k: _build(hints[k], v) for k, v in value.items() if k in known})
    if origin is list and isinstance(value, list):
        (inner,) = get_args(hint) or (Any,)
        return [_build(inner, v) for v in value]
    if origin is tuple and isinstance(value, list | tuple):
        args = get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_build(args[0], v) for v in value)
        return tuple(value)
    if origin is dict and isinstance(value, dict):
        args = get_args(hint)
        inner = args[1] if len(args) == 2 else Any
        return {k: _build(inner, v) for k, v in value.items()}
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value
