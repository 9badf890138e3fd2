"""Linear probing: freeze the whole network except its (optionally new) classifier head.

Alain & Bengio, "Understanding intermediate layers using linear classifier probes" (2016); the
standard transfer baseline of Kornblith et al., "Do Better ImageNet Models Transfer Better?" (2019).
With frozen features φ(x), only the head is trained: ŷ = W φ(x) + b, so the trainable parameters are
d·k + k for feature width d and k classes. The head is the last module the target selects (by
default the last `nn.Linear`); `new_num_classes` swaps it for a fresh Linear(d, k) for a new task,
`reinit` re-draws it with the same shape. Caveat: BatchNorm running statistics still update when the
frozen model is trained in train mode (they are buffers, not parameters).

Example::

    from modelscale import apply
    from modelscale.techniques.peft.probe import LinearProbeConfig
    result = apply(model, LinearProbeConfig(new_num_classes=5))
    print(result.record.summary["trainable_params"])   # d·5 + 5
    fit(result.model, new_task_data, TrainConfig(epochs=10))
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import nn

from modelscale.core.apply import ApplyContext, ChangeRecord
from modelscale.core.config import TechniqueConfig, check_range, param
from modelscale.core.registry import register
from modelscale.core.select import Target, select_modules
from modelscale.techniques.peft._common import (
    common_notes,
    count_params,
    freeze_except,
    module_param_names,
    new_linear_head,
    param_summary,
    set_module,
)


@dataclass(kw_only=True)
class LinearProbeConfig(TechniqueConfig):
    """Train only the classifier head (the last module the target selects); freeze the rest."""

    type: ClassVar[str] = "linear_probe"
    version: ClassVar[int] = 1

    target: Target = param(
        factory=lambda: Target(types=("Linear",)),
        help="the head is the last module this selects (default: the last nn.Linear)",
    )
    new_num_classes: int | None = param(None, "replace the head by a fresh Linear with this many outputs")
    reinit: bool = param(False, "re-draw the head's weights (same shape) before training")
    seed: int = param(0, "seed of a new or re-drawn head")

    def validate(self) -> None:
        if self.new_num_classes is not None:
            check_range("new_num_classes", self.new_num_classes, 1)
        check_range("seed", self.seed, 0)


def _freeze_to_head(model: nn.Module, head: str) -> None:
    freeze_except(model, module_param_names(model, head))


@register(LinearProbeConfig, restore=lambda model, config, record: restore_probe(model, config, record))
def linear_probe(model: nn.Module, config: LinearProbeConfig, ctx: ApplyContext) -> ChangeRecord:
    """Linear probe: freeze everything but the (optionally re-initialised or replaced) head."""
    before = count_params(model)
    head_name, head = select_modules(model, config.target)[-1]
    old_shape = list(head.weight.shape) if isinstance(getattr(head, "weight", None), nn.Parameter) else None
    replaced = config.new_num_classes is not None or config.reinit
    if replaced:
        set_module(model, head_name, new_linear_head(head, config.new_num_classes, config.seed))
    _freeze_to_head(model, head_name)
    new = model.get_submodule(head_name)
    notes = common_notes(model, head_name)
    if not any(p.requires_grad for p in new.parameters()):
        notes.append(f"head {head_name} has no parameters: nothing is trainable")
    return ChangeRecord(
        technique=config.type,
        config=config.to_dict(),
        layers=[
            {
                "name": head_name,
                "kind": type(new).__name__,
                "shape_before": old_shape,
                "shape_after": list(new.weight.shape) if hasattr(new, "weight") else None,
                "replaced": replaced,
            }
        ],
        summary={"head": head_name, **param_summary(model, before)},
        notes=notes,
        state={"head": head_name, "replaced": replaced},
    )


def restore_probe(model: nn.Module, config: LinearProbeConfig, record: ChangeRecord) -> None:
    """Recreate the head's shape (when it was replaced) and the freezing, so saved weights load."""
    head = record.state["head"]
    if record.state.get("replaced"):
        set_module(
            model, head, new_linear_head(model.get_submodule(head), config.new_num_classes, config.seed)
        )
    _freeze_to_head(model, head)
