"""The training loss a task calls for — one definition, used by the trainer and by every technique that
needs a loss (gradient importance, sensitivity): cross-entropy on the logits, per token for language
models, with optional label smoothing."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from modelscale.train.evaluate import logits_of


def criterion(task: str, label_smoothing: float = 0.0) -> Callable[[Any, torch.Tensor], torch.Tensor]:
    """loss(outputs, targets) for `task` ("classification" or "lm")."""

    def loss(outputs: Any, targets: torch.Tensor) -> torch.Tensor:
        logits = logits_of(outputs)
        if task == "lm":
            return F.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), label_smoothing=label_smoothing
            )
        return F.cross_entropy(logits, targets, label_smoothing=label_smoothing)

    return loss


def loss_for(data: Any, label_smoothing: float = 0.0) -> Callable[[Any, torch.Tensor], torch.Tensor]:
    """The criterion for a data bundle's task (classification when `data` is None)."""
    return criterion(
        getattr(data, "task", "classification") if data is not None else "classification", label_smoothing
    )
