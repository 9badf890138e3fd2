"""`apply(model, config)`: run one registered technique and return the new model plus a record.

The input model is left untouched (a deep copy is changed) unless `inplace=True`. The record says
what changed, layer by layer, and keeps the exact config so that the step can be replayed.

Example::

    result = apply(model, MagnitudePruneConfig(amount=0.5))
    result.model, result.record.summary["sparsity"]
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from torch import nn

from modelscale.core.config import TechniqueConfig
from modelscale.core.errors import ModelscaleError
from modelscale.core.registry import config_from_dict, get_technique


@dataclass
class ApplyContext:
    """What a technique may need besides the model and its config."""

    calibration: Iterable[Any] | None = None  # batches (inputs, targets) for data-driven techniques
    example_inputs: Any = None  # a batch of inputs, for tracing (structured pruning, quantization)
    loss_fn: Any = None  # loss(outputs, targets) for gradient-based importance


@dataclass
class ChangeRecord:
    """What one technique did: serializable, stored with checkpoints and reports."""

    technique: str
    config: dict[str, Any]
    layers: list[dict[str, Any]] = field(default_factory=list)  # one entry per changed layer, with "name"
    summary: dict[str, Any] = field(default_factory=dict)  # headline numbers (e.g. sparsity)
    notes: list[str] = field(default_factory=list)  # honest caveats ("no CPU kernel", skipped layers)
    state: dict[str, Any] = field(default_factory=dict)  # JSON data the restore function needs

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ChangeRecord:
        return cls(**data)


@dataclass
class ApplyResult:
    model: nn.Module
    record: ChangeRecord


def apply(
    model: nn.Module,
    config: TechniqueConfig | dict[str, Any],
    *,
    inplace: bool = False,
    calibration: Iterable[Any] | None = None,
    example_inputs: Any = None,
    loss_fn: Any = None,
) -> ApplyResult:
    """Apply the registered technique named by `config.type` to `model`."""
    if isinstance(config, dict):
        config = config_from_dict(config)
    if not isinstance(config, TechniqueConfig):
        raise ModelscaleError(f"expected a technique config, got {type(config).__name__}")
    if not isinstance(model, nn.Module):
        raise ModelscaleError(f"expected a torch.nn.Module, got {type(model).__name__}")
    technique = get_technique(config.type)
    target = model if inplace else copy.deepcopy(model)
    ctx = ApplyContext(calibration=calibration, example_inputs=example_inputs, loss_fn=loss_fn)
    record = technique.apply_fn(target, config, ctx)
    if not isinstance(record, ChangeRecord):
        raise TypeError(f"technique {config.type!r} must return a ChangeRecord, got {type(record).__name__}")
    record.config = config.to_dict()
    return ApplyResult(target, record)


def restore(model: nn.Module, record: ChangeRecord | dict[str, Any]) -> nn.Module:
    """Rebuild on a fresh `model` the structure one recorded step created (no weights are loaded)."""
    if isinstance(record, dict):
        record = ChangeRecord.from_dict(record)
    technique = get_technique(record.technique)
    if technique.restore_fn is not None:
        technique.restore_fn(model, config_from_dict(record.config), record)
    return model
