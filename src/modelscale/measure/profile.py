"""`profile(model, example_inputs)`: every measurement of one model in one serializable report.

Parameters (total, trainable, non-zero, non-embedding), serialized and zipped bytes, MACs/FLOPs with
a per-layer breakdown, and — when asked — latency (median, p90), peak forward memory, and quality on
a loader of (x, y) batches. Measuring never changes the model: train/eval flags are restored and no
gradient is computed; with a device or dtype other than the model's, a converted copy is measured
(params and bytes are then those of the converted copy, e.g. half for bfloat16).

Example::

    from modelscale.measure import profile
    from modelscale.report import profile_markdown
    report = profile(model, torch.randn(1, 1, 8, 8), loader=test_loader)
    print(profile_markdown(report)); json.dumps(report.to_dict())
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from modelscale.core.errors import ModelscaleError
from modelscale.measure._common import (
    batch_size,
    dtype_name,
    input_shapes,
    inputs_for,
    model_dtype,
    num_threads,
    prepared,
    resolve_device,
    resolve_dtype,
)
from modelscale.measure._report import Report
from modelscale.measure.latency import LatencyReport, measure_latency
from modelscale.measure.macs import MacsReport, count_macs
from modelscale.measure.memory import MemoryReport, measure_memory
from modelscale.measure.params import ParamReport, count_params
from modelscale.measure.quality import QualityReport, check_task, evaluate_quality
from modelscale.measure.size import SizeReport, measure_size


@dataclass
class ProfileReport(Report):
    """All measurements of one model; optional parts are None when not measured."""

    model: str  # the model's class name
    params: ParamReport
    size: SizeReport
    macs: MacsReport
    latency: LatencyReport | None = None
    memory: MemoryReport | None = None
    quality: QualityReport | None = None
    device: str = "cpu"
    dtype: str = "float32"
    batch_size: int = 1
    input_shapes: list[list[int]] = field(default_factory=list)
    task: str = "classification"
    torch_version: str = ""
    notes: list[str] = field(default_factory=list)


def check_model(model: Any, what: str = "model") -> None:
    if not isinstance(model, nn.Module):
        raise ModelscaleError(f"{what} must be a torch.nn.Module, got {type(model).__name__}")


def profile(
    model: nn.Module,
    example_inputs: Any,
    *,
    latency: bool = True,
    memory: bool = True,
    device: str = "cpu",
    dtype: torch.dtype | str | None = None,
    warmup: int = 5,
    repeats: int = 30,
    threads: int | None = None,
    loader: Iterable[Any] | None = None,
    task: str = "classification",
    max_batches: int | None = None,
    storage: str = "dense",
) -> ProfileReport:
    """Measure `model` on `example_inputs` (a tensor or tuple of tensors; quality only with `loader`).

    `storage` is how a saved folder would store the weights (`core/weights_file.py`); the size section is
    the bytes of that file, written in memory by the same writer."""
    check_model(model)
    check_task(task)
    dev, dt = resolve_device(device), resolve_dtype(dtype)
    with num_threads(threads), prepared(model, dev, dt) as ready:
        args = inputs_for(ready, example_inputs, dev, dt)
        report = ProfileReport(
            model=type(model).__name__,
            params=count_params(ready),
            size=measure_size(ready, storage=storage),
            macs=count_macs(ready, args),
            device=str(dev),
            dtype=dtype_name(dt or model_dtype(ready)),
            batch_size=batch_size(args),
            input_shapes=input_shapes(args),
            task=task,
            torch_version=torch.__version__,
        )
        if latency:
            report.latency = measure_latency(
                ready, args, device=str(dev), dtype=dt, warmup=warmup, repeats=repeats
            )
        if memory:
            report.memory = measure_memory(ready, args, device=str(dev), dtype=dt)
        if loader is not None:
            report.quality = evaluate_quality(
                ready, loader, task=task, device=str(dev), dtype=dt, max_batches=max_batches
            )
    if report.params.sparsity > 0.01:
        report.notes.append(
            f"{report.params.sparsity:.1%} of parameters are zero; MACs count them (dense kernels "
            "multiply zeros too) and serialized bytes store them — only the zipped size shows the gain"
        )
    return report
