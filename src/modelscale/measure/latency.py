"""Latency of a forward pass: warm-up, many timed repeats, median and p90, and throughput.

Each repeat times one forward under `torch.inference_mode()`: on CPU with `time.perf_counter`, on
CUDA with a pair of `torch.cuda.Event`s and a synchronize (the wall clock would only time the
kernel launches). The report records what the number depends on: batch size, CPU threads, device,
dtype, warm-up and repeat counts. Two models are compared in one process and interleaved
(a, b, b, a, a, b, ...) so that drifting clocks, caches and neighbours hit both alike; the result
is the median of the per-pair ratios a_i / b_i with its bootstrap 95% interval, repeated in rounds
until the interval is narrow enough or the time budget is spent, with the machine's load recorded
before and after and the measurement flagged unstable where it cannot be trusted
(`measure.paired_stats`). Threads: `threads=None` keeps torch's current intra-op count (the CLI
passes `--threads`, default 1: one thread per side is what a shared machine can time reproducibly).

Example::

    from modelscale.measure.latency import measure_latency, measure_latency_pair
    rep = measure_latency(model, torch.randn(32, 1, 8, 8), repeats=50)
    pair = measure_latency_pair(dense, pruned, torch.randn(32, 1, 8, 8))
    print(rep.median_ms, rep.p90_ms, pair.speedup, pair.stats.describe())
"""

from __future__ import annotations

import contextlib
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from modelscale.core.errors import ModelscaleError
from modelscale.measure._common import (
    batch_size,
    dtype_name,
    inputs_for,
    model_dtype,
    num_threads,
    percentile,
    prepared,
    resolve_device,
    resolve_dtype,
)
from modelscale.measure._report import Report
from modelscale.measure.paired_stats import TARGET_WIDTH, PairStats, machine_load, pair_stats


@dataclass
class LatencyReport(Report):
    """Forward-pass latency over `repeats` timed runs after `warmup` untimed ones."""

    median_ms: float
    p90_ms: float
    mean_ms: float
    min_ms: float
    max_ms: float
    std_ms: float
    throughput: float  # items per second at the median: batch_size / median
    batch_size: int
    repeats: int
    warmup: int
    threads: int  # torch intra-op CPU threads in effect
    device: str
    device_name: str
    dtype: str
    timer: str  # "perf_counter" (CPU) or "cuda_event"
    interleaved: bool = False  # measured alternating with another model (see LatencyPair)


@dataclass
class LatencyPair(Report):
    """Two models timed interleaved in one process; speedup = median of per-pair ratios a_i / b_i."""

    a: LatencyReport
    b: LatencyReport
    speedup: float  # > 1: b is faster than a (stats.ratio; read it with stats.verdict)
    stats: PairStats | None = None

    @property
    def unstable(self) -> bool:
        return self.stats is None or self.stats.unstable


def _check_counts(warmup: int, repeats: int) -> None:
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ModelscaleError(f"warmup must be an integer >= 0, got {warmup!r}")
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ModelscaleError(f"repeats must be an integer >= 1, got {repeats!r}")


def _timer(device: torch.device) -> tuple[str, Callable[[Callable[[], Any]], float]]:
    """A function that runs `fn` once and returns its duration in milliseconds."""
    if device.type == "cuda":

        def cuda_time(fn: Callable[[], Any]) -> float:
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize(device)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize(device)
            return float(start.elapsed_time(end))

        return "cuda_event", cuda_time

    def cpu_time(fn: Callable[[], Any]) -> float:
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3

    return "perf_counter", cpu_time


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    from modelscale.core.machine import cpu_model

    return cpu_model()


def _summarize(
    samples: list[float],
    *,
    batch: int,
    warmup: int,
    threads: int,
    device: torch.device,
    dtype: torch.dtype,
    timer: str,
    interleaved: bool,
) -> LatencyReport:
    median = statistics.median(samples)
    return LatencyReport(
        median_ms=median,
        p90_ms=percentile(samples, 90),
        mean_ms=statistics.fmean(samples),
        min_ms=min(samples),
        max_ms=max(samples),
        std_ms=statistics.pstdev(samples),
        throughput=batch / (median / 1e3) if median > 0 else float("inf"),
        batch_size=batch,
        repeats=len(samples),
        warmup=warmup,
        threads=threads,
        device=str(device),
        device_name=_device_name(device),
        dtype=dtype_name(dtype),
        timer=timer,
        interleaved=interleaved,
    )


def _time_models(
    models: list[nn.Module],
    inputs: list[Any],
    *,
    device: str,
    dtype: Any,
    warmup: int,
    repeats: int,
    threads: int | None,
    enough: Callable[[list[list[float]]], bool] | None = None,
    time_budget_s: float = 0.0,
    max_repeats: int = 0,
) -> tuple[list[LatencyReport], list[list[float]], int]:
    """Reports, raw samples (ms) and the thread count; after `repeats`, rounds continue until
    `enough(samples)`, `time_budget_s` of timing or `max_repeats` per model."""
    _check_counts(warmup, repeats)
    dev = resolve_device(device)
    dt = resolve_dtype(dtype)
    with contextlib.ExitStack() as stack:
        ready = [stack.enter_context(prepared(m, dev, dt)) for m in models]
        args = [inputs_for(m, x, dev, dt) for m, x in zip(ready, inputs)]
        in_effect = stack.enter_context(num_threads(threads))
        stack.enter_context(torch.inference_mode())
        timer_name, timed = _timer(dev)
        calls = [lambda m=m, a=a: m(*a) for m, a in zip(ready, args)]
        for _ in range(warmup):
            for fn in calls:
                fn()
        samples: list[list[float]] = [[] for _ in calls]
        order = list(range(len(calls)))
        started = time.perf_counter()
        target = repeats
        r = 0
        while True:
            while r < target:
                for i in order if r % 2 == 0 else order[::-1]:  # a b | b a | a b ...: no fixed position
                    samples[i].append(timed(calls[i]))
                r += 1
            if enough is None or enough(samples):
                break
            if time.perf_counter() - started >= time_budget_s or r >= max_repeats:
                break
            target = min(max_repeats, r + max(repeats // 2, 10))
    reports = [
        _summarize(
            s,
            batch=batch_size(x),
            warmup=warmup,
            threads=in_effect,
            device=dev,
            dtype=dt or model_dtype(m),
            timer=timer_name,
            interleaved=len(models) > 1,
        )
        for s, x, m in zip(samples, inputs, models)
    ]
    return reports, samples, in_effect


def measure_latency(
    model: nn.Module,
    example_inputs: Any,
    *,
    device: str = "cpu",
    dtype: torch.dtype | str | None = None,
    warmup: int = 5,
    repeats: int = 30,
    threads: int | None = None,
) -> LatencyReport:
    """Time `model(*example_inputs)` on `device` (a converted copy if the model lives elsewhere)."""
    (report,), _, _ = _time_models(
        [model], [example_inputs], device=device, dtype=dtype, warmup=warmup, repeats=repeats, threads=threads
    )
    return report


def measure_latency_pair(
    a: nn.Module,
    b: nn.Module,
    example_inputs: Any,
    *,
    inputs_b: Any = None,
    device: str = "cpu",
    dtype: torch.dtype | str | None = None,
    warmup: int = 5,
    repeats: int = 30,
    threads: int | None = None,
    target_width: float = TARGET_WIDTH,
    time_budget_s: float = 2.0,
    max_repeats: int = 2000,
) -> LatencyPair:
    """Time `a` and `b` interleaved in this process; `inputs_b` defaults to the same inputs.

    At least `repeats` pairs; then more, in rounds, until the 95% interval of the ratio is within
    `target_width` (relative), `time_budget_s` seconds of timing are spent, or `max_repeats` pairs.
    `speedup` is the robust ratio; `stats` says how far it can be trusted (`measure.paired_stats`)."""
    from modelscale.measure.paired_stats import ratio_interval

    if not (isinstance(target_width, int | float) and target_width > 0 and math.isfinite(target_width)):
        raise ModelscaleError(f"target_width must be a positive number, got {target_width!r}")
    if not (isinstance(time_budget_s, int | float) and 0 <= time_budget_s < 3600):
        raise ModelscaleError(
            f"time_budget_s must be a number of seconds in [0, 3600), got {time_budget_s!r}"
        )

    def enough(samples: list[list[float]]) -> bool:
        ratio, lo, hi, _ = ratio_interval(samples[0], samples[1])
        return math.isfinite(ratio) and (hi - lo) / ratio <= target_width

    load_before = machine_load()
    (ra, rb), samples, in_effect = _time_models(
        [a, b],
        [example_inputs, example_inputs if inputs_b is None else inputs_b],
        device=device,
        dtype=dtype,
        warmup=warmup,
        repeats=repeats,
        threads=threads,
        enough=enough,
        time_budget_s=float(time_budget_s),
        max_repeats=max(int(max_repeats), repeats),
    )
    stats = pair_stats(
        samples[0],
        samples[1],
        load_before=load_before,
        load_after=machine_load(),
        threads=in_effect,
        target_width=float(target_width),
    )
    return LatencyPair(a=ra, b=rb, speedup=stats.ratio, stats=stats)
