"""Wanda: prune by weight magnitude times input-activation norm, per output row, with no weight update.

Sun, Liu, Bair & Kolter, "A Simple and Effective Pruning Approach for Large Language Models" (ICLR 2024).
For a layer y = W x with calibration inputs X (rows are tokens), each weight scores

    S_ij = |W_ij| · ‖X_j‖₂

and each output row i drops its lowest-scoring fraction `sparsity` (unstructured), or, with
`pattern="N:M"`, keeps the N highest of every M consecutive input weights (2:4 runs on sparse tensor
cores). The per-output comparison group is the paper's choice for LLMs; `group="layer"` ranks the whole
layer at once instead (the comparison group the paper ablates). Statistics come block by block from the
sequential calibration (`calibrate.py`), so each block sees the already-pruned blocks before it. The
mask is kept by parametrization (`prune/masks.py`): the zeros survive fine-tuning, and the model is as
large and as fast as before until it is stored sparsely.

Example::

    from modelscale import apply
    from modelscale.techniques.oneshot.wanda import WandaConfig
    result = apply(model, WandaConfig(sparsity=0.5), calibration=batches)
    result = apply(model, WandaConfig(pattern="2:4"), calibration=batches)
    print(result.record.summary["sparsity"])
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import nn

from modelscale.core.apply import ApplyContext, ChangeRecord
from modelscale.core.config import check_range, param
from modelscale.core.errors import ModelscaleError
from modelscale.core.registry import register
from modelscale.techniques.oneshot.calibrate import OneShotConfig, Unit, run_oneshot
from modelscale.techniques.oneshot.packed import is_conv1d, weight_matrix
from modelscale.techniques.prune.magnitude import restore_masks
from modelscale.techniques.prune.masks import attach_mask


def parse_pattern(pattern: str) -> tuple[int, int] | None:
    """None for "unstructured", else (n, m) for "N:M" (keep n of every m), 0 < n < m."""
    if pattern == "unstructured":
        return None
    head, sep, tail = pattern.partition(":")
    if sep and head.isdigit() and tail.isdigit() and 0 < int(head) < int(tail):
        return int(head), int(tail)
    raise ModelscaleError(f"pattern must be 'unstructured' or N:M with 0 < N < M (e.g. 2:4); got {pattern!r}")


def check_prune_fields(sparsity: float, pattern: str) -> None:
    check_range("sparsity", sparsity, 0.0, 1.0, hi_open=True)
    parse_pattern(pattern)


def keep_top(
    scores: torch.Tensor,
    *,
    sparsity: float = 0.0,
    n_m: tuple[int, int] | None = None,
    per_layer: bool = False,
) -> torch.Tensor:
    """Boolean keep-mask (out × in): per row, drop the ⌊sparsity·in⌋ lowest scores, or keep the n best of m;
    `per_layer` drops the ⌊sparsity·out·in⌋ lowest of the whole matrix instead (unstructured only)."""
    rows, cols = scores.shape
    drop = torch.zeros_like(scores, dtype=torch.bool)
    if per_layer and n_m is None:
        k = int(scores.numel() * sparsity)
        if k:
            drop.view(-1)[scores.reshape(-1).topk(k, largest=False).indices] = True
        return ~drop
    if n_m is not None:
        n, m = n_m
        grouped = scores.reshape(rows, cols // m, m)
        low = grouped.topk(m - n, dim=-1, largest=False).indices
        return ~drop.view(rows, cols // m, m).scatter(-1, low, True).view(rows, cols)
    k = int(cols * sparsity)
    if k:
        drop.scatter_(1, scores.topk(k, dim=1, largest=False).indices, True)
    return ~drop


def mask_to_weight_layout(module: nn.Module, keep: torch.Tensor) -> torch.Tensor:
    return keep.t().contiguous() if is_conv1d(module) else keep


def sparsity_rows(pruned: list[tuple[str, nn.Module]]) -> tuple[list[dict], dict]:
    rows = []
    for name, module in pruned:
        w = module.weight
        rows.append(
            {
                "name": name,
                "shape": list(w.shape),
                "sparsity": float((w == 0).sum()) / w.numel(),
                "numel": w.numel(),
            }
        )
    zeros = sum(r["sparsity"] * r["numel"] for r in rows)
    total = sum(r["numel"] for r in rows)
    return rows, {"sparsity": zeros / max(total, 1), "zeroed": int(round(zeros)), "targeted_params": total}


@dataclass(kw_only=True)
class WandaConfig(OneShotConfig):
    """Prune the weights with the lowest |W|·‖X‖₂ in each output row (unstructured or N:M), no update."""

    type: ClassVar[str] = "wanda"
    version: ClassVar[int] = 1

    sparsity: float = param(0.5, "fraction of each row's weights set to zero (unstructured), in [0, 1)")
    pattern: str = param("unstructured", "unstructured, or N:M to keep N of every M consecutive inputs (2:4)")
    group: Literal["output", "layer"] = param(
        "output", "unstructured: compare scores within each output row (paper, LLMs) or the whole layer"
    )

    def validate(self) -> None:
        super().validate()
        check_prune_fields(self.sparsity, self.pattern)


@register(WandaConfig, restore=lambda model, config, record: restore_masks(model, record))
def wanda(model: nn.Module, config: WandaConfig, ctx: ApplyContext) -> ChangeRecord:
    """Wanda: |W|·‖X‖₂ pruning per output row, unstructured or N:M, kept by weight masks."""
    pruned: list[tuple[str, nn.Module]] = []
    notes: list[str] = []

    def compress(unit: Unit) -> None:
        for name, module in unit.layers:
            n_m = parse_pattern(config.for_layer(name, "pattern"))
            w = weight_matrix(module)
            if n_m is not None and w.shape[1] % n_m[1]:
                notes.append(f"{name}: {w.shape[1]} inputs is not a multiple of {n_m[1]}, left dense")
                continue
            score = w.abs() * unit.stats[name].sq.sqrt()[None, :]
            keep = keep_top(
                score,
                sparsity=config.for_layer(name, "sparsity"),
                n_m=n_m,
                per_layer=config.for_layer(name, "group") == "layer",
            )
            attach_mask(module, mask_to_weight_layout(module, keep))
            pruned.append((name, module))

    report = run_oneshot(model, config, ctx, technique=config.type, compress=compress, hessian=False)
    rows, totals = sparsity_rows(pruned)
    notes = report.notes + notes
    notes.append("masked weights: as large and as fast as dense until stored or run sparsely")
    return ChangeRecord(
        technique=config.type,
        config=config.to_dict(),
        layers=rows,
        summary={**totals, **report.summary},
        notes=notes,
        state={"masked": [name for name, _ in pruned]},
    )
