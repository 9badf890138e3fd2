"""Real data: 4-bit weight clustering keeps digits accuracy within 1 point and really shrinks storage."""

from __future__ import annotations

import pytest

from modelscale.core.apply import apply
from modelscale.techniques.cluster.kmeans import WeightClusterConfig, get_clusters

pytest.importorskip("modelscale.train")
pytest.importorskip("modelscale.data")
pytest.importorskip("modelscale.models")

from modelscale.train import evaluate  # noqa: E402
from tests.techniques.lowrank.digits_baseline import fine_tune, trained_cnn  # noqa: E402


def test_four_bit_clustering_keeps_digits_accuracy():
    data, model, baseline = trained_cnn()
    assert baseline > 0.95

    result = apply(model, WeightClusterConfig(bits=4))
    summary = result.record.summary
    assert summary["clustered"] >= 3
    # Packed storage: 4-bit indices + 16-entry fp32 codebooks, against 32-bit dense weights.
    assert summary["packed_bytes"] < summary["dense_bytes"] / 7
    assert evaluate(result.model, data.test)["accuracy"] >= baseline - 0.01

    accuracy = fine_tune(result.model, data)
    assert accuracy >= baseline - 0.01, (baseline, accuracy)
    for row in result.record.layers:  # weights are still shared after fine-tuning
        layer = result.model.get_submodule(row["name"])
        assert get_clusters(layer) is not None and layer.weight.unique().numel() <= 16
