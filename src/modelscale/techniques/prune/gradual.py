"""Gradual magnitude pruning: sparsity ramps from s₀ to s_f over fine-tuning steps (cubic schedule).

Zhu & Gupta, "To prune, or not to prune" (2017). At optimizer step t, for t₀ ≤ t ≤ t₀ + n·Δt:

    s_t = s_f + (s₀ − s_f) · (1 − (t − t₀) / (n·Δt))³

pruning fast at first, when many weights are redundant, and slowly near the end. `apply` attaches
masks at s₀; the trainer callback `GradualPruning` raises the sparsity every Δt steps by magnitude
(masks only ever shrink, so pruned weights stay exactly zero). Storage gains show in zipped or sparse
bytes only; no speed is claimed without a measurement.

Example::

    cfg = GradualPruneConfig(initial_sparsity=0.0, amount=0.8, start_step=0, end_step=300)
    result = apply(model, cfg)
    fit(result.model, data, TrainConfig(epochs=10), callbacks=[GradualPruning(cfg)])
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from torch import nn

from modelscale.core.apply import ApplyContext, ChangeRecord
from modelscale.core.config import TechniqueConfig, check_range, param
from modelscale.core.errors import ModelscaleError
from modelscale.core.registry import register
from modelscale.techniques.prune.magnitude import MagnitudePruneConfig, magnitude_prune, restore_masks


@dataclass(kw_only=True)
class GradualPruneConfig(TechniqueConfig):
    """Magnitude pruning whose sparsity follows the cubic schedule during fine-tuning."""

    type: ClassVar[str] = "gradual_prune"
    version: ClassVar[int] = 1

    initial_sparsity: float = param(0.0, "sparsity s₀ applied at once, in [0, 1)")
    amount: float = param(
        0.8,
        "final sparsity s_f, reached at end_step (and set by finalize), in [0, 1)",
        aliases=("final_sparsity",),
    )
    start_step: int = param(0, "optimizer step t₀ at which the ramp starts")
    end_step: int = param(100, "optimizer step at which the final sparsity is reached")
    frequency: int = param(10, "prune every Δt optimizer steps (masks update in between stay fixed)")
    scope: Literal["layer", "global"] = param("layer", "rank weights within each layer or across all layers")

    def validate(self) -> None:
        check_range("initial_sparsity", self.initial_sparsity, 0.0, 1.0, hi_open=True)
        check_range("amount", self.amount, 0.0, 1.0, hi_open=True)
        check_range("start_step", self.start_step, 0)
        check_range("frequency", self.frequency, 1)
        if self.amount < self.initial_sparsity:
            raise ModelscaleError("amount, the final sparsity, must be >= initial_sparsity")
        if self.end_step <= self.start_step:
            raise ModelscaleError(f"end_step ({self.end_step}) must be > start_step ({self.start_step})")

    def sparsity_at(self, step: int) -> float:
        """The scheduled sparsity after optimizer step `step`."""
        if step <= self.start_step:
            return self.initial_sparsity
        if step >= self.end_step:
            return self.amount
        progress = (step - self.start_step) / (self.end_step - self.start_step)
        return self.amount + (self.initial_sparsity - self.amount) * (1.0 - progress) ** 3

    def step_config(self, sparsity: float) -> MagnitudePruneConfig:
        return MagnitudePruneConfig(amount=sparsity, scope=self.scope, target=self.target)


def _finalize(model: nn.Module, config: GradualPruneConfig) -> ChangeRecord:
    """After the fine-tune: masks at the final sparsity, whatever step the schedule reached."""
    record = magnitude_prune(model, config.step_config(config.amount), ApplyContext())
    record.technique = config.type
    record.config = config.to_dict()
    record.notes.append(f"finalized at sparsity {config.amount:g} after fine-tuning")
    return record


@register(
    GradualPruneConfig,
    restore=lambda model, config, record: restore_masks(model, record),
    strength="amount",
    callbacks=lambda config: [GradualPruning(config)],
    finalize=_finalize,
)
def gradual_prune(model: nn.Module, config: GradualPruneConfig, ctx: ApplyContext) -> ChangeRecord:
    """Gradual (cubic-schedule) magnitude pruning: masks at s₀ now, raised by the GradualPruning callback."""
    record = magnitude_prune(model, config.step_config(config.initial_sparsity), ctx)
    record.technique = config.type
    record.notes.append(
        f"sparsity {config.initial_sparsity:g} now; a following fine-tune raises it to {config.amount:g} "
        f"by step {config.end_step} (callbacks=[GradualPruning(config)]), then finalize sets it exactly"
    )
    return record


class GradualPruning:
    """Trainer callback: every `frequency` steps, prune the model to `config.sparsity_at(step)`."""

    def __init__(self, config: GradualPruneConfig) -> None:
        self.config = config
        self.applied: list[tuple[int, float]] = []  # (step, sparsity) each time the masks were raised
        self.last_record: ChangeRecord | None = None

    def _prune(self, model: nn.Module, step: int) -> None:
        sparsity = self.config.sparsity_at(step)
        if self.applied and sparsity <= self.applied[-1][1]:
            return
        self.last_record = magnitude_prune(model, self.config.step_config(sparsity), ApplyContext())
        self.applied.append((step, sparsity))

    def on_step_end(self, state: Any) -> None:
        step = int(state.step)
        due = (step - self.config.start_step) % self.config.frequency == 0 or step == self.config.end_step
        if self.config.start_step <= step <= self.config.end_step and due:
            self._prune(_unwrap(state.model), step)

    def on_train_end(self, state: Any) -> None:
        # Make sure the final sparsity is reached even if training stopped before end_step's multiple.
        if int(state.step) >= self.config.end_step:
            self._prune(_unwrap(state.model), self.config.end_step)


def _unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)  # DistributedDataParallel keeps the model in .module
