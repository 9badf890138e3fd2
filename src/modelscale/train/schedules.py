"""Learning-rate schedules, evaluated per optimizer step: linear warm-up, then constant, cosine or step decay.

For optimizer step s (0-based), peak rate η, warm-up W and T total steps:

    warm-up (s < W):  η · (s + 1) / W
    cosine:           η · ½ (1 + cos(π (s − W) / (T − W)))
    step:             η · γ^⌊(s − W) / step_size⌋
    constant:         η

Example::

    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = build_scheduler(opt, "cosine", total_steps=1000, warmup_steps=100)
    for batch in batches:
        ...; opt.step(); sched.step()
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from modelscale.core.errors import ModelscaleError


def lr_factor(
    step: int,
    schedule: str,
    *,
    total_steps: int,
    warmup_steps: int = 0,
    step_size: int = 1000,
    gamma: float = 0.1,
) -> float:
    """Multiplier of the peak learning rate at optimizer step `step` (0-based)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    after = step - warmup_steps
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        span = max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(after, span) / span))
    if schedule == "step":
        return gamma ** (after // step_size)
    raise ModelscaleError(f"unknown schedule {schedule!r}; valid options: constant, cosine, step")


def schedule_fn(schedule: str, **kwargs) -> Callable[[int], float]:
    """`lr_factor` with everything but the step fixed (what `LambdaLR` wants)."""
    lr_factor(0, schedule, **kwargs)  # fail early on a bad name

    def factor(step: int) -> float:
        return lr_factor(step, schedule, **kwargs)

    return factor


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    schedule: str,
    *,
    total_steps: int,
    warmup_steps: int = 0,
    step_size: int = 1000,
    gamma: float = 0.1,
) -> torch.optim.lr_scheduler.LambdaLR | None:
    """A per-step scheduler, or None when the rate never changes (constant without warm-up)."""
    if schedule == "constant" and warmup_steps == 0:
        return None
    fn = schedule_fn(
        schedule, total_steps=total_steps, warmup_steps=warmup_steps, step_size=step_size, gamma=gamma
    )
    return torch.optim.lr_scheduler.LambdaLR(optimizer, fn)
