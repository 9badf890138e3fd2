"""Gradual (cubic) pruning: schedule values, masks that only grow, and accuracy on real digits."""

from __future__ import annotations

import copy

import pytest

from modelscale.core.apply import apply
from modelscale.core.errors import ModelscaleError
from modelscale.techniques.prune.gradual import GradualPruneConfig, GradualPruning
from modelscale.train import TrainConfig, evaluate, fit


def test_cubic_schedule_values():
    cfg = GradualPruneConfig(initial_sparsity=0.1, amount=0.9, start_step=10, end_step=50)
    assert cfg.sparsity_at(0) == 0.1 and cfg.sparsity_at(10) == 0.1
    assert cfg.sparsity_at(30) == pytest.approx(0.9 + (0.1 - 0.9) * 0.5**3)
    assert cfg.sparsity_at(50) == 0.9 and cfg.sparsity_at(500) == 0.9
    values = [cfg.sparsity_at(t) for t in range(10, 51)]
    assert values == sorted(values)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"initial_sparsity": 0.5, "amount": 0.2}, "amount, the final sparsity, must be >= initial_sparsity"),
        ({"start_step": 10, "end_step": 5}, "end_step"),
        ({"frequency": 0}, "frequency must be >= 1"),
    ],
)
def test_bad_schedules_are_refused(kwargs, message):
    with pytest.raises(ModelscaleError, match=message):
        GradualPruneConfig(**kwargs)


def test_gradual_80_percent_on_digits_keeps_accuracy(digits, digits_cnn):
    base, base_acc = digits_cnn
    steps_per_epoch = -(-len(digits.train) // 64)
    cfg = GradualPruneConfig(
        amount=0.8, start_step=0, end_step=4 * steps_per_epoch, frequency=5, scope="global"
    )
    result = apply(copy.deepcopy(base), cfg)
    assert result.record.summary["sparsity"] == 0.0
    callback = GradualPruning(cfg)
    fit(result.model, digits, TrainConfig(epochs=6, lr=1e-3, seed=0, progress=False), callbacks=[callback])

    sparsities = [s for _, s in callback.applied]
    assert sparsities == sorted(sparsities) and sparsities[-1] == pytest.approx(0.8)
    weights = [m.weight for _, m in result.model.named_modules() if hasattr(m, "parametrizations")]
    zeros = sum(int((w == 0).sum()) for w in weights)
    total = sum(w.numel() for w in weights)
    assert zeros / total == pytest.approx(0.8, abs=1e-3)
    acc = evaluate(result.model, digits.test)["accuracy"]
    assert acc >= base_acc - 0.01, (acc, base_acc)
