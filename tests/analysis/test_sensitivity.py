"""Per-layer sensitivity on real digits: more compression never helps much, and the table is usable."""

from __future__ import annotations

import math

import pytest

from modelscale.analysis.sensitivity import sensitivity, sensitivity_markdown
from modelscale.core.errors import ModelscaleError
from modelscale.data import make_loader


def test_magnitude_sensitivity_table(digits, digits_cnn):
    model, _ = digits_cnn
    loader = make_loader(digits.val, batch_size=512, shuffle=False)
    table = sensitivity(model, "magnitude_prune", "amount", [0.0, 0.5, 0.99], loader)
    layers = table.layers()
    assert layers and "classifier" in layers
    for layer in layers:
        assert table.drop(layer, 0.0) == 0.0  # zero strength is the identity
        assert table.drop(layer, 0.99) >= table.drop(layer, 0.0)
    # Removing 99% of some layer costs real accuracy somewhere.
    assert max(table.drop(layer, 0.99) for layer in layers) > 0.05
    rec = table.recommend(max_drop=0.005)
    assert all(rec[layer] in (0.0, 0.5, 0.99) for layer in rec)
    text = sensitivity_markdown(table)
    assert text.count("\n") >= len(layers) + 3 and "amount=0.99" in text
    assert not any(math.isnan(r.drop) for r in table.rows)


def test_sensitivity_validates_field(digits_cnn):
    model, _ = digits_cnn
    with pytest.raises(ModelscaleError, match="no field"):
        sensitivity(model, "magnitude_prune", "nope", [0.1], [])
