"""Kernel choice by measurement: time each execution path of a layer against its float op, pick the fastest.

For one layer shape and one row count (batch × tokens) every candidate path and the float reference
run interleaved — round r times them in a rotated order, so drift and load hit all alike — and each
round gives a paired ratio  ratio_r = t_float,r / t_path,r  (> 1: the path is faster). A path's figure
is the median of its ratios (with the 25th-75th percentile as spread) after one warm-up call each,
for as many rounds as fit the time budget (at least 5). A path whose better of two first calls is over 2× slower
than the float op's (and takes over 1 ms) is not timed further: that one ratio stands.

Measurements are cached per process by (what is timed, shape, rows, dtype, device, threads), so a model
with 32 identical blocks times each shape once; `ChoiceCache.clear()` forgets them.

`measure_layer` times a weight-only layer's candidate paths (each through the layer's own forward)
against an nn.Linear of its shape; `pick` applies the rule: with prefer="speed" an integer path wins
only where it beat the float original in at least 3 of 4 paired rounds and by a median of at least 5%
(`MIN_GAIN`), else the float copy runs the layer.

Example::

    timings = time_paths(lambda: F.linear(x, w), {"int8_mm_bf16": lambda: layer_fn(x)}, budget_s=0.04)
    timings["int8_mm_bf16"].ratio              # float ms / path ms, paired median
    best = pick(timings, ["int8_mm_bf16", "float", "dequant"])
"""

from __future__ import annotations

import copy
import math
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

SLOW_FACTOR = 2.0  # a path this much slower than float on its first call is timed no further
SLOW_MS = 1.0
MIN_GAIN = 1.05  # prefer="speed": an integer path must beat float by this median paired ratio


@dataclass(frozen=True)
class Timing:
    """A path's paired timing against the float op: medians (ms) and the median ratio with its IQR."""

    ms: float
    float_ms: float
    ratio: float  # float ms / path ms (median of paired rounds); > 1 = faster than float
    ratio_q1: float
    ratio_q3: float
    rounds: int

    def to_dict(self) -> dict[str, Any]:
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in asdict(self).items()}


class ChoiceCache:
    """Measured timings keyed by (key parts); one per process unless a caller passes its own."""

    def __init__(self) -> None:
        self._entries: dict[tuple, dict[str, Timing]] = {}

    def get(self, key: tuple) -> dict[str, Timing] | None:
        return self._entries.get(key)

    def put(self, key: tuple, timings: dict[str, Timing]) -> None:
        self._entries[key] = dict(timings)

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


PROCESS_CACHE = ChoiceCache()  # measurements are facts about this process's machine and threads


def cache_key(what: Iterable[Any], shape: tuple[int, ...], rows: int, dtype: torch.dtype,
              device: torch.device) -> tuple:  # fmt: skip
    return (tuple(what), tuple(shape), int(rows), str(dtype), str(device), torch.get_num_threads())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_paths(
    reference: Callable[[], Any],
    paths: dict[str, Callable[[], Any]],
    *,
    budget_s: float,
    device: torch.device | str = "cpu",
    min_rounds: int = 5,
    max_rounds: int = 200,
    keep: Iterable[str] = (),
    warm_each: bool = False,
) -> dict[str, Timing]:
    """Paired, interleaved timings of each of `paths` against `reference` (the float op), in ms.

    Paths named in `keep` are timed every round however slow their first calls were. `warm_each` calls
    each side once untimed right before its timed call, so a small layer is timed with its own operands
    in cache rather than after whatever the previous path evicted (a slow dequantizing path writes a
    float copy of the weights and pushes the float reference's out of L2)."""
    keep = set(keep)
    device = torch.device(device)

    def timed(fn: Callable[[], Any]) -> float:
        if warm_each:
            fn()
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        return (time.perf_counter() - start) * 1e3

    names = list(paths)
    samples: dict[str, list[float]] = {n: [] for n in names}
    ref: list[float] = []
    ratios: dict[str, list[float]] = {n: [] for n in names}
    with torch.inference_mode():
        reference()
        for n in names:
            paths[n]()  # warm-up: first calls allocate and pick kernels
        t_ref = min(timed(reference), timed(reference))
        ref.append(t_ref)
        active = []
        for n in names:
            t = min(timed(paths[n]), timed(paths[n]))  # the better of two: one hiccup does not drop a path
            samples[n].append(t)
            ratios[n].append(t_ref / t)
            if n in keep or not (t > SLOW_FACTOR * t_ref and t > SLOW_MS):
                active.append(n)
        one_round = (t_ref + sum(samples[n][0] for n in active)) / 1e3 * (2 if warm_each else 1)
        rounds = int(max(min_rounds, min(max_rounds, budget_s / max(one_round, 1e-6))))
        for r in range(1, rounds):
            order = ["__float__", *active]
            shift = r % len(order)
            order = order[shift:] + order[:shift]
            if r % 2:
                order.reverse()
            this: dict[str, float] = {}
            for n in order:
                this[n] = timed(reference if n == "__float__" else paths[n])
            ref.append(this["__float__"])
            for n in active:
                samples[n].append(this[n])
                ratios[n].append(this["__float__"] / this[n])
    float_ms = statistics.median(ref)
    out = {}
    for n in names:
        q = _quartiles(ratios[n])
        out[n] = Timing(ms=statistics.median(samples[n]), float_ms=float_ms, ratio=statistics.median(ratios[n]),
                        ratio_q1=q[0], ratio_q3=q[1], rounds=len(samples[n]))  # fmt: skip
    return out


def _quartiles(values: list[float]) -> tuple[float, float]:
    if len(values) < 2:
        return values[0], values[0]
    q = statistics.quantiles(values, n=4)
    return q[0], q[2]


def fastest(timings: dict[str, Timing], allowed: Iterable[str]) -> str | None:
    """The allowed path with the highest median ratio (None if none was timed)."""
    best = [(timings[n].ratio, n) for n in allowed if n in timings]
    return max(best)[1] if best else None


def nearest_batch(rows: int, batches: tuple[int, ...]) -> int:
    """The measured row count closest to `rows` on a log scale (ties go to the larger)."""
    target = math.log2(max(rows, 1))
    return min(batches, key=lambda b: (abs(math.log2(b) - target), -b))


def pick(timings: dict[str, Timing], names: list[str]) -> str:
    """prefer="speed" ("float" among `names`): the fastest integer path if it beat the float original in
    at least 3 of 4 paired rounds (lower quartile of its ratios >= 1) by a median of at least
    `MIN_GAIN`, else the float copy; prefer="size": the fastest quantized path."""
    if "float" not in names:
        return fastest(timings, names)
    integer = fastest(timings, [n for n in names if n.startswith("int")])
    if integer is None:
        return "float"
    t = timings[integer]
    # a tie under noise keeps float: a 1-3% edge measured at apply time was 7% behind an hour later
    # on a 33 µs layer (256 -> 1024, int4 g32, batch 1, a busy 2-core machine)
    return integer if t.ratio_q1 >= 1.0 and t.ratio >= MIN_GAIN else "float"


def measure_layer(layer: Any, batch: int, paths: list, layouts: dict, device: torch.device,
                  cache: ChoiceCache | None = None) -> dict[str, Timing]:  # fmt: skip
    """Time each of `paths` of a weight-only Linear `layer` at `batch` rows against an nn.Linear of the
    same shape (Python call overhead included on both sides); cached by format, paths, shape, rows,
    dtype, device and threads."""
    cache = PROCESS_CACHE if cache is None else cache
    what = (layer.format, *(p.name for p in paths))
    key = cache_key(what, (layer.out_features, layer.in_features), batch, layer.weight_dtype, device)
    found = cache.get(key)
    if found is not None:
        return found
    x = torch.randn(batch, layer.in_features, generator=torch.Generator().manual_seed(batch))
    x = x.to(device, layer.weight_dtype)
    reference = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None)
    reference = reference.to(device, layer.weight_dtype).requires_grad_(False)
    with torch.no_grad():
        reference.weight.copy_(layer.dequantize().view(layer.out_features, -1))
        if layer.bias is not None:
            reference.bias.copy_(layer.bias)
    fns = {}
    for path in paths:  # a shallow copy per path shares every tensor and runs the layer's real forward
        probe = copy.copy(layer)
        probe._layouts, probe._device = layouts, device
        probe._set_route([(batch, path)])
        fns[path.name] = lambda probe=probe: probe(x)
    timings = time_paths(
        lambda: reference(x), fns, budget_s=layer.tune_ms / 1e3, device=device, warm_each=True
    )
    cache.put(key, timings)
    return timings
