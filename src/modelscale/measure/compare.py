"""`compare(base, other, example_inputs)`: before/after of a compressed model, theory next to measurement.

Reports ΔP = P0 − P for each quality metric (base minus other, on the same loader), compression
ratios (parameters, non-zero parameters, the bytes of the weights files and their zips, next to two
named estimates: torch.save and dense safetensors of the effective weights; > 1 means `other` is
smaller), the theoretical speedup (ratio of MACs) next to the measured one (ratio of
median latencies, both models timed interleaved in this process), and — with a loader — how often
both predict the same class and the linear CKA of a chosen layer.

Example::

    from modelscale.measure import compare
    from modelscale.report import compare_markdown
    cmp = compare(dense, pruned, torch.randn(32, 1, 8, 8), loader=test_loader)
    print(cmp.theoretical_speedup, cmp.measured_speedup, cmp.deltas["accuracy"])
    print(compare_markdown(cmp))
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from modelscale.measure._report import Report
from modelscale.measure.latency import measure_latency_pair
from modelscale.measure.paired_stats import PairStats
from modelscale.measure.profile import ProfileReport, check_model, profile
from modelscale.measure.similarity import CKA_EXAMPLES, paired_pass

QUALITY_METRICS = ("accuracy", "top5", "loss", "ece", "bits_per_byte")


@dataclass
class Comparison(Report):
    """Base vs other: ratios (> 1: other smaller/faster), ΔP = base − other, agreement, CKA."""

    base: ProfileReport
    other: ProfileReport
    params_ratio: float  # base total params / other total params
    nonzero_ratio: float  # base non-zero / other non-zero
    serialized_ratio: float  # estimate: torch.save bytes of the effective state dicts, base / other
    safetensors_ratio: float | None  # estimate: dense safetensors of the effective state dicts
    zipped_ratio: float  # the weights files zipped (deflate level 9), base / other
    theoretical_speedup: float | None  # base MACs / other MACs (None when other's ops are not countable)
    file_ratio: float | None = None  # the weights files (model.safetensors as saved), base / other
    measured_speedup: float | None = None  # median of per-pair latency ratios base / other (interleaved)
    latency_stats: PairStats | None = None  # the ratio's interval, the machine's load, the verdict
    deltas: dict[str, float] = field(default_factory=dict)  # metric -> base − other
    agreement: float | None = None  # fraction of identical argmax predictions on the loader
    cka: float | None = None  # linear CKA of `cka_layer` activations
    cka_layer: str | None = None
    notes: list[str] = field(default_factory=list)


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None:
        return None
    return a / b if b else float("inf")


def compare(
    base: nn.Module,
    other: nn.Module,
    example_inputs: Any,
    *,
    loader: Iterable[Any] | None = None,
    latency: bool = True,
    memory: bool = True,
    device: str = "cpu",
    dtype: torch.dtype | str | None = None,
    warmup: int = 5,
    repeats: int = 30,
    threads: int | None = None,
    task: str = "classification",
    max_batches: int | None = None,
    cka_layer: str | None = None,
    cka_layer_other: str | None = None,
    cka_examples: int = CKA_EXAMPLES,
    other_inputs: Any = None,
    storage: str = "dense",
    latency_budget_s: float = 2.0,
) -> Comparison:
    """Profile both models and relate them (see the module docstring).

    `cka_layer` names the module whose activations CKA compares (default: the models' outputs);
    `cka_layer_other` names its counterpart in `other` when the names differ. `other_inputs` is for
    an `other` that takes different inputs (default: the same `example_inputs`). `storage` is how
    `other`'s weights file stores them ("dense" or "sparse"); the size figures are those files' bytes.
    """
    check_model(base, "base")
    check_model(other, "other")
    other_inputs = example_inputs if other_inputs is None else other_inputs
    common = {"device": device, "dtype": dtype, "threads": threads, "task": task}
    p0 = profile(base, example_inputs, latency=False, memory=memory, **common)
    p1 = profile(other, other_inputs, latency=False, memory=memory, storage=storage, **common)
    cmp = Comparison(
        base=p0,
        other=p1,
        params_ratio=_ratio(p0.params.total, p1.params.total),
        nonzero_ratio=_ratio(p0.params.nonzero, p1.params.nonzero),
        serialized_ratio=_ratio(p0.size.serialized_bytes, p1.size.serialized_bytes),
        safetensors_ratio=_ratio(p0.size.safetensors_bytes, p1.size.safetensors_bytes),
        zipped_ratio=_ratio(p0.size.zipped_bytes, p1.size.zipped_bytes),
        file_ratio=_ratio(p0.size.file_bytes, p1.size.file_bytes),
        theoretical_speedup=_ratio(p0.macs.macs, p1.macs.macs) if p1.macs.macs else None,
    )
    if latency:
        pair = measure_latency_pair(
            base,
            other,
            example_inputs,
            inputs_b=other_inputs,
            device=device,
            dtype=dtype,
            warmup=warmup,
            repeats=repeats,
            threads=threads,
            time_budget_s=latency_budget_s,
        )
        p0.latency, p1.latency, cmp.measured_speedup = pair.a, pair.b, pair.speedup
        cmp.latency_stats = pair.stats
    if loader is not None:
        paired = paired_pass(
            base,
            other,
            loader,
            task=task,
            layer=cka_layer,
            layer_b=cka_layer_other,
            device=device,
            dtype=dtype,
            max_batches=max_batches,
            cka_examples=cka_examples,
        )
        p0.quality, p1.quality = paired.a, paired.b
        cmp.agreement, cmp.cka, cmp.cka_layer = paired.agreement, paired.cka, paired.cka_layer
        for name in QUALITY_METRICS:
            v0, v1 = getattr(paired.a, name), getattr(paired.b, name)
            if v0 is not None and v1 is not None:
                cmp.deltas[name] = v0 - v1
    cmp.notes.extend(_notes(cmp))
    return cmp


def use_file_sizes(cmp: Comparison, folder: Any, which: str = "other") -> dict[str, Any]:
    """Replace `which` side's size figures by those of the weights file `folder` holds (measured on
    disk), recompute the size ratios, and return {path, bytes, zipped_bytes, storage} of that file."""
    from modelscale.measure.size import measure_file

    side = getattr(cmp, which)
    side.size = measure_file(folder, side.size)
    cmp.zipped_ratio = _ratio(cmp.base.size.zipped_bytes, cmp.other.size.zipped_bytes)
    cmp.file_ratio = _ratio(cmp.base.size.file_bytes, cmp.other.size.file_bytes)
    return {
        "path": side.size.measured_on,
        "bytes": side.size.file_bytes,
        "zipped_bytes": side.size.zipped_bytes,
        "storage": side.size.storage,
    }


def _notes(cmp: Comparison) -> list[str]:
    notes = []
    s0, s1 = cmp.base.params.sparsity, cmp.other.params.sparsity
    if cmp.theoretical_speedup is None:
        notes.append(
            "MACs of other could not be counted (kernels FlopCounterMode does not know): no theoretical speedup"
        )
    elif s1 > s0 + 0.01 and abs(cmp.theoretical_speedup - 1.0) < 0.01:
        notes.append(
            f"other has {s1:.1%} zero parameters (base {s0:.1%}) but the same MACs: dense kernels multiply "
            "the zeros; its file shrinks only zipped or saved with sparse storage (`--storage sparse`), "
            "its speed gain is only what was measured"
        )
    m = cmp.measured_speedup
    stats = cmp.latency_stats
    theory = cmp.theoretical_speedup
    if m is not None and stats is not None:
        if stats.unstable:
            notes.append(
                f"latency ratio {m:.2f}× is UNSTABLE — not a speedup: "
                + "; ".join(stats.reasons)
                + (
                    " (quiet the machine, or time with --threads 1)"
                    if stats.threads > 1
                    else " (quiet the machine, or give --latency-budget more seconds)"
                )
            )
        elif stats.verdict == "no clear difference":
            notes.append(
                f"latency ratio {m:.2f}× [95% CI {stats.ci_low:.2f}–{stats.ci_high:.2f}] contains 1: "
                "no measurable speed difference"
            )
    if m is not None and theory is not None and theory > 1.05 and m < theory / 1.5:
        notes.append(
            f"measured speedup {m:.2f}x is well below the theoretical {theory:.2f}x: "
            "fewer MACs did not translate into time on this device (memory-bound layers, overheads)"
        )
    if m is not None and theory is not None and m > 1.5 * max(theory, 1.0):
        notes.append(
            f"measured speedup {m:.2f}x is far ABOVE the theoretical {theory:.2f}x: suspect the timing "
            "(load, caches, a different kernel path) before believing it"
        )
    if m is not None:
        lat = cmp.base.latency
        load = ""
        if stats is not None and stats.load_before is not None:
            load = f"; load {stats.load_before:.1f} before, {stats.load_after:.1f} after, {stats.cores} cores"
        rounds = ""
        if stats is not None and stats.rounds > 1:
            rounds = f" in {stats.rounds} rounds" + (" on fresh copies" if stats.fresh_copies else "")
        notes.append(
            f"latency measured interleaved in one process: {lat.repeats} pairs{rounds} after {lat.warmup} warm-up, "
            f"batch {lat.batch_size}, {lat.threads} thread(s), {lat.device} ({lat.device_name}), {lat.dtype}"
            + load
        )
    return notes
