"""Structured pruning on real digits: 50% of channels removed, a short fine-tune, accuracy kept."""

from __future__ import annotations

import torch

from modelscale.core.apply import apply
from modelscale.measure import count_macs, count_params
from modelscale.train import TrainConfig, evaluate, fit


def test_half_channels_plus_finetune_within_1_5_points(digits, digits_cnn):
    base, base_acc = digits_cnn
    x = torch.rand(1, 1, 8, 8)
    result = apply(base, {"type": "structured_prune", "ratio": 0.5, "importance": "l2"}, example_inputs=x)
    fit(result.model, digits, TrainConfig(epochs=8, lr=2e-3, seed=0, progress=False))
    acc = evaluate(result.model, digits.test)["accuracy"]
    assert acc >= base_acc - 0.015, (acc, base_acc)
    assert count_params(result.model).total < 0.5 * count_params(base).total
    assert count_macs(result.model, x).macs < 0.5 * count_macs(base, x).macs
    assert result.model(x).shape == base(x).shape
