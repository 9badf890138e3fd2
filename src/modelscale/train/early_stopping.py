"""Early stopping: track the best value of the monitored validation metric, count epochs without gain.

With `patience` p, training stops once p epochs in a row fail to beat the best value (lower for
val_loss, higher for val_accuracy); with `restore_best` the weights of the best epoch are kept and
loaded at the end. The tracker's whole state goes into the checkpoint, so a resumed run stops
exactly where an uninterrupted one would.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from modelscale.train.checkpoint import clone_state
from modelscale.train.config import TrainConfig


class BestTracker:
    """Tracks the best value of the monitored metric; keeps its weights when they will be restored."""

    def __init__(self, config: TrainConfig) -> None:
        self.key = config.monitor
        self.mode = "min" if config.monitor.endswith("loss") else "max"
        self.patience = config.patience
        self.keep_weights = config.patience is not None and config.restore_best
        self.value: float | None = None
        self.epoch: int | None = None
        self.bad_epochs = 0
        self.weights: dict[str, torch.Tensor] | None = None
        self.stopped = False

    def update(self, epoch: int, metrics: dict[str, float], model: nn.Module) -> None:
        value = metrics.get(self.key)
        if value is None:
            return
        better = self.value is None or (value < self.value if self.mode == "min" else value > self.value)
        if better:
            self.value, self.epoch, self.bad_epochs = value, epoch, 0
            if self.keep_weights:
                self.weights = clone_state(model)
        else:
            self.bad_epochs += 1
            if self.patience is not None and self.bad_epochs >= self.patience:
                self.stopped = True

    def state(self) -> dict[str, Any]:
        return {
            "value": self.value,
            "epoch": self.epoch,
            "bad_epochs": self.bad_epochs,
            "stopped": self.stopped,
            "weights": self.weights,
        }

    def load(self, s: dict[str, Any]) -> None:
        self.value, self.epoch = s["value"], s["epoch"]
        self.bad_epochs, self.stopped, self.weights = s["bad_epochs"], s["stopped"], s["weights"]
