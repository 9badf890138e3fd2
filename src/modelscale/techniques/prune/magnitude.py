"""Unstructured magnitude pruning: zero the weights of smallest absolute value.

Han et al., "Learning both Weights and Connections for Efficient Neural Networks" (2015).
For sparsity s, per layer (scope="layer") keep w_i iff |w_i| ranks above the ⌊s·n⌋ smallest of that
layer; globally (scope="global") the ranking is over all targeted weights at once, so layers with
small weights lose more. Masks are kept by parametrization (see `masks.py`): pruned weights stay
exactly zero through fine-tuning. A masked model is not smaller or faster until it is stored or run
sparsely — `modelscale.measure` reports zipped bytes, never a speedup it did not measure.

Example::

    from modelscale import apply
    from modelscale.techniques.prune.magnitude import MagnitudePruneConfig
    result = apply(model, MagnitudePruneConfig(amount=0.8, scope="global"))
    print(result.record.summary["sparsity"])   # 0.8 of the targeted weights are zero
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import nn

from modelscale.core.apply import ApplyContext, ChangeRecord
from modelscale.core.config import TechniqueConfig, check_range, param
from modelscale.core.registry import register
from modelscale.core.select import select_modules
from modelscale.techniques.prune.masks import attach_mask, get_mask


@dataclass(kw_only=True)
class MagnitudePruneConfig(TechniqueConfig):
    """Zero the smallest-magnitude weights of the targeted layers."""

    type: ClassVar[str] = "magnitude_prune"
    version: ClassVar[int] = 1

    amount: float = param(0.5, "fraction of targeted weights set to zero, in [0, 1)")
    scope: Literal["layer", "global"] = param("layer", "rank weights within each layer or across all layers")

    def validate(self) -> None:
        check_range("amount", self.amount, 0.0, 1.0, hi_open=True)


def _smallest_mask(scores: torch.Tensor, count: int) -> torch.Tensor:
    """Boolean keep-mask that drops exactly `count` entries of lowest score (ties broken by index)."""
    keep = torch.ones(scores.numel(), dtype=torch.bool, device=scores.device)
    if count > 0:
        drop = torch.topk(scores.flatten(), count, largest=False, sorted=False).indices
        keep[drop] = False
    return keep.view_as(scores)


def layer_sparsity_rows(layers: list[tuple[str, nn.Module]]) -> list[dict]:
    rows = []
    for name, module in layers:
        w = module.weight
        rows.append(
            {
                "name": name,
                "shape": list(w.shape),
                "sparsity": float((w == 0).sum()) / w.numel(),
                "numel": w.numel(),
            }
        )
    return rows


@register(
    MagnitudePruneConfig,
    restore=lambda model, config, record: restore_masks(model, record),
    strength="amount",
)
def magnitude_prune(model: nn.Module, config: MagnitudePruneConfig, ctx: ApplyContext) -> ChangeRecord:
    """Unstructured magnitude pruning (per layer or global), kept by weight masks."""
    layers = [
        (n, m)
        for n, m in select_modules(model, config.target)
        if isinstance(getattr(m, "weight", None), torch.Tensor)
    ]
    with torch.no_grad():
        scores = {name: m.weight.detach().abs().float() for name, m in layers}
        if config.scope == "global" and not config.target.overrides:
            flat = torch.cat([s.flatten() for s in scores.values()])
            keep_all = _smallest_mask(flat, int(config.amount * flat.numel()))
            offset = 0
            for name, m in layers:
                n = scores[name].numel()
                attach_mask(m, keep_all[offset : offset + n].view_as(scores[name]))
                offset += n
        else:
            for name, m in layers:
                amount = config.for_layer(name, "amount")
                attach_mask(m, _smallest_mask(scores[name], int(amount * scores[name].numel())))
    rows = layer_sparsity_rows(layers)
    zeros = sum(r["sparsity"] * r["numel"] for r in rows)
    total = sum(r["numel"] for r in rows)
    notes = []
    if config.scope == "global" and config.target.overrides:
        notes.append("per-layer overrides given: amounts applied per layer, not globally")
    return ChangeRecord(
        technique=config.type,
        config=config.to_dict(),
        layers=rows,
        summary={"sparsity": zeros / max(total, 1), "zeroed": int(round(zeros)), "targeted_params": total},
        notes=notes,
        state={"masked": [name for name, _ in layers]},
    )


def restore_masks(model: nn.Module, record: ChangeRecord) -> None:
    """Re-create (all-True) masks on the recorded layers so saved masks and weights load into them."""
    modules = dict(model.named_modules())
    for name in record.state.get("masked", []):
        module = modules[name]
        if get_mask(module) is None:
            attach_mask(module, torch.ones_like(module.weight, dtype=torch.bool))
