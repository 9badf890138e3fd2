"""Several models timed interleaved in one loop, with paired statistics for the pairs that matter.

`measure_latency_pair` times two models; comparing execution paths of one model (eager, compiled, an
ONNX Runtime session) or of two models on each path needs more than two in the same run, so that a
busy neighbour hits all of them alike. `measure_latency_group` runs every model once per pass, the
order reversed every other pass (a b c | c b a | ...), in the same loop as `measure.latency`, and
gives each requested pair (a, b) the statistics of `measure.paired_stats`: the median of the
per-pass ratios a_i / b_i with its hierarchical bootstrap 95% interval over the rounds the passes
were timed in (the models are not copied between rounds here: a compiled module or an ONNX Runtime
session is timed as it is) and the unstable flag, the machine watched meanwhile. Rounds continue
until every pair's interval is within `target_width`, the time budget is spent, or `max_repeats`.

Example::

    from modelscale.measure.latency_group import measure_latency_group
    group = measure_latency_group({"eager": model, "compiled": compiled}, x, [("eager", "compiled")])
    print(group.pairs["eager/compiled"].describe(), group.latency["compiled"].median_ms)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from modelscale.core.errors import ModelscaleError
from modelscale.measure._report import Report
from modelscale.measure.latency import CHECK_RESAMPLES, MIN_ROUNDS, LatencyReport, _time_models
from modelscale.measure.paired_stats import TARGET_WIDTH, PairStats, machine_load, pair_stats, ratio_interval


@dataclass
class GroupTiming(Report):
    """Per-model latency (all timed interleaved) and paired statistics of the requested pairs."""

    names: list[str]
    latency: dict[str, LatencyReport]
    pairs: dict[str, PairStats] = field(default_factory=dict)  # "a/b" -> stats of a_i / b_i (> 1: b faster)
    load_before: float | None = None
    load_after: float | None = None


def pair_key(a: str, b: str) -> str:
    return f"{a}/{b}"


def measure_latency_group(
    models: dict[str, nn.Module],
    example_inputs: Any,
    pairs: Sequence[tuple[str, str]],
    *,
    inputs: dict[str, Any] | None = None,
    device: str = "cpu",
    dtype: torch.dtype | str | None = None,
    warmup: int = 5,
    repeats: int = 30,
    threads: int | None = None,
    target_width: float = TARGET_WIDTH,
    time_budget_s: float = 2.0,
    max_repeats: int = 2000,
) -> GroupTiming:
    """Time every model of `models` interleaved; `inputs` maps a name to its own inputs (default
    `example_inputs`). At least `repeats` passes in `MIN_ROUNDS` rounds, then more until each pair's
    95% interval is within `target_width` (relative), `time_budget_s` seconds of timing are spent,
    or `max_repeats` passes."""
    names = list(models)
    if not names:
        raise ModelscaleError("measure_latency_group needs at least one model")
    for a, b in pairs:
        if a not in models or b not in models or a == b:
            raise ModelscaleError(f"pair ({a!r}, {b!r}) must name two different models of {names}")
    if not (isinstance(target_width, int | float) and target_width > 0 and math.isfinite(target_width)):
        raise ModelscaleError(f"target_width must be a positive number, got {target_width!r}")
    if not (isinstance(time_budget_s, int | float) and 0 <= time_budget_s < 3600):
        raise ModelscaleError(
            f"time_budget_s must be a number of seconds in [0, 3600), got {time_budget_s!r}"
        )
    index = {n: i for i, n in enumerate(names)}
    wanted = [(index[a], index[b]) for a, b in pairs]

    def enough(samples: list[list[float]], rounds: list[int]) -> bool:
        for i, j in wanted:
            ratio, lo, hi, _ = ratio_interval(
                samples[i], samples[j], rounds=rounds, resamples=CHECK_RESAMPLES
            )
            if not (math.isfinite(ratio) and (hi - lo) / ratio <= target_width):
                return False
        return True

    own = inputs or {}
    load_before = machine_load()
    timing = _time_models(
        [models[n] for n in names],
        [own.get(n, example_inputs) for n in names],
        device=device,
        dtype=dtype,
        warmup=warmup,
        repeats=repeats,
        threads=threads,
        enough=enough if wanted else None,
        time_budget_s=float(time_budget_s),
        max_repeats=max(int(max_repeats), repeats),
        min_rounds=MIN_ROUNDS,
    )
    reports, samples = timing.reports, timing.samples
    load_after = machine_load()
    group = GroupTiming(
        names=names,
        latency=dict(zip(names, reports)),
        load_before=load_before,
        load_after=load_after,
    )
    for (a, b), (i, j) in zip(pairs, wanted):
        group.pairs[pair_key(a, b)] = pair_stats(
            samples[i],
            samples[j],
            rounds=timing.rounds,
            load_before=load_before,
            load_after=load_after,
            threads=timing.threads,
            target_width=float(target_width),
            contention=timing.contention,
        )
    return group
