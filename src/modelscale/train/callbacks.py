"""Callbacks: how techniques hook into `fit` (keep masks, step a pruning schedule, change the loss).

A callback is any object with some of the methods of `Callback`; missing ones are skipped at no cost.
Each receives the live `TrainState`. Setting `state.should_stop = True` ends training after the
current step (in `on_step_end`) or epoch (in `on_epoch_end`); the checkpoint of that epoch is kept, so a
later `fit(..., resume=True)` continues from it.

Example::

    class StopAfter:
        def __init__(self, epochs): self.epochs = epochs
        def on_epoch_end(self, state):
            state.should_stop = state.epoch >= self.epochs

    fit(model, data, TrainConfig(epochs=10), callbacks=[StopAfter(3)])
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

HOOKS = ("on_train_begin", "on_step_end", "on_epoch_end", "on_train_end")


@runtime_checkable
class Callback(Protocol):
    """Extension point of `fit`; every method is optional."""

    def on_train_begin(self, state: TrainState) -> None: ...

    def on_step_end(self, state: TrainState) -> None:  # after each optimizer step
        ...

    def on_epoch_end(self, state: TrainState) -> None: ...

    def on_train_end(self, state: TrainState) -> None: ...

    def compute_loss(
        self, state: TrainState, outputs: Any, inputs: torch.Tensor, targets: torch.Tensor, loss: torch.Tensor
    ) -> torch.Tensor:  # may return a changed loss (distillation)
        ...


@dataclass(eq=False)
class TrainState:
    """What callbacks see. `epoch` counts from 1; `step` is the number of optimizer steps taken so far."""

    model: nn.Module  # the user's module (never the DDP wrapper)
    optimizer: torch.optim.Optimizer
    scheduler: Any  # torch LR scheduler, or None for a constant rate
    config: Any  # the TrainConfig
    total_steps: int
    epoch: int = 0
    step: int = 0
    metrics: dict[str, float] = field(default_factory=dict)  # latest validation metrics (val_loss, ...)
    history: list[dict[str, float]] = field(default_factory=list)
    should_stop: bool = False
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    rank: int = 0
    world_size: int = 1
    scaler: Any = None  # torch.amp.GradScaler for fp16, else None


class CallbackList:
    """Calls each hook on every callback that defines it; the bound methods are looked up once."""

    def __init__(self, callbacks: Iterable[Any]) -> None:
        self.callbacks = list(callbacks)
        self._hooks = {
            h: [getattr(c, h) for c in self.callbacks if callable(getattr(c, h, None))] for h in HOOKS
        }
        self._loss = [c.compute_loss for c in self.callbacks if callable(getattr(c, "compute_loss", None))]
        self.has_step_hooks = bool(self._hooks["on_step_end"])
        self.changes_loss = bool(self._loss)

    def call(self, hook: str, state: TrainState) -> None:
        for fn in self._hooks[hook]:
            fn(state)

    def compute_loss(
        self, state: TrainState, outputs: Any, inputs: torch.Tensor, targets: torch.Tensor, loss: torch.Tensor
    ) -> torch.Tensor:
        for fn in self._loss:
            loss = fn(state, outputs, inputs, targets, loss)
        return loss
