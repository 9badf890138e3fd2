"""Sweeps in recipes: any scalar field written as `{sweep: [a, b, c]}` expands into one variant per value.

Several sweeps give their cartesian product. Each variant gets a readable label built from the
shortest unambiguous tail of each swept field's path (`amount=0.5,lr=0.001`) and a folder-safe slug.

Example::

    variants = expand_sweeps({"steps": [{"technique": "magnitude_prune",
                                         "config": {"amount": {"sweep": [0.5, 0.8]}}}]})
    [v.label for v in variants]          # ['amount=0.5', 'amount=0.8']
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import re
from dataclasses import dataclass, field
from typing import Any

from modelscale.core.errors import ModelscaleError

Path_ = tuple[str | int, ...]
SCALARS = (str, int, float, bool, type(None))
MAX_SLUG = 80
MAX_VARIANTS = 1000  # each variant is a full run: more is a typo or a job for `modelscale search`


@dataclass
class Variant:
    """One point of a sweep: the recipe data with every sweep replaced by one value."""

    label: str  # readable: "amount=0.5,lr=0.001" ("default" without sweeps)
    slug: str  # folder-safe form of the label
    data: dict[str, Any]
    values: dict[str, Any] = field(default_factory=dict)  # full field path -> chosen value


def path_text(path: Path_) -> str:
    """("steps", 2, "config", "amount") -> "steps[2].config.amount"."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def is_sweep(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {"sweep"}


def find_sweeps(data: Any, path: Path_ = ()) -> list[tuple[Path_, list[Any]]]:
    """Every `{sweep: [...]}` in `data`, in document order, with its checked list of values."""
    if is_sweep(data):
        values = data["sweep"]
        where = path_text(path) or "recipe"
        if not isinstance(values, list) or not values:
            raise ModelscaleError(
                f"{where}: sweep needs a non-empty list of values, e.g. {{sweep: [0.3, 0.5]}}"
            )
        if not all(isinstance(v, SCALARS) for v in values):
            raise ModelscaleError(f"{where}: sweep values must be scalars (numbers, strings, booleans)")
        if len({repr(v) for v in values}) != len(values):
            raise ModelscaleError(f"{where}: sweep lists a value twice; remove the duplicate")
        return [(path, list(values))]
    found: list[tuple[Path_, list[Any]]] = []
    if isinstance(data, dict):
        for key, value in data.items():
            found += find_sweeps(value, (*path, str(key)))
    elif isinstance(data, list):
        for i, value in enumerate(data):
            found += find_sweeps(value, (*path, i))
    return found


def _set(data: Any, path: Path_, value: Any) -> None:
    for part in path[:-1]:
        data = data[part]
    data[path[-1]] = value


def _short_names(paths: list[Path_]) -> list[str]:
    """The shortest path tail naming each swept field unambiguously."""
    names = []
    for path in paths:
        for n in range(1, len(path) + 1):
            tail = path[-n:]
            if sum(1 for p in paths if p[-n:] == tail) == 1:
                text = path_text(tail)
                names.append(text[1:] if text.startswith(".") else text)
                break
    return names


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return repr(value)
    return str(value).lower() if isinstance(value, bool) or value is None else str(value)


def slugify(label: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9_.=+-]+", "_", label.replace(",", "_")).strip("._") or "variant"
    if len(slug) > MAX_SLUG:
        digest = hashlib.sha1(label.encode()).hexdigest()[:8]
        slug = f"{slug[: MAX_SLUG - 9]}-{digest}"
    return slug


def expand_sweeps(data: dict[str, Any]) -> list[Variant]:
    """The cartesian product of every sweep in `data` (one "default" variant when there is none)."""
    sweeps = find_sweeps(data)
    for path, _ in sweeps:
        if path and path[0] in ("name", "version"):
            raise ModelscaleError(
                f"{path_text(path)}: cannot be swept; sweep fields of model, data, steps ..."
            )
    if not sweeps:
        return [Variant("default", "default", copy.deepcopy(data))]
    count = 1
    for _, values in sweeps:
        count *= len(values)
    if count > MAX_VARIANTS:
        raise ModelscaleError(
            f"the recipe's sweeps give {count:,} variants (limit {MAX_VARIANTS:,}); sweep fewer values "
            "or split the recipe"
        )
    names = _short_names([p for p, _ in sweeps])
    variants, slugs = [], set()
    for combo in itertools.product(*(values for _, values in sweeps)):
        variant = copy.deepcopy(data)
        chosen = {}
        for (path, _), value in zip(sweeps, combo):
            _set(variant, path, value)
            chosen[path_text(path)] = value
        label = ",".join(f"{n}={_fmt(v)}" for n, v in zip(names, combo))
        slug = slugify(label)
        if slug in slugs:  # distinct values that print alike ("1" and 1): keep folders apart
            slug = f"{slug}-{hashlib.sha1(repr(combo).encode()).hexdigest()[:6]}"
        slugs.add(slug)
        variants.append(Variant(label, slug, variant, chosen))
    return variants
