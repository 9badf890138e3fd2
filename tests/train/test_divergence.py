"""Divergence checks of `fit`: non-finite values, and a loss that blows up while staying finite."""

from __future__ import annotations

import pytest
from torch import nn

from modelscale.core.errors import ModelscaleError
from modelscale.train.divergence import BLOWUP, check_diverged


def _model() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))


def test_a_finite_loss_a_hundredfold_above_the_first_batch_is_divergence():
    with pytest.raises(ModelscaleError, match="rose to .* from 2.3"):
        check_diverged(_model(), train_loss=2.3 * BLOWUP * 1.01, epoch=1, step=5, lr=1e6, first_loss=2.3)
    # just under the threshold, or no first loss known: not divergence
    check_diverged(_model(), train_loss=2.3 * BLOWUP * 0.99, epoch=1, step=5, lr=1.0, first_loss=2.3)
    check_diverged(_model(), train_loss=1e9, epoch=1, step=5, lr=1.0, first_loss=None)


def test_a_fine_tune_from_a_near_zero_loss_may_rise_without_being_called_diverged():
    # a trained model (first loss 0.002) pruned hard: its loss rises 250× but stays a sane 0.5
    check_diverged(_model(), train_loss=0.5, epoch=1, step=5, lr=1e-3, first_loss=0.002)
    with pytest.raises(ModelscaleError, match="diverged"):
        check_diverged(_model(), train_loss=1.5 * BLOWUP, epoch=1, step=5, lr=1e-3, first_loss=0.002)


def test_non_finite_statistics_are_divergence_even_with_a_finite_loss():
    model = _model()
    model[1].running_var.fill_(float("inf"))
    with pytest.raises(
        ModelscaleError, match=r"1 of 6 weight/statistic tensors are not finite \(e.g. 1.running_var\)"
    ):
        check_diverged(model, train_loss=2.0, epoch=2, step=9, lr=10.0, first_loss=2.0)


def test_fit_stops_a_finite_blow_up_and_a_sane_run_passes():
    from modelscale.train.config import TrainConfig
    from modelscale.train.loop import fit
    from tests.train._digits import digits_bundle, mlp

    data = digits_bundle(n_train=400, n_val=100)
    with pytest.raises(ModelscaleError, match="rose to .* at the first batch"):
        fit(
            mlp(), data, TrainConfig(epochs=2, lr=1e6, optimizer="adamw", schedule="constant", progress=False)
        )
    result = fit(mlp(), data, TrainConfig(epochs=2, lr=1e-2, optimizer="adamw", progress=False))
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
