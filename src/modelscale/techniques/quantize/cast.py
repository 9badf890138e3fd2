"""Lower-precision float storage of weights: fp16, bf16 or fp8 (e4m3) with a scale.

Micikevicius et al., "Mixed Precision Training" (2018) for fp16/bf16; Micikevicius et al., "FP8
Formats for Deep Learning" (2022) for e4m3 (4 exponent bits, 3 mantissa bits, largest value 448).

- float16 / bfloat16: the layer's weight is stored in that dtype; the forward casts its input to it,
  runs the layer there and casts the output back to the input's dtype, so the model still composes
  with float32 neighbours.
- float8_e4m3: W_8 = fp8(W / s) with s = max|W| / 448 per tensor or per output channel, stored as
  torch.float8_e4m3fn; the forward dequantizes W ≈ W_8 · s to the input dtype. No CPU has an fp8
  GEMM: this saves storage only. Real fp8 matrix multiplies (torch._scaled_mm) need a GPU with fp8
  tensor cores (compute capability 8.9 or newer).

Example::

    from modelscale import apply
    from modelscale.techniques.quantize.cast import CastConfig
    result = apply(model, CastConfig(dtype="bfloat16", target={"exclude": ["classifier"]}))
    logits = result.model(x)                      # float32 in, float32 out
    print(result.record.summary["ratio"])          # 2x smaller (4x for float8_e4m3)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import nn

from modelscale.core.apply import ApplyContext, ChangeRecord
from modelscale.core.config import TechniqueConfig, param
from modelscale.core.registry import register
from modelscale.techniques.quantize.common import (
    QuantizedLayer,
    layer_row,
    parent_reads_weight,
    replace_module,
    restore_layers,
    select_layers,
    size_summary,
)

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float8_e4m3": torch.float8_e4m3fn}
FP8_MAX = 448.0  # largest finite float8_e4m3fn


@dataclass(kw_only=True)
class CastConfig(TechniqueConfig):
    """Store the targeted layers' weights as float16, bfloat16 or float8 e4m3 (with a scale)."""

    type: ClassVar[str] = "cast"
    version: ClassVar[int] = 1

    dtype: Literal["bfloat16", "float16", "float8_e4m3"] = param("bfloat16", "storage dtype of the weights")
    fp8_scale: Literal["channel", "tensor"] = param(
        "channel", "float8 only: one scale per output channel or one per tensor"
    )


class CastLayer(QuantizedLayer):
    """Linear/Conv2d whose `qweight` is float16/bfloat16, or float8 e4m3 with a float32 `scale`."""

    def __init__(self, module: nn.Module, *, dtype: str, fp8_scale: str = "channel") -> None:
        super().__init__(module)
        self.dtype_name = dtype
        self.format = dtype
        w = module.weight.detach().to(torch.float32)
        if dtype == "float8_e4m3":
            rows = w.reshape(self.out_features, -1)
            amax = rows.abs().amax(1) if fp8_scale == "channel" else rows.abs().amax().reshape(1)
            scale = (amax / FP8_MAX).clamp(min=torch.finfo(torch.float32).tiny)
            self.register_buffer("qweight", (rows / scale[:, None]).to(torch.float8_e4m3fn).view(w.shape))
            self.register_buffer("scale", scale)
            self.format = f"float8_e4m3_{fp8_scale}"
        else:
            self.register_buffer("qweight", w.to(DTYPES[dtype]))
            self.register_buffer("scale", None)

    def dequantize(self) -> torch.Tensor:
        w = self.qweight.to(torch.float32)
        if self.scale is None:
            return w
        return (w.reshape(self.out_features, -1) * self.scale[:, None]).view(w.shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.scale is None:  # float16 / bfloat16: compute in the storage dtype, return x's dtype
            return self.float_forward(x.to(self.qweight.dtype), self.qweight).to(x.dtype)
        return self.float_forward(x, self.dequantize().to(x.dtype))


def _restore(model: nn.Module, config: CastConfig, record: ChangeRecord) -> None:
    restore_layers(
        model,
        record,
        lambda module, row: CastLayer(
            module,
            dtype=config.for_layer(row["name"], "dtype"),
            fp8_scale=config.for_layer(row["name"], "fp8_scale"),
        ),
    )


@register(CastConfig, restore=_restore, trainable=False)
def cast(model: nn.Module, config: CastConfig, ctx: ApplyContext) -> ChangeRecord:
    """Store weights in float16 / bfloat16 / float8 e4m3 (per-tensor or per-channel scale)."""
    chosen, notes = select_layers(model, config.target)
    rows = []
    with torch.no_grad():
        for name, module in chosen:
            dtype = config.for_layer(name, "dtype")
            layer = CastLayer(module, dtype=dtype, fp8_scale=config.for_layer(name, "fp8_scale"))
            replace_module(model, name, layer)
            if parent_reads_weight(model, name):
                notes.append(f"{name}: its MultiheadAttention reads .weight directly (computes in float32)")
            rows.append(layer_row(name, layer, dtype=dtype))
    if any(r["dtype"] == "float8_e4m3" for r in rows):
        notes.insert(
            0,
            "float8 e4m3 is storage only here: weights are dequantized on every call; real fp8 GEMMs "
            "(torch._scaled_mm) need a GPU with fp8 support (compute capability >= 8.9)",
        )
    if any(r["dtype"] != "float8_e4m3" for r in rows):
        notes.insert(0, "float16/bfloat16 layers compute in that dtype; inputs are cast in, outputs back")
    return ChangeRecord(
        technique=config.type,
        config=config.to_dict(),
        layers=rows,
        summary=size_summary(rows),
        notes=notes,
        state={},
    )
