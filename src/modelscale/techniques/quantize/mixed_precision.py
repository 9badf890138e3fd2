"""Mixed precision by measurement: the drop of a metric when only one layer is quantized
(`quant_sensitivity`, for static_int8 or weight_only), the layers to keep in float under a drop budget
(`keep_in_float`) and the fewest bits per layer within it (`fewest_bits`).

Example::

    from modelscale.techniques.quantize.mixed_precision import keep_in_float, quant_sensitivity
    table = quant_sensitivity(model, val_loader, bits=(8,), calibration=batches)
    print(keep_in_float(table, max_drop=0.005))  # layers whose int8 alone costs more than 0.5 points
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn

from modelscale.core.errors import ModelscaleError
from modelscale.techniques.quantize.observers import batch_inputs


def logit_error_metric(reference: nn.Module) -> Callable[[nn.Module, Iterable[Any]], float]:
    """A sensitivity metric: −‖y − y_ref‖ / ‖y_ref‖ over the batches (0 for the reference; drop = error)."""

    @torch.no_grad()
    def metric(model: nn.Module, loader: Iterable[Any]) -> float:
        reference.eval()
        model.eval()
        num = den = 0.0
        for batch in loader:
            x = batch_inputs(batch)
            ref = reference(x).double()
            num += float((model(x).double() - ref).pow(2).sum())
            den += float(ref.pow(2).sum())
        return -((num / max(den, 1e-30)) ** 0.5)

    return metric


def quant_sensitivity(
    model: nn.Module,
    loader: Iterable[Any],
    *,
    technique: str = "static_int8",
    bits: Sequence[int] = (8,),
    calibration: Any = None,
    base_config: dict[str, Any] | None = None,
    metric: Callable[[nn.Module, Iterable[Any]], float] | None = None,
    metric_name: str = "accuracy",
):
    """Per-layer drop of `metric` when ONLY that layer is quantized (`technique`: static_int8 or weight_only).

    Returns a `SensitivityTable` (field "bits"). With one bit width, `table.recommend(max_drop)` lists the
    layers that take it; the others are the ones to keep in higher precision (`keep_in_float`).
    """
    from modelscale.analysis.sensitivity import accuracy_metric, sensitivity

    if technique not in ("static_int8", "weight_only"):
        raise ModelscaleError(
            f"quant_sensitivity technique must be static_int8 or weight_only, got {technique!r}"
        )
    return sensitivity(
        model,
        technique,
        "bits",
        [int(b) for b in bits],
        loader,
        base_config=base_config,
        metric=metric or accuracy_metric,
        metric_name=metric_name,
        calibration=calibration,
    )


def keep_in_float(table: Any, max_drop: float) -> list[str]:
    """Layers whose drop exceeds `max_drop` at every bit width tried: keep them in higher precision."""
    ok = table.recommend(max_drop)
    return [layer for layer in table.layers() if layer not in ok]


def fewest_bits(table: Any, max_drop: float) -> dict[str, int]:
    """Per layer, the smallest bit width whose drop stays <= max_drop (layers with none are omitted)."""
    best: dict[str, int] = {}
    for row in table.rows:
        if row.error is None and row.drop <= max_drop:
            best[row.layer] = min(best.get(row.layer, int(row.strength)), int(row.strength))
    return best
