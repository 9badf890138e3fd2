"""Dynamic int8 quantization of Linear layers: int8 weights per output channel, int8 activations per row.

Jacob et al., "Quantization and Training of Neural Networks for Efficient Integer-Arithmetic-Only
Inference" (2018); per-token dynamic activation scales as in Dettmers et al., "LLM.int8()" (2022).
Weights are quantized once, symmetric per output channel n: W_q = round(W / s_w), s_w[n] = max|W[n]|/127.
At run time each input row m (a token, or a sample) gets its own scale s_x[m] = max|x[m]| / 127, and

    y[m, n] = s_x[m] · s_w[n] · Σ_k x_q[m, k] · W_q[n, k]  (+ bias[n])

The integer sum runs in `torch._int_mm` (int8 × int8 → int32; oneDNN on x86 CPUs with VNNI, cuBLAS on
GPUs) when this torch has it; otherwise ("simulated") the same codes are multiplied in float32, which
gives the same numbers (exact integer sums below 2^24) but no speed. The kernel used is recorded in the
layer rows and notes. On CPU the per-call activation quantization costs a few elementwise ops, so tiny
layers get slower and large ones faster: see benchmarks/quantize.py for the measured ratios.

Example::

    from modelscale import apply
    from modelscale.techniques.quantize.dynamic_int8 import DynamicInt8Config
    result = apply(model, DynamicInt8Config(target={"exclude": ["classifier"]}))
    print(result.record.summary["ratio"], result.record.notes[0])   # ~3.7x smaller Linear layers
    logits = result.model(x)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from modelscale.core.apply import ApplyContext, ChangeRecord
from modelscale.core.config import TechniqueConfig, param
from modelscale.core.errors import ModelscaleError
from modelscale.core.registry import register
from modelscale.core.select import Target
from modelscale.techniques.quantize.common import (
    QuantizedLayer,
    int_mm_available,
    layer_row,
    parent_reads_weight,
    quantize_groups,
    quantize_rows_int8,
    replace_module,
    restore_layers,
    select_layers,
    size_summary,
)


@dataclass(kw_only=True)
class DynamicInt8Config(TechniqueConfig):
    """int8 weights (per output channel) and int8 activations quantized per row at run time."""

    type: ClassVar[str] = "dynamic_int8"
    version: ClassVar[int] = 1

    target: Target = param(
        factory=lambda: Target(types=("Linear",)), help="which layers the technique changes (Linear only)"
    )
    kernel: Literal["auto", "int_mm", "simulated"] = param(
        "auto",
        "auto: torch._int_mm where it runs, else simulated; int_mm: fail if it does not; "
        "simulated: int8 codes multiplied in float32",
    )


def _int_mm_fits(x: torch.Tensor, w: torch.Tensor) -> bool:
    """CPU takes any shape; CUDA's cuBLAS int8 GEMM wants more than 16 rows and multiples of 8."""
    if x.device.type == "cpu":
        return True
    if x.device.type == "cuda":
        return x.shape[0] > 16 and x.shape[1] % 8 == 0 and w.shape[0] % 8 == 0
    return False


class DynamicInt8Linear(QuantizedLayer):
    """Linear with int8 weight codes (`qweight`, out × in) and float32 per-channel `scale` (out,)."""

    format = "dynamic_int8"

    def __init__(self, module: nn.Linear, *, kernel: str = "simulated") -> None:
        super().__init__(module)
        q, scale, _ = quantize_groups(module.weight, bits=8, group_size=0, symmetric=True)
        self.register_buffer("qweight", q.to(torch.int8))
        self.register_buffer("scale", scale.view(-1))
        self.kernel = kernel

    def dequantize(self) -> torch.Tensor:
        return self.qweight.to(torch.float32) * self.scale[:, None]

    def int_matmul(self, xq: torch.Tensor) -> torch.Tensor:
        """Σ_k xq[m, k] · qweight[n, k]: int32 from `torch._int_mm`, or exact float32 sums (simulated)."""
        if self.kernel == "int_mm" and _int_mm_fits(xq, self.qweight):
            # (N, K).t() is the layout oneDNN runs fastest here (measured against a contiguous (K, N) copy).
            return torch._int_mm(xq, self.qweight.t())
        return xq.to(torch.float32) @ self.qweight.to(torch.float32).t()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        rows = x.reshape(-1, x.shape[-1]).to(torch.float32)
        xq, x_scale = quantize_rows_int8(rows)
        # one float32 copy of the accumulator, then in place (measured several times faster on CPU
        # than a mixed int32 · float32 multiply or an out-of-place addcmul)
        y = self.int_matmul(xq).to(torch.float32).mul_(x_scale).mul_(self.scale)
        if self.bias is not None:
            y.add_(self.bias.to(torch.float32))
        return y.reshape(*lead, self.out_features).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, kernel={self.kernel}"


def _resolve_kernel(requested: str, device: torch.device, *, strict: bool) -> str:
    if requested == "simulated":
        return "simulated"
    if int_mm_available(device):
        return "int_mm"
    if requested == "int_mm" and strict:
        raise ModelscaleError(
            f"torch._int_mm does not run on {device.type} with torch {torch.__version__}; "
            "use kernel='auto' or kernel='simulated'"
        )
    return "simulated"


def _restore(model: nn.Module, config: DynamicInt8Config, record: ChangeRecord) -> None:
    def build(module: nn.Module, row: dict[str, Any]) -> DynamicInt8Linear:
        kernel = _resolve_kernel(config.kernel, module.weight.device, strict=False)
        return DynamicInt8Linear(module, kernel=kernel)

    restore_layers(model, record, build)


@register(DynamicInt8Config, restore=_restore, applies_to="linear", trainable=False)
def dynamic_int8(model: nn.Module, config: DynamicInt8Config, ctx: ApplyContext) -> ChangeRecord:
    """Dynamic int8: int8 per-channel weights, int8 per-row activations, int32 accumulation."""
    chosen, notes = select_layers(model, config.target, kinds=(nn.Linear,))
    rows = []
    kernels = set()
    with torch.no_grad():
        for name, module in chosen:
            kernel = _resolve_kernel(config.kernel, module.weight.device, strict=True)
            layer = DynamicInt8Linear(module, kernel=kernel)
            replace_module(model, name, layer)
            reads = parent_reads_weight(model, name)
            if reads:
                notes.append(f"{name}: its MultiheadAttention reads .weight directly, so it runs dequantized")
            kernels.add(kernel)
            rows.append(layer_row(name, layer, kernel="dequantized" if reads else kernel))
    if "int_mm" in kernels:
        notes.insert(
            0,
            "real int8 kernel: torch._int_mm (int8 x int8 -> int32) with per-row activation quantization "
            "each call; faster than float32 only for large layers (see benchmarks/quantize.py)",
        )
    if "simulated" in kernels:
        notes.insert(0, "simulated: int8 codes multiplied in float32 (no int8 kernel used); not faster")
    return ChangeRecord(
        technique=config.type,
        config=config.to_dict(),
        layers=rows,
        summary={**size_summary(rows), "kernel": "/".join(sorted(kernels))},
        notes=notes,
        state={},
    )
