"""The configuration of weight-only quantization (`weight_only.py`): storage format, kernel choice, precision."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from modelscale.core.config import TechniqueConfig, check_choice, check_range, param
from modelscale.core.errors import ModelscaleError

KERNELS = ("auto", "torch", "dequant")


@dataclass(kw_only=True)
class WeightOnlyConfig(TechniqueConfig):
    """int8/int4 weights with group-wise scales (and zero points); each layer runs its fastest measured path."""

    type: ClassVar[str] = "weight_only"
    version: ClassVar[int] = 2

    bits: int = param(8, "bits per weight: 8 or 4 (int4 is packed two per byte)")
    group_size: int = param(128, "weights sharing one scale along each row; 0 = one group per output channel")
    symmetric: bool = param(True, "symmetric codes (no zero point) or asymmetric with a uint8 zero point")
    scale_dtype: Literal["float32", "float16", "bfloat16"] = param(
        "float32", "dtype the scales are stored in"
    )
    kernel: Literal["auto", "torch", "dequant"] = param(
        "auto",
        "auto: fastest measured path per layer and batch; torch: ATen integer kernels only; dequant: dequantize each call",
    )
    prefer: Literal["speed", "size"] = param(
        "speed",
        "speed: never slower than the float layer (may keep a float copy); size: integer weights only",
    )
    batches: tuple[int, ...] = param((1, 8, 32), "rows (batch x tokens) each layer's paths are timed at")
    tune_ms: float = param(150.0, "timing budget per layer shape and batch, in milliseconds")
    activation_bits: int = param(
        16,
        "our VNNI kernel's activations: 16 (two exact bytes) or 8 (one byte per 64-256 features: "
        "fewer instructions; ~0.7% relative output error, about 4x bf16 activations)",
    )

    def validate(self) -> None:
        check_choice("bits", self.bits, (4, 8))
        if isinstance(self.group_size, bool) or self.group_size < 0 or self.group_size % 2:
            raise ModelscaleError(
                f"group_size must be 0 (per output channel) or an even number like 32, 64, 128; got {self.group_size}"
            )
        if not self.batches or any(
            isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in self.batches
        ):
            raise ModelscaleError(
                f"batches must be positive row counts like (1, 8, 32); got {self.batches!r}"
            )
        check_range("tune_ms", self.tune_ms, 1.0, 60_000.0)
        check_choice("activation_bits", self.activation_bits, (16, 8))

    @classmethod
    def migrate(cls, data: dict[str, Any], from_version: int) -> dict[str, Any]:
        # version 1 had kernel dequant (its default) or torch and no choice by measurement: both still mean that
        return data
