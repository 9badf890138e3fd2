"""export_command end to end: a saved model folder → ONNX fp32 + int8, agreement, timings, JSON summary."""

from __future__ import annotations

import json

import pytest
import torch

from modelscale.core.errors import ModelscaleError
from modelscale.export import export_command


def test_export_command_on_saved_folder(trained, tmp_path):
    from modelscale.core.saving import save_compressed

    model = trained["cnn"]
    saved = save_compressed(tmp_path / "saved", model, model_spec=model.modelscale_spec)
    summary = export_command(
        saved,
        tmp_path / "onnx",
        data="digits",
        quantize="static",
        batch_sizes=(1, 4),
        warmup=1,
        repeats=3,
        threads=1,
    )
    on_disk = json.loads((tmp_path / "onnx" / "export_summary.json").read_text())
    assert on_disk["agreement"] == summary["agreement"]
    assert set(summary["files"]) == {"onnx_fp32", "onnx_int8"}
    assert summary["files"]["onnx_fp32"]["exporter"] == "dynamo"
    assert summary["files"]["onnx_int8"]["bytes"] < 0.4 * summary["files"]["onnx_fp32"]["bytes"]
    assert summary["agreement"]["onnx_fp32"]["max_abs_diff"] < 1e-4
    assert summary["agreement"]["onnx_fp32"]["class_agreement"] == 1.0
    assert summary["agreement"]["onnx_int8"]["class_agreement"] >= 0.99
    assert summary["data"] == {"spec": "digits", "split": "test", "seed": 0, "task": "classification"}
    for b in (1, 4):
        timing = summary["latency"][f"batch_{b}"]
        assert set(timing["speedup_vs_pytorch"]) == {"onnx_fp32", "onnx_int8"}
        assert all(timing[k]["repeats"] == 3 for k in ("pytorch_fp32", "onnx_fp32", "onnx_int8"))
    assert summary["machine"]["threads"] == 1 and summary["machine"]["versions"]["onnxruntime"]


def test_export_command_without_data_uses_the_spec_shape(tmp_path):
    from modelscale.models import build_model

    model = build_model("gpt", block_size=16, n_layer=1, n_head=2, n_embd=32)
    summary = export_command(model, tmp_path, quantize="dynamic", batch_sizes=(2,), warmup=0, repeats=1)
    assert summary["files"]["onnx_fp32"]["inputs"]["input"] == ["batch", 16]
    assert "agreement" not in summary
    assert summary["latency"]["batch_2"]["onnx_int8"]["repeats"] == 1


def test_export_command_input_errors(trained, tmp_path):
    with pytest.raises(ModelscaleError, match="valid options: none, dynamic, static"):
        export_command(trained["mlp"], tmp_path, quantize="int4")
    with pytest.raises(ModelscaleError, match="needs calibration data"):
        export_command(trained["mlp"], tmp_path, quantize="static")
    with pytest.raises(ModelscaleError, match="not a model folder"):
        export_command(tmp_path / "nowhere", tmp_path)
    with pytest.raises(ModelscaleError, match="batch_sizes"):
        export_command(trained["mlp"], tmp_path, batch_sizes=(0,))
    assert isinstance(torch.get_num_threads(), int)
