"""Latency of a forward pass: warm-up, many timed repeats, median and p90, and throughput.

Each repeat times one forward under `torch.inference_mode()`: on CPU with `time.perf_counter`, on
CUDA with a pair of `torch.cuda.Event`s and a synchronize (the wall clock would only time the
kernel launches). The report records what the number depends on: batch size, CPU threads, device,
dtype, warm-up and repeat counts. Two models are compared in one process and interleaved
(a, b, b, a, a, b, ...) so that drifting clocks, caches and neighbours hit both alike; the result
is their ratio, speedup = median(a) / median(b).

Example::

    from modelscale.measure.latency import measure_latency, measure_latency_pair
    rep = measure_latency(model, torch.randn(32, 1, 8, 8), repeats=50)
    pair = measure_latency_pair(dense, pruned, torch.randn(32, 1, 8, 8))
    print(rep.median_ms, rep.p90_ms, pair.speedup)
"""

from __future__ import annotations

import contextlib
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
    """Two models timed interleaved in one process; speedup = a.median_ms / b.median_ms."""

    a: LatencyReport
    b: LatencyReport
    speedup: float  # > 1: b is faster than a


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
) -> list[LatencyReport]:
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
        for r in range(repeats):
            for i in order if r % 2 == 0 else order[::-1]:  # a b | b a | a b ...: no fixed position
                samples[i].append(timed(calls[i]))
    return [
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
    (report,) = _time_models(
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
) -> LatencyPair:
    """Time `a` and `b` interleaved in this process; `inputs_b` defaults to the same inputs."""
    ra, rb = _time_models(
        [a, b],
        [example_inputs, example_inputs if inputs_b is None else inputs_b],
        device=device,
        dtype=dtype,
        warmup=warmup,
        repeats=repeats,
        threads=threads,
    )
    return LatencyPair(a=ra, b=rb, speedup=ra.median_ms / rb.median_ms if rb.median_ms > 0 else float("inf"))
