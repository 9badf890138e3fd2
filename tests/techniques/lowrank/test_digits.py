"""Real data: SVD keeping 90% energy costs at most 1 point of digits accuracy after a short fine-tune."""

from __future__ import annotations

import pytest
import torch

from modelscale.core.apply import apply
from modelscale.techniques.lowrank.svd import LowRankLinear, LowRankSVDConfig

pytest.importorskip("modelscale.train")
pytest.importorskip("modelscale.data")
pytest.importorskip("modelscale.models")

from tests.techniques.lowrank.digits_baseline import fine_tune, trained_cnn  # noqa: E402


def _params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_svd_90_percent_energy_keeps_digits_accuracy():
    data, model, baseline = trained_cnn()
    assert baseline > 0.95

    result = apply(model, LowRankSVDConfig(energy=0.9))
    summary = result.record.summary
    assert summary["factorized"] >= 2 and all(r["energy_kept"] >= 0.9 for r in result.record.layers)
    assert (
        _params(result.model)
        == summary["model_params_after"]
        < summary["model_params_before"]
        == _params(model)
    )
    assert any(isinstance(m, LowRankLinear) for m in result.model.modules())

    accuracy = fine_tune(result.model, data)
    assert accuracy >= baseline - 0.01, (baseline, accuracy)
