"""ONNX Runtime int8 quantization: dynamic and static QDQ keep ≥ 99% class agreement on digits test."""

from __future__ import annotations

import pytest
import torch

from modelscale.core.errors import ModelscaleError
from modelscale.export import (
    OrtRunner,
    check_agreement,
    onnx_info,
    quantize_onnx_dynamic,
    quantize_onnx_static,
)


def _calibration(digits):
    from modelscale.data import make_loader

    return make_loader(digits.train, batch_size=32, shuffle=True, seed=0)


def _op_types(path) -> set[str]:
    import onnx

    return {n.op_type for n in onnx.load(str(path)).graph.node}


def _activation_scales(path) -> dict[str, float]:
    import onnx
    from onnx import numpy_helper

    arrays = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}
    return {k: float(a) for k, a in arrays.items() if k.endswith("_scale") and a.size == 1}


@pytest.mark.parametrize("name", ["cnn", "mlp"])
def test_dynamic_int8_agrees(name, trained, exported, test_loader, tmp_path):
    src = exported[name]
    dst = quantize_onnx_dynamic(src, tmp_path / f"{name}.dyn.onnx")
    info = onnx_info(dst)
    assert info["quantization"].startswith("dynamic int8")
    assert info["bytes"] < 0.4 * onnx_info(src)["bytes"]  # int8 weights: about a quarter of fp32
    assert _op_types(dst) & {"MatMulInteger", "ConvInteger", "DynamicQuantizeLinear"}
    result = check_agreement(trained[name], OrtRunner(dst), test_loader)
    assert result["class_agreement"] >= 0.99, result
    assert 0 < result["max_abs_diff"] < 1.0  # quantized: not identical, but close


@pytest.mark.parametrize("name", ["cnn", "mlp"])
def test_static_qdq_int8_agrees(name, trained, exported, test_loader, digits, tmp_path):
    dst = quantize_onnx_static(
        exported[name], tmp_path / f"{name}.qdq.onnx", _calibration(digits), max_batches=8
    )
    info = onnx_info(dst)
    assert "static QDQ int8 (minmax calibration on 8 batches" in info["quantization"]
    assert {"QuantizeLinear", "DequantizeLinear"} <= _op_types(dst)
    result = check_agreement(trained[name], OrtRunner(dst), test_loader)
    assert result["class_agreement"] >= 0.99, result


@pytest.mark.parametrize("method", ["entropy", "percentile"])
def test_static_histogram_calibration_agrees(method, trained, exported, test_loader, digits, tmp_path):
    dst = quantize_onnx_static(
        exported["cnn"], tmp_path / f"cnn.{method}.onnx", _calibration(digits), method=method, max_batches=4
    )
    assert f"static QDQ int8 ({method}" in onnx_info(dst)["quantization"]
    if method == "entropy":  # not ORT's 128-bin default, whose only candidate threshold is the minmax range
        assert "2048-bin" in onnx_info(dst)["quantization"]
        minmax = quantize_onnx_static(
            exported["cnn"], tmp_path / "mm.onnx", _calibration(digits), max_batches=4
        )
        ent, mm = _activation_scales(dst), _activation_scales(minmax)
        assert any(ent[k] < 0.9 * mm[k] for k in ent.keys() & mm.keys())  # entropy clipped some range
    result = check_agreement(trained["cnn"], OrtRunner(dst), test_loader)
    assert result["class_agreement"] >= 0.99, result


def test_quantization_input_errors(exported, tmp_path):
    src = exported["mlp"]
    with pytest.raises(ModelscaleError, match="empty"):
        quantize_onnx_static(src, tmp_path / "q.onnx", [])
    with pytest.raises(ModelscaleError, match="valid options: minmax, entropy, percentile"):
        quantize_onnx_static(src, tmp_path / "q.onnx", [torch.rand(2, 1, 8, 8)], method="mse")
    with pytest.raises(ModelscaleError, match="expects float32"):
        quantize_onnx_static(src, tmp_path / "q.onnx", [torch.ones(2, 1, 8, 8, dtype=torch.int64)])
    with pytest.raises(ModelscaleError, match="not found"):
        quantize_onnx_dynamic(tmp_path / "missing.onnx", tmp_path / "q.onnx")
    assert not (tmp_path / "q.onnx").exists()
