"""Stop a diverged training: a non-finite loss, or weights / statistics that are no longer finite.

`check_diverged(model, train_loss, epoch, step, lr)` is called by `fit` after every epoch (one sync,
no per-step cost); it raises one line naming what went non-finite and the likely cause, so a diverged
run fails instead of saving a model full of NaNs.

Example::

    check_diverged(model, train_loss=float("nan"), epoch=1, step=3, lr=1e6)   # raises ModelscaleError
"""

from __future__ import annotations

import math

import torch
from torch import nn

from modelscale.core.errors import ModelscaleError


def non_finite_tensors(model: nn.Module) -> list[str]:
    """Names of the floating-point parameters and buffers holding a NaN or an infinity."""
    bad = []
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        if t.is_floating_point() and not bool(torch.isfinite(t.detach()).all()):
            bad.append(name)
    return bad


def check_diverged(model: nn.Module, *, train_loss: float, epoch: int, step: int, lr: float) -> None:
    """Raise a one-line ModelscaleError if the loss or any weight or statistic is not finite."""
    bad = non_finite_tensors(model)
    if math.isfinite(train_loss) and not bad:
        return
    total = sum(1 for t in [*model.parameters(), *model.buffers()] if t.is_floating_point())
    what = f"the train loss is {train_loss}" if not math.isfinite(train_loss) else "the loss stayed finite"
    if bad:
        what += f", {len(bad)} of {total} weight/statistic tensors are not finite (e.g. {bad[0]})"
    raise ModelscaleError(
        f"training diverged by epoch {epoch} (step {step}): {what}; the learning rate {lr:g} is likely "
        f"too high: lower it (e.g. lr {lr / 10:g}) or set grad_clip"
    )
