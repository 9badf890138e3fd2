"""Quantization sensitivity on real digits: quantize ONE layer at a time, find the layers to keep in float.

An mlp is trained on sklearn's digits (seed 0, the standard split); the table's metric is either test
accuracy or the relative logit error against the float model (drop = error).
"""

from __future__ import annotations

import pytest
import torch

from modelscale.core.apply import apply
from modelscale.core.errors import ModelscaleError
from modelscale.techniques.quantize.mixed_precision import (
    fewest_bits,
    keep_in_float,
    logit_error_metric,
    quant_sensitivity,
)
from modelscale.techniques.quantize.static_int8 import StaticInt8Config
from modelscale.train import TrainConfig, fit


@pytest.fixture(scope="module")
def setup(digits):
    from modelscale.data import make_loader
    from modelscale.models import build_model

    torch.manual_seed(0)
    model = build_model("mlp", num_classes=10, input_shape=digits.input_shape)
    cfg = TrainConfig(
        epochs=6, optimizer="adamw", batch_size=64, lr=3e-3, seed=0, progress=False, device="cpu"
    )
    fit(model, digits, cfg)
    loader = make_loader(digits.train, batch_size=64, shuffle=True, seed=0)
    calibration = [b for _, b in zip(range(4), loader, strict=False)]
    val = list(make_loader(digits.val, batch_size=256, shuffle=False))
    return model.eval(), calibration, val


def test_int8_costs_no_layer_more_than_half_a_point(setup):
    model, calibration, val = setup
    table = quant_sensitivity(model, val, bits=(8,), calibration=calibration)
    assert table.layers() == ["features.1", "features.3", "classifier"]
    assert table.baseline > 0.9
    assert all(row.error is None and row.drop <= 0.005 for row in table.rows), table.rows
    assert keep_in_float(table, 0.005) == []


def test_recommend_keeps_the_most_sensitive_layer_and_that_helps(setup):
    model, calibration, val = setup
    metric = logit_error_metric(model)
    table = quant_sensitivity(
        model, val, bits=(3,), calibration=calibration, metric=metric, metric_name="logit_error"
    )
    drops = {layer: table.drop(layer, 3) for layer in table.layers()}
    assert all(d > 0 for d in drops.values())  # every layer loses something at 3 bits
    ranked = sorted(drops, key=drops.get)
    max_drop = (drops[ranked[-1]] + drops[ranked[-2]]) / 2  # between the two most sensitive layers
    keep = keep_in_float(table, max_drop)
    assert keep == [ranked[-1]]
    assert set(table.recommend(max_drop)) == set(ranked[:-1])

    def error_keeping(float_layers):
        cfg = StaticInt8Config(bits=3, target={"exclude": list(float_layers)})
        return -metric(apply(model, cfg, calibration=calibration).model, val)

    everything = error_keeping([])
    recommended = error_keeping(keep)
    least_sensitive = error_keeping([ranked[0]])
    assert recommended < least_sensitive < everything, (recommended, least_sensitive, everything)


def test_weight_only_sensitivity_gives_the_fewest_safe_bits(setup):
    model, _, val = setup
    metric = logit_error_metric(model)
    table = quant_sensitivity(
        model, val, technique="weight_only", bits=(8, 4), base_config={"group_size": 0}, metric=metric
    )
    assert all(table.drop(layer, 8) < table.drop(layer, 4) for layer in table.layers())
    loose = fewest_bits(table, 1.0)
    assert loose == {layer: 4 for layer in table.layers()}
    worst_int8 = max(table.drop(layer, 8) for layer in table.layers())
    expected = {layer: 4 if table.drop(layer, 4) <= worst_int8 else 8 for layer in table.layers()}
    assert fewest_bits(table, worst_int8) == expected and 8 in expected.values()
    with pytest.raises(ModelscaleError, match="static_int8 or weight_only"):
        quant_sensitivity(model, val, technique="cast")
