"""Peak memory of one forward pass (inference), above what the model already held.

Two honest methods, named in the report's `method` field:

- CUDA, `"cuda_max_memory_allocated"`: reset the allocator's peak counter, run the forward, and take
  `torch.cuda.max_memory_allocated() - memory_allocated_before` (activations, workspaces, output).
- CPU, `"torch_profiler_cpu_allocations"`: `torch.profiler` with `profile_memory=True` records every
  tensor allocation and free of the forward; the peak of their running sum is the extra memory the
  forward needed. (`tracemalloc` does not see torch's C++ allocator, and the process's resident-set
  high-water mark cannot be reset, so neither is used.)

The weights (`param_bytes` + `buffer_bytes`) are reported apart; `total_bytes` adds them.

Example::

    from modelscale.measure.memory import measure_memory
    report = measure_memory(model, torch.randn(32, 3, 224, 224))
    print(report.peak_bytes / 2**20, "MiB above the weights;", report.method)
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from modelscale.measure._common import (
    batch_size,
    dtype_name,
    inputs_for,
    model_dtype,
    prepared,
    resolve_device,
    resolve_dtype,
)
from modelscale.measure._report import Report


@dataclass
class MemoryReport(Report):
    """Extra memory one forward needs (`peak_bytes`), the weights, and how it was measured."""

    peak_bytes: int | None  # peak memory allocated during the forward, above what was held before
    param_bytes: int  # parameters (as stored: a masked weight counts its original and its mask)
    buffer_bytes: int
    total_bytes: int | None  # param_bytes + buffer_bytes + peak_bytes
    method: str
    device: str
    dtype: str
    batch_size: int
    note: str = ""


@contextlib.contextmanager
def _quiet_native_stderr() -> Iterator[None]:
    """Silence the profiler backend's start/stop lines, printed straight to file descriptor 2."""
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        yield
        return
    sys.stderr.flush()
    saved = os.dup(fd)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
        yield
    finally:
        os.dup2(saved, fd)
        os.close(saved)
        os.close(devnull)


def _cpu_peak(model: nn.Module, args: tuple[Any, ...]) -> tuple[int | None, str]:
    from torch.profiler import ProfilerActivity, profile

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Profiler clears events.*")  # torch 2.11, harmless here
        with _quiet_native_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            model(*args)
    try:
        events = prof.profiler.kineto_results.events()
        changes = sorted(
            (e.start_ns(), e.nbytes())
            for e in events
            if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU
        )
    except AttributeError:  # a torch without the kineto event accessors
        return None, "this torch build does not expose profiler memory events"
    current = peak = 0
    for _, nbytes in changes:
        current += nbytes
        peak = max(peak, current)
    return peak, ""


def _cuda_peak(model: nn.Module, args: tuple[Any, ...], device: torch.device) -> int:
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    model(*args)
    torch.cuda.synchronize(device)
    return max(0, torch.cuda.max_memory_allocated(device) - before)


def measure_memory(
    model: nn.Module,
    example_inputs: Any,
    *,
    device: str = "cpu",
    dtype: torch.dtype | str | None = None,
) -> MemoryReport:
    """Peak extra memory of one inference forward of `model` on `device` (see the module docstring)."""
    dev = resolve_device(device)
    dt = resolve_dtype(dtype)
    with prepared(model, dev, dt) as ready, torch.inference_mode():
        args = inputs_for(ready, example_inputs, dev, dt)
        ready(*args)  # warm-up: one-time allocations (lazy init, caches) are not the forward's cost
        if dev.type == "cuda":
            peak, note, method = _cuda_peak(ready, args, dev), "", "cuda_max_memory_allocated"
        else:
            (peak, note), method = _cpu_peak(ready, args), "torch_profiler_cpu_allocations"
        params = sum(p.numel() * p.element_size() for p in ready.parameters())
        buffers = sum(b.numel() * b.element_size() for b in ready.buffers())
        used_dtype = dt or model_dtype(ready)
    return MemoryReport(
        peak_bytes=peak,
        param_bytes=params,
        buffer_bytes=buffers,
        total_bytes=None if peak is None else params + buffers + peak,
        method=method,
        device=str(dev),
        dtype=dtype_name(used_dtype),
        batch_size=batch_size(example_inputs),
        note=note,
    )
