"""int8 kernels (torch._int_mm, oneDNN int8 conv) count the same MACs as the float layers they replace."""

from __future__ import annotations

import torch

from modelscale.core.apply import apply
from modelscale.measure import count_macs
from modelscale.models import build_model


def test_dynamic_int8_linear_macs_equal_float():
    model = build_model("mlp")
    x = torch.rand(4, 1, 8, 8)
    quantized = apply(model, {"type": "dynamic_int8"}).model
    assert count_macs(quantized, x).macs == count_macs(model, x).macs > 0


def test_static_int8_conv_macs_equal_float():
    model = build_model("cnn").eval()
    x = torch.rand(2, 1, 8, 8)
    calibration = [(torch.rand(8, 1, 8, 8), torch.zeros(8, dtype=torch.long))]
    quantized = apply(model, {"type": "static_int8"}, calibration=calibration).model
    assert count_macs(quantized, x).macs == count_macs(model, x).macs > 0


def test_quantized_weights_still_count_as_parameters():
    from modelscale.measure import count_params

    model = build_model("mlp")
    for config in ({"type": "dynamic_int8"}, {"type": "weight_only", "bits": 4, "group_size": 32}):
        quantized = apply(model, config).model
        report = count_params(quantized)
        assert report.total == count_params(model).total
        assert report.trainable < report.total  # integer codes are not trained
