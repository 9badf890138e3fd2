"""BitFit: fine-tune only the bias terms (and, by default, the classifier head).

Ben Zaken, Ravfogel & Goldberg, "BitFit: Simple Parameter-efficient Fine-tuning for
Transformer-based Masked Language-models" (2022). Every layer y = W x + b keeps W frozen and trains
b (including the shifts β of BatchNorm/LayerNorm), plus the task's classifier head as in the paper.
Trainable parameters ≈ Σ_layers d_out + head, typically < 1% of the model. Layers without a bias
(the zoo `cnn`'s convolutions are bias-free, followed by BatchNorm) contribute nothing; the record
lists how many biases were found. BatchNorm running statistics still update in train mode.

Example::

    from modelscale import apply
    from modelscale.techniques.peft.bitfit import BitFitConfig
    result = apply(model, BitFitConfig(train_head=True))
    print(result.record.summary["trainable_fraction"])
    fit(result.model, data, TrainConfig(epochs=10, lr=1e-2))
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import nn

from modelscale.core.apply import ApplyContext, ChangeRecord
from modelscale.core.config import TechniqueConfig, param
from modelscale.core.registry import register
from modelscale.core.select import Target, select_modules
from modelscale.techniques.peft._common import (
    common_notes,
    count_params,
    find_head,
    freeze_except,
    module_param_names,
    param_summary,
)


@dataclass(kw_only=True)
class BitFitConfig(TechniqueConfig):
    """Train only biases of the targeted modules (plus the head when `train_head`)."""

    type: ClassVar[str] = "bitfit"
    version: ClassVar[int] = 1

    target: Target = param(
        factory=lambda: Target(types=()), help="modules whose `bias` is trained (default: every module)"
    )
    train_head: bool = param(True, "also train the whole classifier head (weights and bias)")
    head: str = param("", "name of the head module; '' = the last nn.Linear")


def _trainable_names(model: nn.Module, config: BitFitConfig) -> tuple[list[str], str | None]:
    names = []
    for name, module in select_modules(model, config.target):
        bias = getattr(module, "bias", None)
        if isinstance(bias, nn.Parameter) and any(bias is p for p in module.parameters(recurse=False)):
            names.append(f"{name}.bias")
    head = None
    if config.train_head:
        head, _ = find_head(model, config.head)
        names += module_param_names(model, head)
    return names, head


@register(
    BitFitConfig,
    restore=lambda model, config, record: freeze_except(model, record.state["trainable"]),
)
def bitfit(model: nn.Module, config: BitFitConfig, ctx: ApplyContext) -> ChangeRecord:
    """BitFit: freeze all weights, train the biases (and the head)."""
    before = count_params(model)
    names, head = _trainable_names(model, config)
    freeze_except(model, names)
    params = dict(model.named_parameters())
    biases = [n for n in names if n.endswith(".bias") and (head is None or not n.startswith(f"{head}."))]
    notes = common_notes(model, head)
    if not biases:
        notes.append("the targeted modules have no bias terms: only the head is trainable")
    layers = [{"name": n[: -len(".bias")], "bias_params": params[n].numel()} for n in biases]
    return ChangeRecord(
        technique=config.type,
        config=config.to_dict(),
        layers=layers,
        summary={"biases": len(biases), "head": head, **param_summary(model, before)},
        notes=notes,
        state={"trainable": sorted(set(names))},
    )
