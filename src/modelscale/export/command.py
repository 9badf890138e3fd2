"""`export_command`: the whole deployment check in one call (what `modelscale export` runs).

Given a model (or a folder written by `save_compressed`), it

1. exports `model.onnx` (masks baked, dynamic batch) and, with `quantize="dynamic"|"static"`, an int8
   `model.int8.onnx` (static: QDQ, calibrated on train-split batches);
2. checks agreement with PyTorch on the test split of `data` (max |Δ| of the outputs, argmax
   agreement, accuracies);
3. times PyTorch fp32, ORT fp32 and ORT int8 interleaved in one process at each batch size, and
   reports medians, p90s and speedups relative to PyTorch;
4. writes everything, with file sizes and machine notes, to `export_summary.json` and returns it.

Example::

    from modelscale.export import export_command
    summary = export_command("runs/pruned", "runs/pruned/onnx", data="digits", quantize="static")
    summary["latency"]["batch_1"]["speedup_vs_pytorch"]
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from modelscale.core.errors import ModelscaleError
from modelscale.core.io import write_json
from modelscale.core.machine import machine_notes as shared_machine_notes
from modelscale.export.onnx_export import export_onnx, onnx_info
from modelscale.export.ort_quantize import METHODS, quantize_onnx_dynamic, quantize_onnx_static
from modelscale.export.ort_runner import OrtRunner, check_agreement, interleaved_latency

QUANTIZE = ("none", "dynamic", "static")
SUMMARY_FILE = "export_summary.json"
LM_MAX_BYTES = 2_000_000  # text sources: enough bytes for a test split, quick to load


def export_command(
    source: nn.Module | str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    data: Any = None,
    quantize: str = "none",
    method: str = "minmax",
    per_channel: bool = True,
    opset: int | None = None,
    threads: int | None = None,
    batch_sizes: Sequence[int] = (1, 32),
    warmup: int = 5,
    repeats: int = 30,
    calibration_batches: int = 16,
    max_eval_examples: int = 2048,
    seed: int = 0,
    spin: bool = False,
    allow_pickle: bool = False,
    source_name: str | None = None,
) -> dict[str, Any]:
    """Export, optionally quantize, check agreement and time; write `<out_dir>/export_summary.json`.

    `source`: an nn.Module, a ModelBundle or a folder saved by `save_compressed` (loaded by the engine's
    one model loader; `allow_pickle` is the caller's own opt-in). `data`: a data spec (e.g. "digits")
    or a DataBundle; without it, agreement is skipped and inputs are random tensors of the model's
    spec shape. `quantize`: none | dynamic | static (static needs `data`; `method` picks its
    calibration: minmax | entropy | percentile). `threads`: CPU threads for both PyTorch and ORT.
    """
    if quantize not in QUANTIZE:
        raise ModelscaleError(f"unknown quantize {quantize!r}; valid options: {', '.join(QUANTIZE)}")
    if method not in METHODS:
        raise ModelscaleError(f"unknown calibration method {method!r}; valid options: {', '.join(METHODS)}")
    sizes = tuple(batch_sizes)
    if not sizes or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in sizes):
        raise ModelscaleError(f"batch_sizes must be positive integers, got {batch_sizes!r}")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ModelscaleError(f"threads must be an integer >= 1 or None, got {threads!r}")
    from modelscale.data.api import as_data_bundle
    from modelscale.models.loading import example_inputs, load_model

    if isinstance(source, str | os.PathLike) and not Path(source, "modelscale.json").is_file():
        raise ModelscaleError(
            f"{source} is not a model folder; pass a folder written by save_compressed (with modelscale.json)"
        )
    loaded = load_model(source, allow_pickle=allow_pickle)
    model, spec = loaded.model.cpu().eval(), loaded.spec or None
    if source_name is None:
        source_name = str(source) if isinstance(source, str | os.PathLike) else type(model).__name__
    bundle = as_data_bundle(data, seed=seed, **_data_options(data, model, spec))
    if quantize == "static" and bundle is None:
        raise ModelscaleError("static quantization needs calibration data; pass data= (e.g. 'digits')")
    out = Path(out_dir)
    threads = threads or torch.get_num_threads()

    fp32_path = export_onnx(model, example_inputs(loaded, bundle, 1), out / "model.onnx", opset=opset)
    files = {"onnx_fp32": fp32_path}
    if quantize == "dynamic":
        files["onnx_int8"] = quantize_onnx_dynamic(fp32_path, out / "model.int8.onnx")
    elif quantize == "static":
        from modelscale.data import make_loader

        loader = make_loader(bundle.train, batch_size=32, shuffle=True, seed=seed)
        files["onnx_int8"] = quantize_onnx_static(
            fp32_path,
            out / "model.int8.onnx",
            loader,
            per_channel=per_channel,
            method=method,
            max_batches=calibration_batches,
        )
    runners = {name: OrtRunner(path, threads=threads, spin=spin) for name, path in files.items()}

    summary: dict[str, Any] = {
        "source": source_name,
        "model_spec": spec,
        "quantize": quantize,
        "files": {name: onnx_info(path) for name, path in files.items()},
        "parameter_bytes": sum(p.numel() * p.element_size() for p in model.parameters()),
    }
    if quantize == "static":
        summary["calibration"] = {
            "method": method,
            "per_channel": per_channel,
            "batches": calibration_batches,
        }
    if bundle is not None:
        from modelscale.data import make_loader

        loader = make_loader(bundle.test, batch_size=256, shuffle=False)
        max_batches = math.ceil(max_eval_examples / 256)
        summary["data"] = {"spec": bundle.name, "split": "test", "seed": seed, "task": bundle.task}
        summary["agreement"] = {
            name: check_agreement(model, runner, loader, max_batches=max_batches)
            for name, runner in runners.items()
        }
    summary["latency"] = _latency(
        model, runners, lambda b: example_inputs(loaded, bundle, b), sizes, threads, warmup, repeats
    )
    summary["machine"] = machine_notes(threads)
    write_json(out / SUMMARY_FILE, summary)
    return summary


def machine_notes(threads: int | None = None) -> dict[str, Any]:
    """CPU model, cores, threads, library versions and the date, for measured results.

    `modelscale.core.machine.machine_notes` with python, torch and the ONNX stack under `versions`.
    """
    packages = ("numpy", "onnx", "onnxruntime", "onnxscript")
    notes = shared_machine_notes(threads, packages=("torch", *packages))
    notes["versions"] = {name: notes.pop(name, None) for name in ("python", "torch", *packages)}
    return notes


# ----------------------------------------------------------------------------------------- internals


def _data_options(data: Any, model: nn.Module, spec: dict[str, Any] | None) -> dict[str, Any]:
    """Text sources: the model's block size and a byte cap (enough for a test split, quick to load)."""
    if not isinstance(data, str) or data.split(":", 1)[0] not in ("pystdlib", "text"):
        return {}
    block = getattr(model, "block_size", None) or (spec or {}).get("block_size") or 128
    return {"block_size": int(block), "max_bytes": LM_MAX_BYTES}


def _latency(
    model: nn.Module,
    runners: dict[str, OrtRunner],
    inputs: Any,
    sizes: tuple[int, ...],
    threads: int,
    warmup: int,
    repeats: int,
) -> dict[str, Any]:
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    results: dict[str, Any] = {}
    try:
        for b in sizes:
            x = inputs(b)
            feeds = {name: r.feed(x) for name, r in runners.items()}

            def run_torch(x: torch.Tensor = x) -> None:
                with torch.inference_mode():
                    model(x)

            fns = {"pytorch_fp32": run_torch}
            for name, runner in runners.items():
                fns[name] = lambda r=runner, f=feeds[name]: r.run_feed(f)
            stats = interleaved_latency(fns, warmup=warmup, repeats=repeats)
            base = stats["pytorch_fp32"]["median_ms"]
            results[f"batch_{b}"] = {
                **stats,
                "speedup_vs_pytorch": {
                    n: base / s["median_ms"] for n, s in stats.items() if n != "pytorch_fp32"
                },
                "batch_size": b,
                "threads": threads,
            }
    finally:
        torch.set_num_threads(previous)
    return results
