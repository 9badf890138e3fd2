"""GPTQ: calibrated 2/3/4/8-bit weight quantization that corrects each rounding error with the rest of the row.

Frantar, Ashkboos, Hoefler & Alistarh, "GPTQ: Accurate Post-Training Quantization for Generative
Pre-trained Transformers" (ICLR 2023). Per layer, with H = 2 X Xᵀ / n from the layer's calibration
inputs (block by block, each block fed the already-quantized previous blocks; see `calibrate.py`):

    for each column i (by decreasing diag H with act_order):
        q_i = quant(w_i);   e = (w_i − q_i) / U_ii;   W[:, i:] −= e · U[i, i:]      (U = chol(H⁻¹)ᵀ)

with lazy batch updates over blocks of `block_size` columns (`obs.py`). The integer codes, group-wise
scales and zero points are stored exactly like `weight_only` (4/8 bits are its `WeightOnlyLayer`; 2/3
bits are packed bit-exactly), so the file on disk shrinks and `load_compressed` rebuilds it. A Hessian
that is not positive definite is retried with damping ×10 (up to 3 times) and recorded; a layer whose
every try fails is rounded to nearest instead and named in the notes — never a crash. A layer that
already carries a pruning mask keeps its zeros (e.g. Wanda 50% → GPTQ 4-bit).

Example::

    from modelscale import apply
    from modelscale.techniques.oneshot.gptq import GPTQConfig
    cfg = GPTQConfig(bits=4, group_size=128, act_order=True, calibration_samples=128, seq_len=128)
    result = apply(model, cfg, calibration=batches)        # or calibration_data="pystdlib"
    print(result.record.summary["ratio"], result.record.summary["damping_retries"])
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import nn

from modelscale.core.apply import ApplyContext, ChangeRecord
from modelscale.core.config import check_choice, check_range, param
from modelscale.core.errors import ModelscaleError
from modelscale.core.registry import register
from modelscale.techniques.oneshot.calibrate import OneShotConfig, Unit, run_oneshot
from modelscale.techniques.oneshot.obs import QuantSpec, obs_compress
from modelscale.techniques.oneshot.packed import (
    BITS,
    is_conv1d,
    quant_row,
    quantized_layer,
    restore_oneshot_layers,
    weight_matrix,
)
from modelscale.techniques.prune.masks import get_mask
from modelscale.techniques.quantize.common import replace_module, size_summary


def check_quant_fields(bits: int, group_size: int) -> None:
    check_choice("bits", bits, BITS)
    if isinstance(group_size, bool) or group_size < 0 or group_size % 2:
        raise ModelscaleError(
            f"group_size must be 0 (per output channel) or an even number like 32, 64, 128; got {group_size}"
        )


def check_obs_fields(damp: float, block_size: int) -> None:
    check_range("damp", damp, 0.0, 1.0)
    if damp <= 0:
        raise ModelscaleError("damp must be > 0 (a fraction of mean(diag H), e.g. 0.01), got 0")
    check_range("block_size", block_size, 1)


@dataclass(kw_only=True)
class GPTQConfig(OneShotConfig):
    """Calibrated 2/3/4/8-bit weights chosen column by column to minimise each layer's output error."""

    type: ClassVar[str] = "gptq"
    version: ClassVar[int] = 1

    bits: int = param(4, "bits per weight: 2, 3, 4 or 8")
    group_size: int = param(128, "weights sharing one scale along each row; 0 = one group per output channel")
    symmetric: bool = param(False, "symmetric codes (no zero point) or asymmetric with a uint8 zero point")
    act_order: bool = param(
        True, "quantize columns by decreasing Hessian diagonal (groups keep the stored layout)"
    )
    damp: float = param(0.01, "damping: damp · mean(diag H) is added to diag H (×10 on a failed Cholesky)")
    block_size: int = param(128, "columns per lazy batch update")
    scale_dtype: Literal["float32", "float16", "bfloat16"] = param(
        "float32", "dtype the scales are stored in"
    )
    kernel: Literal["dequant", "torch"] = param(
        "dequant", "4/8 bits: dequant, or ATen weight-only CPU kernels where a layer fits (as weight_only)"
    )

    def validate(self) -> None:
        super().validate()
        check_quant_fields(self.bits, self.group_size)
        check_obs_fields(self.damp, self.block_size)


def existing_keep(module: nn.Module) -> torch.Tensor | None:
    """A pruning mask already on the layer, as (out × in) bool, or None."""
    mask = get_mask(module)
    if mask is None:
        return None
    return (mask.t() if is_conv1d(module) else mask).to(torch.bool)


def quantize_unit(
    model: nn.Module, config: OneShotConfig, unit: Unit, rows: list, notes: list, *, hessians=None
) -> None:
    """GPTQ every layer of `unit` (shared with AWQ, which passes Hessians of its scaled inputs)."""
    for name, module in unit.layers:
        spec = QuantSpec(
            bits=config.for_layer(name, "bits"),
            group_size=config.for_layer(name, "group_size"),
            symmetric=config.for_layer(name, "symmetric"),
            scale_dtype=config.scale_dtype,
        )
        keep = existing_keep(module)
        h = hessians[name] if hessians is not None else unit.stats[name].hessian()
        out = obs_compress(
            weight_matrix(module), h, quant=spec, keep=keep,
            act_order=config.for_layer(name, "act_order"), block_size=config.block_size,
            damp=config.for_layer(name, "damp"), own=hessians is None,  # hessian() is a fresh tensor
        )  # fmt: skip
        layer = quantized_layer(
            module, out.codes, out.scale, out.zero, bits=spec.bits, group_size=spec.group_size,
            symmetric=spec.symmetric, scale_dtype=config.scale_dtype, kernel=config.for_layer(name, "kernel"),
        )  # fmt: skip
        replace_module(model, name, layer)
        if out.retries:
            notes.append(
                f"{name}: Hessian not positive definite; damping raised ×10 {out.retries} time(s) to {out.damp:g}"
                + (", still failing: rounded to nearest instead" if out.fallback else "")
            )
        rows.append(
            quant_row(
                name, module, layer, symmetric=spec.symmetric, group_size=spec.group_size,
                kernel=getattr(layer, "kernel", "dequant"), damp=out.damp, damping_retries=out.retries,
                fallback=out.fallback, obs_loss=out.loss,
                kept_mask_sparsity=None if keep is None else float((~keep).float().mean()),
            )
        )  # fmt: skip


def record_for(config, rows, report, notes) -> ChangeRecord:
    summary = {
        **size_summary(rows),
        **report.summary,
        "damping_retries": sum(r.get("damping_retries", 0) for r in rows),
        "fallback_layers": sum(1 for r in rows if r.get("fallback")),
    }
    if any(r["bytes"] and r.get("bits") for r in rows) and config.for_layer("", "kernel") == "dequant":
        notes.insert(0, "storage only: weights are dequantized to float on every call (smaller, not faster)")
    return ChangeRecord(
        technique=config.type, config=config.to_dict(), layers=rows, summary=summary, notes=notes, state={}
    )


def _restore(model: nn.Module, config: GPTQConfig, record: ChangeRecord) -> None:
    restore_oneshot_layers(model, record, config)


@register(GPTQConfig, restore=_restore)
def gptq(model: nn.Module, config: GPTQConfig, ctx: ApplyContext) -> ChangeRecord:
    """GPTQ: calibrated 2/3/4/8-bit group-wise weights, block by block, with act-order and damping retries."""
    rows: list = []
    notes: list[str] = []
    report = run_oneshot(
        model,
        config,
        ctx,
        technique=config.type,
        compress=lambda unit: quantize_unit(model, config, unit, rows, notes),
    )
    return record_for(config, rows, report, report.notes + notes)
