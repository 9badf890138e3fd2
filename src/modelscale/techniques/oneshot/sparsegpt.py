"""SparseGPT: one-shot pruning that reconstructs the remaining weights from the layer's Hessian.

Frantar & Alistarh, "SparseGPT: Massive Language Models Can Be Accurately Pruned in One-Shot" (ICML 2023).
With H = 2 X Xᵀ / n from the layer's calibration inputs and U = chol(H⁻¹)ᵀ, columns are visited in
blocks; inside a block the weights with the smallest

    w_ij² / U_jj²          (the OBS saliency: the loss increase of zeroing w_ij alone)

are pruned (`sparsity` of the block for unstructured, or the M − N smallest of every M consecutive inputs
of each row for N:M), and every zeroed (or, with `quantize_bits`, rounded) weight's error is spread onto
the not-yet-visited weights of its row, e = (w − q) / U_jj, W[:, j:] −= e · U[j, j:] (`obs.py`). With
`quantize_bits` the kept weights are quantized in the same pass (joint sparsity + quantization, stored
as packed integer codes with the zeros inside); otherwise the pruned layer keeps a mask.

Example::

    from modelscale import apply
    from modelscale.techniques.oneshot.sparsegpt import SparseGPTConfig
    result = apply(model, SparseGPTConfig(sparsity=0.5), calibration=batches)
    result = apply(model, SparseGPTConfig(pattern="2:4", quantize_bits=4), calibration=batches)
    print(result.record.summary["sparsity"])
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from torch import nn

from modelscale.core.apply import ApplyContext, ChangeRecord
from modelscale.core.config import param
from modelscale.core.errors import ModelscaleError
from modelscale.core.registry import register
from modelscale.techniques.oneshot.calibrate import OneShotConfig, Unit, run_oneshot
from modelscale.techniques.oneshot.gptq import check_obs_fields, check_quant_fields, existing_keep
from modelscale.techniques.oneshot.obs import QuantSpec, obs_compress
from modelscale.techniques.oneshot.packed import (
    quant_row,
    quantized_layer,
    restore_oneshot_layers,
    set_weight_matrix,
    weight_matrix,
)
from modelscale.techniques.oneshot.wanda import (
    check_prune_fields,
    mask_to_weight_layout,
    parse_pattern,
    sparsity_rows,
)
from modelscale.techniques.prune.magnitude import restore_masks
from modelscale.techniques.prune.masks import attach_mask
from modelscale.techniques.quantize.common import replace_module, size_summary


@dataclass(kw_only=True)
class SparseGPTConfig(OneShotConfig):
    """Prune with OBS weight reconstruction (unstructured or N:M), optionally quantizing jointly."""

    type: ClassVar[str] = "sparsegpt"
    version: ClassVar[int] = 1

    sparsity: float = param(
        0.5, "fraction of weights set to zero (unstructured, per column block), in [0, 1)"
    )
    pattern: str = param("unstructured", "unstructured, or N:M to keep N of every M consecutive inputs (2:4)")
    quantize_bits: int = param(
        0, "also quantize the kept weights to 2, 3, 4 or 8 bits in the same pass (0 = no)"
    )
    group_size: int = param(128, "with quantize_bits: weights sharing one scale; 0 = per output channel")
    symmetric: bool = param(False, "with quantize_bits: symmetric codes or asymmetric with a zero point")
    damp: float = param(0.01, "damping: damp · mean(diag H) is added to diag H (×10 on a failed Cholesky)")
    block_size: int = param(128, "columns per block (mask choice and lazy batch update)")
    scale_dtype: Literal["float32", "float16", "bfloat16"] = param(
        "float32", "dtype the scales are stored in"
    )

    def validate(self) -> None:
        super().validate()
        check_prune_fields(self.sparsity, self.pattern)
        if self.quantize_bits:
            check_quant_fields(self.quantize_bits, self.group_size)
        elif self.group_size < 0:
            raise ModelscaleError(f"group_size must be >= 0, got {self.group_size}")
        check_obs_fields(self.damp, self.block_size)


def _restore(model: nn.Module, config: SparseGPTConfig, record: ChangeRecord) -> None:
    restore_masks(model, record)
    restore_oneshot_layers(model, record, config)


@register(SparseGPTConfig, restore=_restore)
def sparsegpt(model: nn.Module, config: SparseGPTConfig, ctx: ApplyContext) -> ChangeRecord:
    """SparseGPT: OBS pruning with weight reconstruction, unstructured or N:M, optionally joint with quantization."""
    masked: list[tuple[str, nn.Module]] = []
    quant_rows: list[dict] = []
    notes: list[str] = []
    retries = fallback = 0

    def compress(unit: Unit) -> None:
        nonlocal retries, fallback
        for name, module in unit.layers:
            n_m = parse_pattern(config.for_layer(name, "pattern"))
            w = weight_matrix(module)
            if n_m is not None and w.shape[1] % n_m[1]:
                notes.append(f"{name}: {w.shape[1]} inputs is not a multiple of {n_m[1]}, left dense")
                continue
            bits = config.for_layer(name, "quantize_bits")
            spec = None
            if bits:
                spec = QuantSpec(
                    bits=bits, group_size=config.for_layer(name, "group_size"),
                    symmetric=config.for_layer(name, "symmetric"), scale_dtype=config.scale_dtype,
                )  # fmt: skip
            out = obs_compress(
                w, unit.stats[name].hessian(), quant=spec, sparsity=config.for_layer(name, "sparsity") if n_m is None else 0.0,
                n_m=n_m, keep=existing_keep(module), block_size=config.block_size, damp=config.for_layer(name, "damp"),
                own=True,  # hessian() is a fresh tensor
            )  # fmt: skip
            retries += out.retries
            fallback += out.fallback
            if out.retries:
                notes.append(
                    f"{name}: Hessian not positive definite; damping raised ×10 {out.retries} time(s) to {out.damp:g}"
                    + (", still failing: magnitude pruning instead" if out.fallback else "")
                )
            if spec is None:
                set_weight_matrix(module, out.weight)
                attach_mask(module, mask_to_weight_layout(module, out.keep))
                masked.append((name, module))
            else:
                layer = quantized_layer(
                    module, out.codes, out.scale, out.zero, bits=bits, group_size=spec.group_size,
                    symmetric=spec.symmetric, scale_dtype=config.scale_dtype,
                )  # fmt: skip
                replace_module(model, name, layer)
                quant_rows.append(
                    quant_row(
                        name, module, layer, symmetric=spec.symmetric, group_size=spec.group_size,
                        damp=out.damp, damping_retries=out.retries, fallback=out.fallback,
                        sparsity=float((~out.keep).float().mean()),
                    )
                )  # fmt: skip

    report = run_oneshot(model, config, ctx, technique=config.type, compress=compress)
    mask_rows, totals = sparsity_rows(masked)
    if quant_rows:
        zeros = totals["zeroed"] + sum(r["sparsity"] * r["shape"][0] * r["shape"][1] for r in quant_rows)
        total = totals["targeted_params"] + sum(r["shape"][0] * r["shape"][1] for r in quant_rows)
        totals = {"sparsity": zeros / max(total, 1), "zeroed": int(round(zeros)), "targeted_params": total}
        totals.update({k: v for k, v in size_summary(quant_rows).items() if k != "layers"})
    if masked:
        notes.append("masked weights: as large and as fast as dense until stored or run sparsely")
    return ChangeRecord(
        technique=config.type,
        config=config.to_dict(),
        layers=mask_rows + quant_rows,
        summary={**totals, **report.summary, "damping_retries": retries, "fallback_layers": fallback},
        notes=report.notes + notes,
        state={"masked": [name for name, _ in masked]},
    )
