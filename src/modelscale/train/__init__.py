"""Training: `fit` a model on a `DataBundle`, `evaluate` it, hook techniques in with callbacks.

Example::

    from modelscale.train import TrainConfig, evaluate, fit
    result = fit(model, data, TrainConfig(epochs=20, optimizer="sgd", lr=0.05, patience=5))
    print(result.history[-1], evaluate(model, data.test))
"""

from __future__ import annotations

from modelscale.train.callbacks import Callback, TrainState
from modelscale.train.config import TrainConfig
from modelscale.train.evaluate import evaluate
from modelscale.train.loop import TrainResult, fit
from modelscale.train.schedules import build_scheduler, lr_factor

__all__ = [
    "Callback",
    "TrainConfig",
    "TrainResult",
    "TrainState",
    "build_scheduler",
    "evaluate",
    "fit",
    "lr_factor",
]
