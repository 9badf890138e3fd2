"""Deployment: ONNX export, ONNX Runtime inference and int8 quantization, with measured results.

- `export_onnx(model, example_inputs, path)` — dynamo exporter (TorchScript fallback), masks baked,
  dynamic batch, checked with onnx.checker, written atomically; `onnx_info(path)` reads it back.
- `OrtRunner(path, threads=...)` — an ONNX Runtime session called like the model (torch in, torch
  out), with `.latency(inputs)`; `check_agreement(model, runner, loader)` compares it with PyTorch.
- `quantize_onnx_dynamic(src, dst)` / `quantize_onnx_static(src, dst, batches, method=...)` — ORT
  int8 quantization (dynamic, or static QDQ calibrated by minmax / entropy / percentile).
- `export_command(model_or_dir, out_dir, data=..., quantize=...)` — all of the above plus interleaved
  PyTorch vs ORT fp32 vs ORT int8 timings, written to `export_summary.json`.

onnx, onnxscript and onnxruntime are optional (`pip install modelscale[onnx]`) and load lazily:
importing this package does not import them.

Example::

    from modelscale.export import OrtRunner, check_agreement, export_onnx, quantize_onnx_dynamic
    export_onnx(model, torch.rand(1, 1, 8, 8), "out/model.onnx")
    quantize_onnx_dynamic("out/model.onnx", "out/model.int8.onnx")
    runner = OrtRunner("out/model.int8.onnx", threads=2)
    check_agreement(model, runner, test_loader)["class_agreement"]
"""

from __future__ import annotations

from modelscale.export.command import export_command, machine_notes
from modelscale.export.onnx_export import describe_export_error, export_onnx, onnx_info, prepare_for_export
from modelscale.export.ort_quantize import quantize_onnx_dynamic, quantize_onnx_static
from modelscale.export.ort_runner import OrtRunner, check_agreement, interleaved_latency, latency_stats

__all__ = [
    "OrtRunner",
    "check_agreement",
    "describe_export_error",
    "export_command",
    "export_onnx",
    "interleaved_latency",
    "latency_stats",
    "machine_notes",
    "onnx_info",
    "prepare_for_export",
    "quantize_onnx_dynamic",
    "quantize_onnx_static",
]
