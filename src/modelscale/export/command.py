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
) -> dict[str, Any]:
    """Export, optionally quantize, check agreement and time; write `<out_dir>/export_summary.json`.

    `source`: an nn.Module or a folder saved by `save_compressed`. `data`: a data spec (e.g. "digits")
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
    model, spec, source_name = _load_model(source, allow_pickle=allow_pickle)
    model = model.cpu().eval()
    bundle = _load_bundle(data, model, spec, seed)
    if quantize == "static" and bundle is None:
        raise ModelscaleError("static quantization needs calibration data; pass data= (e.g. 'digits')")
    out = Path(out_dir)
    threads = threads or torch.get_num_threads()

    fp32_path = export_onnx(model, _inputs(model, spec, bundle, 1), out / "model.onnx", opset=opset)
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
    summary["latency"] = _latency(model, runners, spec, bundle, sizes, threads, warmup, repeats)
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


def _load_model(source: Any, *, allow_pickle: bool = False) -> tuple[nn.Module, dict[str, Any] | None, str]:
    if isinstance(source, nn.Module):
        return source, getattr(source, "modelscale_spec", None), type(source).__name__
    path = Path(source)
    if not path.is_dir():
        raise ModelscaleError(
            f"{path} is not a model folder; pass a folder written by save_compressed (with modelscale.json)"
        )
    from modelscale.workflow import load_model_dir

    bundle = load_model_dir(path, allow_pickle=allow_pickle)
    return bundle.model, bundle.spec, str(path)


def _load_bundle(data: Any, model: nn.Module, spec: dict[str, Any] | None, seed: int) -> Any:
    if data is None:
        return None
    from modelscale.data import DataBundle, load_data

    if isinstance(data, DataBundle):
        return data
    if not isinstance(data, str):
        raise ModelscaleError(
            f"data must be a data spec string (e.g. 'digits') or a DataBundle, got {type(data).__name__}"
        )
    block = getattr(model, "block_size", None) or (spec or {}).get("block_size") or 128
    name = data.split(":", 1)[0]
    extra = {"max_bytes": LM_MAX_BYTES} if name in ("pystdlib", "text") else {}
    return load_data(data, seed=seed, block_size=int(block), **extra)


def _inputs(model: nn.Module, spec: dict[str, Any] | None, bundle: Any, batch: int) -> torch.Tensor:
    """`batch` test examples (cycled if the split is smaller), or random inputs of the spec's shape."""
    if bundle is not None:
        n = len(bundle.test)
        return torch.stack([bundle.test[i % n][0] for i in range(batch)])
    gen = torch.Generator().manual_seed(0)
    vocab, block = getattr(model, "vocab_size", None), getattr(model, "block_size", None)
    if vocab and block:
        return torch.randint(0, int(vocab), (batch, int(block)), generator=gen)
    if spec and spec.get("input_shape") and spec.get("name") != "gpt":
        return torch.rand(batch, *spec["input_shape"], generator=gen)
    raise ModelscaleError("cannot tell the model's input shape; pass data= (e.g. 'digits') to export_command")


def _latency(
    model: nn.Module,
    runners: dict[str, OrtRunner],
    spec: dict[str, Any] | None,
    bundle: Any,
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
            x = _inputs(model, spec, bundle, b)
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
