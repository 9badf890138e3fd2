"""The Pareto front of a set of points: those no other point beats on every objective at once.

Point `a` dominates `b` when `a` is at least as good on every objective (higher for `maximize`,
lower for `minimize`) and strictly better on at least one. The front is every point that nothing
dominates; equal points are all on it. A point with a missing (None) or NaN objective is never on it.

Example::

    points = [{"acc": 0.98, "mb": 0.35}, {"acc": 0.97, "mb": 0.11}, {"acc": 0.95, "mb": 0.20}]
    pareto_front(points, maximize="acc", minimize="mb")     # [0, 1]: the third is beaten by the second
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from modelscale.core.errors import ModelscaleError


def _keys(value: str | Sequence[str] | None, what: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    keys = list(value)
    if not all(isinstance(k, str) for k in keys):
        raise ModelscaleError(f"{what} must be a key or a list of keys (strings); got {value!r}")
    return keys


def _usable(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def pareto_front(
    points: Sequence[Mapping[str, Any]],
    maximize: str | Sequence[str] | None = None,
    minimize: str | Sequence[str] | None = None,
) -> list[int]:
    """Indices (in input order) of the points on the Pareto front of the given objectives.

    `points`: mappings holding each objective by key. `maximize` / `minimize`: a key or a list of keys
    (e.g. maximize="accuracy", minimize=["params", "latency_ms"]); at least one objective in all.
    """
    up, down = _keys(maximize, "maximize"), _keys(minimize, "minimize")
    if not up and not down:
        raise ModelscaleError("pareto_front needs at least one objective; give maximize= and/or minimize=")
    if set(up) & set(down):
        raise ModelscaleError(f"a key cannot be both maximized and minimized: {sorted(set(up) & set(down))}")
    # every objective as "larger is better"
    vectors: list[tuple[float, ...] | None] = []
    for point in points:
        values = [point.get(k) for k in up] + [point.get(k) for k in down]
        if all(_usable(v) for v in values):
            vectors.append(
                tuple([float(v) for v in values[: len(up)]] + [-float(v) for v in values[len(up) :]])
            )
        else:
            vectors.append(None)
    front = []
    for i, vi in enumerate(vectors):
        if vi is None:
            continue
        dominated = any(
            vj is not None and all(b >= a for a, b in zip(vi, vj)) and any(b > a for a, b in zip(vi, vj))
            for j, vj in enumerate(vectors)
            if j != i
        )
        if not dominated:
            front.append(i)
    return front
