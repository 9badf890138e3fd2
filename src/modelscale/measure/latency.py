"""Latency of a forward pass: warm-up, many timed repeats, median and p90, and throughput.

Each repeat times one forward under `torch.inference_mode()`: on CPU with `time.perf_counter`, on
CUDA with a pair of `torch.cuda.Event`s and a synchronize (the wall clock would only time the
kernel launches). The report records what the number depends on: batch size, CPU threads, device,
dtype, warm-up and repeat counts. Two models are compared in one process and interleaved
(a, b, b, a, a, b, ...) so that drifting clocks, caches and neighbours hit both alike; the result
is the median of the per-pair ratios a_i / b_i. The pairs are timed in rounds spread over part of
the time budget, each round on fresh copies of both models (a new memory placement) with the order
swapped, so that the conditions of one stretch of time and one placement are not all the evidence:
the 95% interval is a hierarchical bootstrap over the rounds, and rounds continue until it is narrow
enough or the time budget is spent. The machine's load is recorded before and after, what else ran
is watched while timing (`measure.contention`), and the measurement is flagged unstable where it
cannot be trusted (`measure.paired_stats`). Threads: `threads=None` keeps torch's current intra-op count (the CLI
passes `--threads`, default 1: one thread per side is what a shared machine can time reproducibly).

Example::

    from modelscale.measure.latency import measure_latency, measure_latency_pair
    rep = measure_latency(model, torch.randn(32, 1, 8, 8), repeats=50)
    pair = measure_latency_pair(dense, pruned, torch.randn(32, 1, 8, 8))
    print(rep.median_ms, rep.p90_ms, pair.speedup, pair.stats.describe())
"""

from __future__ import annotations

import contextlib
import copy
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
from modelscale.measure.contention import Contention, ContentionProbe
from modelscale.measure.paired_stats import TARGET_WIDTH, PairStats, machine_load, pair_stats

MIN_ROUNDS = 6  # a paired timing has at least this many rounds (the bootstrap resamples rounds)
MAX_ROUNDS = 32
SPAN_FRACTION = 0.25  # the minimum rounds spread over at least this share of the time budget
COPY_LIMIT_BYTES = 1 << 30  # both models' tensors above this: rounds reuse the models, no copies
CHECK_RESAMPLES = 100  # bootstrap resamples of the stopping check (the reported interval uses more)


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


@dataclass
class _Timed:
    """What one timing loop produced: per-model reports and raw samples, and how they were taken."""

    reports: list[LatencyReport]
    samples: list[list[float]]  # ms, one list per model, repeat i of every model in the same pass
    threads: int
    rounds: list[int]  # round of each repeat
    fresh_copies: bool  # rounds after the first timed fresh copies of the models
    contention: Contention | None  # the machine meanwhile (CPU timings only)


def _model_bytes(models: list[nn.Module]) -> int:
    return sum(t.numel() * t.element_size() for m in models for t in [*m.parameters(), *m.buffers()])


def _copies(models: list[nn.Module], reverse: bool) -> list[nn.Module] | None:
    """Fresh deep copies (new memory), made in the given order; None when a model cannot be copied."""
    try:
        order = range(len(models) - 1, -1, -1) if reverse else range(len(models))
        made = {i: copy.deepcopy(models[i]) for i in order}
    except Exception:  # noqa: BLE001 — a module that refuses deepcopy is timed as it is
        return None
    return [made[i].eval() for i in range(len(models))]


def _time_models(
    models: list[nn.Module],
    inputs: list[Any],
    *,
    device: str,
    dtype: Any,
    warmup: int,
    repeats: int,
    threads: int | None,
    enough: Callable[[list[list[float]], list[int]], bool] | None = None,
    time_budget_s: float = 0.0,
    max_repeats: int = 0,
    min_rounds: int = 1,
    fresh_copies: bool = False,
) -> _Timed:
    """Time the models interleaved, in rounds (see `measure_latency_pair`). With `min_rounds` > 1
    the rounds are sized to spread at least `SPAN_FRACTION` of `time_budget_s`; after `repeats`
    pairs and `min_rounds` rounds, more rounds follow until `enough(samples, rounds)`, the budget,
    `max_repeats` per model or `MAX_ROUNDS`."""
    _check_counts(warmup, repeats)
    dev = resolve_device(device)
    dt = resolve_dtype(dtype)
    max_repeats = max(int(max_repeats), repeats)
    with contextlib.ExitStack() as stack:
        ready = [stack.enter_context(prepared(m, dev, dt)) for m in models]
        args = [inputs_for(m, x, dev, dt) for m, x in zip(ready, inputs)]
        in_effect = stack.enter_context(num_threads(threads))
        timer_name, timed = _timer(dev)

        def calls_of(ms: list[nn.Module]) -> list[Callable[[], Any]]:
            return [lambda m=m, a=a: m(*a) for m, a in zip(ms, args)]

        calls = calls_of(ready)
        with torch.inference_mode():
            for _ in range(warmup):
                for fn in calls:
                    fn()
            per_pass = sum(timed(fn) for fn in calls) / 1e3 if min_rounds > 1 else 0.0  # sizes rounds
        size = least = max(1, math.ceil(repeats / min_rounds))
        if min_rounds > 1:
            spread = SPAN_FRACTION * time_budget_s / min_rounds
            size = max(size, math.ceil(spread / max(per_pass, 1e-6)))
            size = min(size, max(1, max_repeats // min_rounds))
        copying = fresh_copies and min_rounds > 1 and _model_bytes(ready) <= COPY_LIMIT_BYTES
        probe = ContentionProbe().start() if dev.type == "cpu" and min_rounds > 1 else None
        samples: list[list[float]] = [[] for _ in calls]
        labels: list[int] = []
        order = list(range(len(calls)))
        started = time.perf_counter()
        r = rnd = 0
        while True:
            if rnd > 0 and copying:
                fresh = _copies(ready, reverse=rnd % 2 == 1)
                copying = fresh is not None
                if fresh is not None:
                    calls = calls_of(fresh)  # the previous round's copies are freed after these exist
            with torch.inference_mode():
                if rnd > 0 and copying:
                    for _ in range(min(warmup, 2)):
                        for fn in calls:
                            fn()
                if probe is not None:
                    probe.sample()
                # a minimum round ends early, once it holds its share of `repeats`, when the rounds
                # so far ran past their share of the budget (a slowed machine: the call stays in budget)
                due = time_budget_s * (rnd + 1) / min_rounds
                for k in range(min(size, max_repeats - r) if rnd >= min_rounds else size):
                    if rnd < min_rounds and k >= least and time.perf_counter() - started > due:
                        break
                    for i in order if (r + rnd) % 2 == 0 else order[::-1]:  # a b | b a: no fixed position
                        samples[i].append(timed(calls[i]))
                    labels.append(rnd)
                    r += 1
                    if probe is not None and r % 8 == 0:
                        probe.sample()
            rnd += 1
            if rnd < min_rounds or (r < repeats and r < max_repeats):
                continue
            if enough is None or enough(samples, labels):
                break
            if time.perf_counter() - started >= time_budget_s or r >= max_repeats or rnd >= MAX_ROUNDS:
                break
        contention = probe.stop() if probe is not None else None
        fresh_used = fresh_copies and copying and rnd > 1
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
    return _Timed(reports, samples, in_effect, labels, fresh_used, contention)


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
    timing = _time_models(
        [model], [example_inputs], device=device, dtype=dtype, warmup=warmup, repeats=repeats, threads=threads
    )
    return timing.reports[0]


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

    The pairs are timed in rounds: at least `MIN_ROUNDS`, sized so that they spread over at least
    `SPAN_FRACTION` of `time_budget_s` (and hold `repeats` pairs in all); every round after the first
    times fresh deep copies of both models (a new memory placement; models above `COPY_LIMIT_BYTES`
    together, or that cannot be copied, are timed as they are), warmed up, the first model swapped.
    Then more rounds until the 95% interval of the ratio is within `target_width` (relative),
    `time_budget_s` seconds are spent, `max_repeats` pairs or `MAX_ROUNDS` rounds. On CPU the
    machine is watched meanwhile (`measure.contention`). `speedup` is the robust ratio; `stats` says
    how far it can be trusted (`measure.paired_stats`: hierarchical bootstrap over the rounds)."""
    from modelscale.measure.paired_stats import ratio_interval

    if not (isinstance(target_width, int | float) and target_width > 0 and math.isfinite(target_width)):
        raise ModelscaleError(f"target_width must be a positive number, got {target_width!r}")
    if not (isinstance(time_budget_s, int | float) and 0 <= time_budget_s < 3600):
        raise ModelscaleError(
            f"time_budget_s must be a number of seconds in [0, 3600), got {time_budget_s!r}"
        )

    def enough(samples: list[list[float]], rounds: list[int]) -> bool:
        ratio, lo, hi, _ = ratio_interval(samples[0], samples[1], rounds=rounds, resamples=CHECK_RESAMPLES)
        return math.isfinite(ratio) and (hi - lo) / ratio <= target_width

    load_before = machine_load()
    timing = _time_models(
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
        min_rounds=MIN_ROUNDS,
        fresh_copies=True,
    )
    stats = pair_stats(
        timing.samples[0],
        timing.samples[1],
        rounds=timing.rounds,
        load_before=load_before,
        load_after=machine_load(),
        threads=timing.threads,
        target_width=float(target_width),
        fresh_copies=timing.fresh_copies,
        contention=timing.contention,
    )
    ra, rb = timing.reports
    return LatencyPair(a=ra, b=rb, speedup=stats.ratio, stats=stats)
