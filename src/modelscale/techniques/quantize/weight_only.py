"""Weight-only quantization: int8 or int4 weights with group-wise scales; activations stay float.

Frantar et al., "GPTQ" (2023) and Lin et al., "AWQ" (2024) use this storage format (here with plain
round-to-nearest, no calibration). Each output row of W (a Conv2d's flattened in·kh·kw) is split into
groups of g values; each group has its own scale s (and integer zero point z when asymmetric):

    symmetric:   W_q = clamp(round(W / s), -Q, Q),        s = max|W| / Q,   Q = 2^(bits-1) - 1
    asymmetric:  W_q = clamp(round(W / s) + z, 0, 2^bits - 1),  s = (max - min) / (2^bits - 1)
    W ≈ (W_q - z) · s

int4 codes are packed two per byte into a uint8 buffer. Stored bytes per weight: bits/8 plus, per group,
one scale (scale_dtype) and one uint8 zero point if asymmetric — int4 g32 asymmetric with fp32 scales
is 21 bytes per 32 weights (6.1x smaller than fp32).

The forward dequantizes the weight and runs the float layer (kernel="dequant"), which saves memory,
not time. kernel="torch" uses ATen's weight-only CPU kernels (`_weight_int8pack_mm` for int8 with one
group per row; `_weight_int4pack_mm_for_cpu` for int4 with g in 32/64/128/256) where a layer qualifies
and the kernel matches the reference dequantization at apply time; on the reference CPU they measured
slower than float32 (benchmarks/quantize.py).

Example::

    from modelscale import apply
    from modelscale.techniques.quantize.weight_only import WeightOnlyConfig
    result = apply(model, WeightOnlyConfig(bits=4, group_size=32, symmetric=False))
    print(result.record.summary["ratio"])          # float32 bytes / stored bytes of the quantized layers
    logits = result.model(x)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from modelscale.core.apply import ApplyContext, ChangeRecord
from modelscale.core.config import TechniqueConfig, check_choice, param
from modelscale.core.errors import ModelscaleError
from modelscale.core.registry import register
from modelscale.techniques.quantize.common import (
    SCALE_DTYPES,
    QuantizedLayer,
    dequantize_groups,
    group_layout,
    pack_int4,
    parent_reads_weight,
    quantize_groups,
    replace_module,
    restore_layers,
    select_layers,
    size_summary,
    unpack_int4,
)
from modelscale.techniques.quantize.common import layer_row as _layer_row

INT4_KERNEL_GROUPS = (32, 64, 128, 256)


@dataclass(kw_only=True)
class WeightOnlyConfig(TechniqueConfig):
    """int8/int4 weights with group-wise scales (and zero points), dequantized in the forward."""

    type: ClassVar[str] = "weight_only"
    version: ClassVar[int] = 1

    bits: int = param(8, "bits per weight: 8 or 4 (int4 is packed two per byte)")
    group_size: int = param(128, "weights sharing one scale along each row; 0 = one group per output channel")
    symmetric: bool = param(True, "symmetric codes (no zero point) or asymmetric with a uint8 zero point")
    scale_dtype: Literal["float32", "float16", "bfloat16"] = param(
        "float32", "dtype the scales are stored in"
    )
    kernel: Literal["dequant", "torch"] = param(
        "dequant", "dequant: dequantize then float op; torch: ATen weight-only CPU kernels where a layer fits"
    )

    def validate(self) -> None:
        check_choice("bits", self.bits, (4, 8))
        if isinstance(self.group_size, bool) or self.group_size < 0 or self.group_size % 2:
            raise ModelscaleError(
                f"group_size must be 0 (per output channel) or an even number like 32, 64, 128; got {self.group_size}"
            )


class WeightOnlyLayer(QuantizedLayer):
    """Linear/Conv2d with int8 or packed int4 `qweight`, `scale` (out × groups) and maybe `zero_point`."""

    def __init__(
        self,
        module: nn.Module,
        *,
        bits: int,
        group_size: int,
        symmetric: bool,
        scale_dtype: str = "float32",
        kernel: str = "dequant",
    ) -> None:
        super().__init__(module)
        w2d = module.weight.detach().reshape(self.out_features, -1)
        q, scale, zero = quantize_groups(
            w2d, bits=bits, group_size=group_size, symmetric=symmetric, scale_dtype=SCALE_DTYPES[scale_dtype]
        )
        self.bits, self.symmetric = bits, symmetric
        self.group_size = group_size  # as configured (0 = per output channel)
        self.group = group_layout(self.in_features, group_size)[0]
        if bits == 8:
            stored = q.to(torch.int8) if symmetric else q.to(torch.uint8)
        else:
            nibbles = q + 8 if symmetric else q
            if nibbles.shape[1] % 2:  # odd row length: one spare nibble per row
                nibbles = F.pad(nibbles, (0, 1))
            stored = pack_int4(nibbles)
        self.register_buffer("qweight", stored)
        self.register_buffer("scale", scale)
        self.register_buffer("zero_point", zero)  # None (not saved) when symmetric
        self.format = f"int{bits}_{'sym' if symmetric else 'asym'}_g{self.group}"
        self.kernel = "dequant"
        self._int4_packed: tuple | None = None  # (key, runtime copy in ATen's layout), never saved
        if kernel == "torch":
            self.kernel = "torch" if self.torch_kernel_problem() is None else "dequant"

    # --- reference path ---------------------------------------------------------------------------
    def codes(self) -> torch.Tensor:
        """The integer codes (out × in) as int16: signed if symmetric, else in [0, 2^bits - 1]."""
        if self.bits == 8:
            return self.qweight.to(torch.int16)
        q = unpack_int4(self.qweight)[:, : self.in_features].to(torch.int16)
        return q - 8 if self.symmetric else q

    def dequantize(self) -> torch.Tensor:
        if self.bits == 8:
            q, zero = self.qweight, self.zero_point
        else:  # nibbles; symmetric ones carry an offset of 8
            q = unpack_int4(self.qweight)[:, : self.in_features]
            zero = 8 if self.symmetric else self.zero_point
        w = dequantize_groups(q, self.scale, zero, group_size=self.group)
        return w.view(self.geometry["weight_shape"])

    # --- ATen weight-only kernels -----------------------------------------------------------------
    def torch_kernel_problem(self) -> str | None:
        """Why the ATen kernel cannot run this layer (None if it can and matches the reference)."""
        if self.geometry["kind"] != "linear":
            return "only Linear layers"
        if self.in_features % self.group:
            return "in_features is not a multiple of the group size"
        if self.bits == 8 and not (self.symmetric and self.group == self.in_features):
            return "int8 kernel needs symmetric codes with one group per output channel (group_size=0)"
        if self.bits == 8 and not hasattr(torch.ops.aten, "_weight_int8pack_mm"):
            return "this torch has no _weight_int8pack_mm"
        if self.bits == 4:
            if self.group not in INT4_KERNEL_GROUPS:
                return f"int4 kernel needs group_size in {INT4_KERNEL_GROUPS}"
            if self.out_features % 16:
                return "int4 kernel needs out_features divisible by 16"
            if not hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu"):
                return "this torch has no _weight_int4pack_mm_for_cpu"
        x = torch.randn(3, self.in_features, generator=torch.Generator().manual_seed(0))
        try:
            got = self._torch_matmul(x)
        except (RuntimeError, NotImplementedError) as exc:
            return f"ATen kernel failed: {str(exc).splitlines()[0][:120]}"
        finally:
            self._int4_packed = None
        want = x @ self.dequantize().view(self.out_features, -1).t()
        if not torch.allclose(got, want, rtol=1e-3, atol=1e-4 * float(want.abs().max()) + 1e-6):
            return "ATen kernel disagrees with the reference dequantization"
        return None

    def _torch_matmul(self, x2d: torch.Tensor) -> torch.Tensor:
        if self.bits == 8:
            return torch.ops.aten._weight_int8pack_mm(x2d, self.qweight, self.scale.view(-1).to(x2d.dtype))
        # repacked whenever the codes change (a state dict loaded in place bumps the version)
        key = (self.qweight.data_ptr(), self.qweight._version, x2d.device)
        if self._int4_packed is None or self._int4_packed[0] != key:
            codes = (self.codes() + (8 if self.symmetric else 0)).to(torch.int32)
            self._int4_packed = (key, torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, 1))
        s = self.scale.to(torch.float32)
        z = 8.0 if self.zero_point is None else self.zero_point.to(torch.float32)
        # ATen computes (q - 8) · s + m per group: with integer zero point z, m = (8 - z) · s.
        scales_and_zeros = torch.stack((s, (8.0 - z) * s), dim=-1).transpose(0, 1).contiguous()
        return torch.ops.aten._weight_int4pack_mm_for_cpu(
            x2d, self._int4_packed[1], self.group, scales_and_zeros.to(x2d.dtype)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernel == "torch" and x.device.type == "cpu" and x.dtype in (torch.float32, torch.bfloat16):
            lead = x.shape[:-1]
            y = self._torch_matmul(x.reshape(-1, self.in_features).contiguous())
            if self.bias is not None:
                y = y + self.bias.to(y.dtype)
            return y.reshape(*lead, self.out_features)
        return self.float_forward(x, self.dequantize().to(x.dtype))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, kernel={self.kernel}"


def _layer(module: nn.Module, config: WeightOnlyConfig, name: str) -> WeightOnlyLayer:
    return WeightOnlyLayer(
        module,
        bits=config.for_layer(name, "bits"),
        group_size=config.for_layer(name, "group_size"),
        symmetric=config.for_layer(name, "symmetric"),
        scale_dtype=config.for_layer(name, "scale_dtype"),
        kernel=config.for_layer(name, "kernel"),
    )


def _restore(model: nn.Module, config: WeightOnlyConfig, record: ChangeRecord) -> None:
    restore_layers(model, record, lambda module, row: _layer(module, config, row["name"]))


@register(WeightOnlyConfig, restore=_restore, strength="bits", trainable=False)
def weight_only(model: nn.Module, config: WeightOnlyConfig, ctx: ApplyContext) -> ChangeRecord:
    """Weight-only int8/int4 with group-wise scales; the forward dequantizes (or uses ATen kernels)."""
    chosen, notes = select_layers(model, config.target)
    rows = []
    with torch.no_grad():
        for name, module in chosen:
            layer = _layer(module, config, name)
            replace_module(model, name, layer)
            if config.for_layer(name, "kernel") == "torch" and layer.kernel != "torch":
                notes.append(f"{name}: ATen kernel not used ({layer.torch_kernel_problem()}); dequantizes")
            if parent_reads_weight(model, name):
                notes.append(f"{name}: its MultiheadAttention reads .weight directly (dequantized weight)")
            rows.append(_layer_row(name, layer, bits=layer.bits, group=layer.group, kernel=layer.kernel))
    kernels = sorted({r["kernel"] for r in rows})
    if "dequant" in kernels:
        notes.insert(0, "storage only: weights are dequantized to float on every call (smaller, not faster)")
    if "torch" in kernels:
        notes.insert(0, "ATen weight-only CPU kernels used where layers fit (checked against the reference)")
    return ChangeRecord(
        technique=config.type,
        config=config.to_dict(),
        layers=rows,
        summary={**size_summary(rows), "kernel": "/".join(kernels)},
        notes=notes,
        state={},
    )
