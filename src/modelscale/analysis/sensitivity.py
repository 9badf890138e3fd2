"""Per-layer sensitivity: apply a technique to ONE layer at a time, at several strengths, measure the drop.

For each targeted layer ℓ and strength s, the technique is applied with `target.include = [ℓ]` and the
metric is measured on a validation subset: Δ(ℓ, s) = P₀ − P(ℓ, s). Layers with small Δ can take more
compression; a later search uses the table to set per-layer strengths (through target overrides).

Example::

    table = sensitivity(model, "magnitude_prune", "amount", [0.5, 0.8, 0.95], val_loader)
    print(sensitivity_markdown(table))
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from modelscale.core.apply import apply
from modelscale.core.errors import ModelscaleError
from modelscale.core.registry import get_technique
from modelscale.core.select import Target, select_modules


@dataclass
class SensitivityRow:
    layer: str
    strength: float
    metric: float
    drop: float  # baseline metric − metric (positive = worse)
    error: str | None = None


@dataclass
class SensitivityTable:
    technique: str
    field: str
    metric_name: str
    baseline: float
    strengths: list[float]
    rows: list[SensitivityRow] = dataclasses.field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def drop(self, layer: str, strength: float) -> float:
        for row in self.rows:
            if row.layer == layer and row.strength == strength:
                return row.drop
        raise KeyError((layer, strength))

    def layers(self) -> list[str]:
        return list(dict.fromkeys(r.layer for r in self.rows))

    def recommend(self, max_drop: float) -> dict[str, float]:
        """Per layer, the largest strength whose drop stays <= max_drop (layers with none are omitted)."""
        best: dict[str, float] = {}
        for row in self.rows:
            if row.error is None and row.drop <= max_drop:
                best[row.layer] = max(best.get(row.layer, row.strength), row.strength)
        return best


def accuracy_metric(model: nn.Module, loader: Iterable[Any]) -> float:
    """Top-1 accuracy of `model` over (inputs, targets) batches (classification)."""
    correct = total = 0
    model.eval()
    with torch.inference_mode():
        for x, y in loader:
            correct += int((model(x).argmax(dim=-1) == y).sum())
            total += int(y.numel())
    return correct / max(total, 1)


def sensitivity(
    model: nn.Module,
    technique: str,
    strength_field: str | None,
    strengths: Sequence[float],
    loader: Iterable[Any],
    *,
    base_config: dict[str, Any] | None = None,
    metric: Callable[[nn.Module, Iterable[Any]], float] = accuracy_metric,
    metric_name: str = "accuracy",
    example_inputs: Any = None,
    calibration: Any = None,
    loss_fn: Any = None,
    progress: Callable[[str], None] | None = None,
) -> SensitivityTable:
    """Measure the metric drop of compressing each targeted layer alone at each strength."""
    tech = get_technique(technique)
    strength_field = strength_field or tech.strength  # the registration names its strength knob
    if not strength_field:
        raise ModelscaleError(
            f"{technique!r} registers no strength field; name the config field to vary (--field NAME)"
        )
    base = dict(base_config or {})
    base.pop("type", None)
    probe = tech.config_cls.from_dict({**base})
    if strength_field not in {f.name for f in dataclasses.fields(probe)}:
        raise ModelscaleError(f"{technique} has no field {strength_field!r}")
    if not strengths:
        raise ModelscaleError("give at least one strength")
    batches = list(loader)
    baseline = metric(copy.deepcopy(model), batches)
    table = SensitivityTable(technique, strength_field, metric_name, baseline, [float(s) for s in strengths])
    layers = [name for name, _ in select_modules(model, probe.target)]
    for layer in layers:
        target = Target(types=probe.target.types, include=(layer,))
        for s in strengths:
            config = tech.config_cls.from_dict(
                {**base, strength_field: s, "target": dataclasses.asdict(target)}
            )
            try:
                result = apply(
                    model, config, example_inputs=example_inputs, calibration=calibration, loss_fn=loss_fn
                )
                tech.finalize(result.model, config)  # no training here: complete the technique at once
                value = metric(result.model, batches)
                table.rows.append(SensitivityRow(layer, float(s), value, baseline - value))
            except ModelscaleError as exc:  # e.g. the layer cannot take this strength
                table.rows.append(SensitivityRow(layer, float(s), float("nan"), float("nan"), str(exc)))
            if progress:
                progress(f"{layer} {strength_field}={s}: {table.rows[-1].metric:.4f}")
    return table


def sensitivity_markdown(table: SensitivityTable) -> str:
    """A layer × strength table of metric drops (in points when the metric is a fraction)."""
    scale, unit = (100.0, " pt") if table.metric_name == "accuracy" else (1.0, "")
    head = "| layer | " + " | ".join(f"{table.field}={s:g}" for s in table.strengths) + " |"
    sep = "|---|" + "---|" * len(table.strengths)
    base_unit = "%" if table.metric_name == "accuracy" else ""
    lines = [
        f"Sensitivity of {table.metric_name} to {table.technique} per layer "
        f"(baseline {table.baseline * scale:.2f}{base_unit}; cells = drop{unit or ''}, positive = worse)",
        "",
        head,
        sep,
    ]
    for layer in table.layers():
        cells = []
        for s in table.strengths:
            row = next(r for r in table.rows if r.layer == layer and r.strength == s)
            cells.append("error" if row.error else f"{row.drop * scale:+.2f}")
        lines.append(f"| {layer} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
