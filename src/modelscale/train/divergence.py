"""Stop a diverged training: a non-finite loss, weights / statistics that are no longer finite, or a
loss that blew up while staying finite.

`check_diverged(model, train_loss, epoch, step, lr, first_loss)` is called by `fit` after every epoch
(one sync, no per-step cost); it raises one line naming what went wrong and the likely cause, so a
diverged run fails instead of saving a model full of NaNs. A finite blow-up is an epoch's mean train
loss more than `BLOWUP`× max(the run's first batch loss, 1) (Adam at lr 1e6 keeps the weights finite
but drives a 10-class cross-entropy from 2.3 to ~10²⁰). The floor of 1 keeps a fine-tune that starts
from a near-zero loss (a trained model, then pruned) from being called diverged when its loss rises.

Example::

    check_diverged(model, train_loss=float("nan"), epoch=1, step=3, lr=1e6)   # raises ModelscaleError
"""

from __future__ import annotations

import math

import torch
from torch import nn

from modelscale.core.errors import ModelscaleError

BLOWUP = 100.0  # an epoch's train loss this many times the first batch's: diverged


def non_finite_tensors(model: nn.Module) -> list[str]:
    """Names of the floating-point parameters and buffers holding a NaN or an infinity."""
    bad = []
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        if t.is_floating_point() and not bool(torch.isfinite(t.detach()).all()):
            bad.append(name)
    return bad


def check_diverged(
    model: nn.Module, *, train_loss: float, epoch: int, step: int, lr: float, first_loss: float | None = None
) -> None:
    """Raise a one-line ModelscaleError if the loss or any weight or statistic is not finite, or the
    train loss rose above `BLOWUP`× max(`first_loss`, 1) (`first_loss`: the run's first batch loss)."""
    bad = non_finite_tensors(model)
    blew_up = (
        first_loss is not None
        and math.isfinite(first_loss)
        and first_loss > 0
        and math.isfinite(train_loss)
        and train_loss > BLOWUP * max(first_loss, 1.0)
    )
    if math.isfinite(train_loss) and not bad and not blew_up:
        return
    total = sum(1 for t in [*model.parameters(), *model.buffers()] if t.is_floating_point())
    if blew_up:
        what = f"the train loss rose to {train_loss:.4g} from {first_loss:.4g} at the first batch"
    elif not math.isfinite(train_loss):
        what = f"the train loss is {train_loss}"
    else:
        what = "the loss stayed finite"
    if bad:
        what += f", {len(bad)} of {total} weight/statistic tensors are not finite (e.g. {bad[0]})"
    raise ModelscaleError(
        f"training diverged by epoch {epoch} (step {step}): {what}; the learning rate {lr:g} is likely "
        f"too high: lower it (e.g. lr {lr / 10:g}) or set grad_clip"
    )
