"""A small zoo `cnn` trained briefly on digits, built once per test session and shared (read-only)."""

from __future__ import annotations

from functools import lru_cache

import torch

TRAIN = {"optimizer": "adamw", "batch_size": 64, "seed": 0, "progress": False, "device": "cpu"}


@lru_cache(maxsize=1)
def trained_cnn():
    """(data, model, baseline test accuracy); callers must not change the model (apply copies it)."""
    from modelscale.data import load_data
    from modelscale.models import build_model
    from modelscale.train import TrainConfig, evaluate, fit

    data = load_data("digits", seed=0)
    torch.manual_seed(0)
    model = build_model("cnn", num_classes=10, input_shape=data.input_shape, width=0.5)
    fit(model, data, TrainConfig(epochs=5, lr=3e-3, **TRAIN))
    return data, model.eval(), evaluate(model, data.test)["accuracy"]


def fine_tune(model, data, epochs: int = 1) -> float:
    """Fine-tune `model` in place for `epochs` at a low learning rate; return its test accuracy."""
    from modelscale.train import TrainConfig, evaluate, fit

    fit(model, data, TrainConfig(epochs=epochs, lr=5e-4, **TRAIN))
    return evaluate(model, data.test)["accuracy"]
