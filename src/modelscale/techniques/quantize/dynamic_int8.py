"""Dynamic int8 quantization of Linear layers: int8 weights per output channel, int8 activations at run time.

Jacob et al., "Quantization and Training of Neural Networks for Efficient Integer-Arithmetic-Only
Inference" (2018); per-token dynamic activation scales as in Dettmers et al., "LLM.int8()" (2022).
Weights are quantized once, symmetric per output channel n: W_q = round(W / s_w), s_w[n] = max|W[n]|/127.
At run time the input gets its scale from its own range, either

- per tensor (`activations="tensor"`, the default; as PyTorch's quantize_dynamic and ONNX Runtime do):
  s = (max(x, 0) − min(x, 0)) / 255, z = round(−min(x, 0) / s), x_u8 = clamp(round(x / s) + z, 0, 255),
  y[m, n] = s · s_w[n] · Σ_k (x_u8[m, k] − z) · W_q[n, k] + b[n]; or
- per row (`activations="row"`, robust to outlier tokens): s_x[m] = max|x[m]| / 127,
  y[m, n] = s_x[m] · s_w[n] · Σ_k x_q[m, k] · W_q[n, k] + b[n].

With `smooth=α > 0` (SmoothQuant, Xiao et al. 2023; smoothing.py) the outlier *channels* move into
the weights first: s_j = max|X_j|^α / max|W_{:,j}|^(1−α) from calibration inputs, the layer quantizes
W · diag(s) and multiplies x by 1/s before quantizing it (exact in float). On the real MiniLM encoder
per-row activations with α = 0.5 keep the sentence embeddings at cosine ≥ 0.999 where per tensor gives
0.993 (tests/techniques/quantize/test_int8_kernels.py).

Kernels (recorded per layer and in the notes): per tensor runs oneDNN's fused u8 × s8 GEMM with the
dequantize and bias in its epilogue (int8_kernels.py: one read of x for its range, one fused quantize
pass, nothing over the output); per row runs `torch._int_mm` (int8 × int8 → int32) and rescales the
accumulator. Where neither runs ("simulated") the same codes are multiplied in float32: the same
numbers, no speed. benchmarks/int8_encoder.py measures them against PyTorch and ONNX Runtime.

Example::

    from modelscale import apply
    from modelscale.techniques.quantize.dynamic_int8 import DynamicInt8Config
    result = apply(model, DynamicInt8Config(target={"exclude": ["classifier"]}))
    print(result.record.summary["kernel"], result.record.notes[0])   # onednn where it runs
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
from modelscale.techniques.quantize.int8_kernels import (
    PackedInt8Linear,
    dynamic_qparams,
    onednn_linear_problem,
    quantize_u8,
)
from modelscale.techniques.quantize.smoothing import input_channel_absmax, smoothing_scales


@dataclass(kw_only=True)
class DynamicInt8Config(TechniqueConfig):
    """int8 weights (per output channel) and int8 activations quantized at run time (per tensor or row)."""

    type: ClassVar[str] = "dynamic_int8"
    version: ClassVar[int] = 2

    target: Target = param(
        factory=lambda: Target(types=("Linear",)), help="which layers the technique changes (Linear only)"
    )
    activations: Literal["tensor", "row"] = param(
        "tensor",
        "tensor: one uint8 scale and zero point per call (fused oneDNN kernel); "
        "row: one int8 scale per row/token (robust to outlier tokens, torch._int_mm)",
    )
    smooth: float = param(
        0.0,
        "SmoothQuant migration strength alpha in [0, 1]: moves activation outlier channels into the "
        "weights (needs calibration); 0: off",
    )
    kernel: Literal["auto", "onednn", "int_mm", "simulated"] = param(
        "auto",
        "auto: the fastest kernel that runs here (onednn for tensor, int_mm for row), else simulated; "
        "onednn / int_mm: fail if it does not run; simulated: int8 codes multiplied in float32",
    )

    def validate(self) -> None:
        if not 0.0 <= self.smooth <= 1.0:
            raise ModelscaleError(
                f"smooth must be in [0, 1] (0: off, 0.5: SmoothQuant's default); got {self.smooth}"
            )
        if self.kernel == "onednn" and self.activations != "tensor":
            raise ModelscaleError(
                "kernel='onednn' takes one activation scale per call; use activations='tensor' or kernel='int_mm'"
            )

    @classmethod
    def migrate(cls, data: dict[str, Any], from_version: int) -> dict[str, Any]:
        # version 1 quantized activations per row only: keep saved models computing what they did
        return {"activations": "row", **data} if from_version < 2 else data


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

    def __init__(
        self,
        module: nn.Linear,
        *,
        kernel: str = "simulated",
        activations: str = "row",
        smooth: torch.Tensor | None = None,
    ) -> None:
        super().__init__(module)
        weight = module.weight if smooth is None else module.weight * smooth.to(module.weight)[None, :]
        q, scale, _ = quantize_groups(weight, bits=8, group_size=0, symmetric=True)
        self.register_buffer("qweight", q.to(torch.int8))
        self.register_buffer("scale", scale.view(-1))
        # SmoothQuant: x is multiplied by 1/s (per input channel) before it is quantized
        self.smooth_inv: torch.Tensor | None
        inv = None if smooth is None else (1.0 / smooth.detach().to(torch.float32)).to(weight.device)
        self.register_buffer("smooth_inv", inv)
        if kernel == "onednn" and activations != "tensor":
            raise ModelscaleError(
                "the onednn kernel quantizes activations per tensor; use activations='tensor'"
            )
        self.kernel, self.activations = kernel, activations
        self._packed: tuple[Any, PackedInt8Linear] | None = (
            None  # oneDNN's packed weight, rebuilt, never saved
        )

    def __getstate__(self) -> dict[str, Any]:
        state = dict(super().__getstate__())
        state["_packed"] = None  # oneDNN's packed weight cannot be copied or pickled; it is rebuilt on use
        return state

    def dequantize(self) -> torch.Tensor:
        w = self.qweight.to(torch.float32) * self.scale[:, None]
        return w if self.smooth_inv is None else w * self.smooth_inv[None, :]

    def int_matmul(self, xq: torch.Tensor) -> torch.Tensor:
        """Σ_k xq[m, k] · qweight[n, k]: int32 from `torch._int_mm`, or exact float32 sums (simulated)."""
        if self.kernel == "int_mm" and _int_mm_fits(xq, self.qweight):
            # (N, K).t() is the layout oneDNN runs fastest here (measured against a contiguous (K, N) copy).
            return torch._int_mm(xq, self.qweight.t())
        return xq.to(torch.float32) @ self.qweight.to(torch.float32).t()

    def packed(self) -> PackedInt8Linear:
        key = (self.qweight.data_ptr(), self.qweight._version, self.scale.data_ptr(), self.scale._version)
        if self._packed is None or self._packed[0] != key:
            self._packed = (key, PackedInt8Linear(self.qweight, self.scale))
        return self._packed[1]

    def _per_tensor(self, rows: torch.Tensor) -> torch.Tensor:
        scale, zero = dynamic_qparams(rows)
        bias = None if self.bias is None else self.bias.to(torch.float32)
        if self.kernel == "onednn" and rows.device.type == "cpu" and rows.shape[0]:
            return self.packed()(quantize_u8(rows.contiguous(), scale, zero), scale, zero, bias)
        codes = torch.round(rows * (1.0 / scale)).add_(zero).clamp_(0, 255).sub_(zero)
        y = (codes @ self.qweight.to(torch.float32).t()).mul_(self.scale * scale)
        return y if bias is None else y.add_(bias)

    def _per_row(self, rows: torch.Tensor) -> torch.Tensor:
        xq, x_scale = quantize_rows_int8(rows)
        # one float32 copy of the accumulator, then in place (measured several times faster on CPU
        # than a mixed int32 · float32 multiply or an out-of-place addcmul)
        y = self.int_matmul(xq).to(torch.float32).mul_(x_scale).mul_(self.scale)
        if self.bias is not None:
            y.add_(self.bias.to(torch.float32))
        return y

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        rows = x.reshape(-1, x.shape[-1]).to(torch.float32)
        if self.smooth_inv is not None:
            rows = rows * self.smooth_inv
        y = self._per_tensor(rows) if self.activations == "tensor" else self._per_row(rows)
        return y.reshape(*lead, self.out_features).to(x.dtype)

    def extra_repr(self) -> str:
        smooth = "" if self.smooth_inv is None else ", smoothed"
        return f"{super().extra_repr()}, activations={self.activations}, kernel={self.kernel}{smooth}"


def resolve_kernel(
    requested: str, activations: str, device: torch.device, *, strict: bool
) -> tuple[str, str]:
    """(kernel, why the faster one did not run, or "") for `requested` on `device`; probes each at most once."""
    if requested == "simulated":
        return "simulated", ""
    why = ""
    if activations == "tensor" and requested in ("auto", "onednn"):
        problem = onednn_linear_problem(device)
        if problem is None:
            return "onednn", ""
        if requested == "onednn" and strict:
            raise ModelscaleError(f"{problem}; use kernel='auto' or kernel='simulated'")
        why = problem
    if requested in ("auto", "int_mm") and int_mm_available(device):
        return "int_mm", why
    if requested == "int_mm" and strict:
        raise ModelscaleError(
            f"torch._int_mm does not run on {device.type} with torch {torch.__version__}; "
            "use kernel='auto' or kernel='simulated'"
        )
    return "simulated", why or f"torch._int_mm does not run on {device.type}"


def _kernels_by_device(config: DynamicInt8Config, modules: list[nn.Module], *, strict: bool) -> dict:
    found: dict[torch.device, tuple[str, str]] = {}
    for module in modules:
        device = module.weight.device
        if device not in found:
            found[device] = resolve_kernel(config.kernel, config.activations, device, strict=strict)
    return found


def _restore(model: nn.Module, config: DynamicInt8Config, record: ChangeRecord) -> None:
    modules = [model.get_submodule(r["name"]) for r in record.layers if _has(model, r["name"])]
    kernels = _kernels_by_device(config, modules, strict=False)

    def build(module: nn.Module, row: dict[str, Any]) -> DynamicInt8Linear:
        kernel = kernels[module.weight.device][0]
        # smoothing factors are buffers: placeholders here, the saved values arrive with the state dict
        smooth = torch.ones(module.in_features) if row.get("smoothed") else None
        return DynamicInt8Linear(module, kernel=kernel, activations=config.activations, smooth=smooth)

    restore_layers(model, record, build)


def _has(model: nn.Module, name: str) -> bool:
    try:
        model.get_submodule(name)
    except AttributeError:
        return False  # restore_layers names the missing layer
    return True


KERNEL_NOTES = {
    "onednn": "real int8 kernel: oneDNN u8 x s8 GEMM (torch.ops.onednn.qlinear_pointwise) with per-tensor "
    "dynamic activation scale and zero point; dequantize and bias fused in its epilogue",
    "int_mm": "real int8 kernel: torch._int_mm (int8 x int8 -> int32) with per-row activation quantization "
    "each call, rescaled to float32",
    "simulated": "simulated: int8 codes multiplied in float32 (no int8 kernel used); not faster",
}


@register(DynamicInt8Config, restore=_restore, applies_to="linear", trainable=False, exports_onnx=False)
def dynamic_int8(model: nn.Module, config: DynamicInt8Config, ctx: ApplyContext) -> ChangeRecord:
    """Dynamic int8: int8 per-channel weights, int8 activations quantized each call, int32 accumulation."""
    chosen, notes = select_layers(model, config.target, kinds=(nn.Linear,))
    kernels_here = _kernels_by_device(config, [m for _, m in chosen], strict=True)
    absmax = {}
    if config.smooth > 0:
        if not ctx.calibration:
            raise ModelscaleError(
                f"dynamic_int8 with smooth={config.smooth} needs calibration data for the activation ranges: "
                "pass calibration=[inputs, ...] to apply (CLI: --data), or set smooth=0"
            )
        absmax = input_channel_absmax(model, chosen, list(ctx.calibration))
        notes.append(
            f"SmoothQuant (alpha={config.smooth}): activation outlier channels moved into the weights, "
            "from the calibration inputs' per-channel max|x|"
        )
    rows = []
    kernels = set()
    with torch.no_grad():
        for name, module in chosen:
            kernel, why = kernels_here[module.weight.device]
            smooth = smoothing_scales(module.weight, absmax[name], config.smooth) if name in absmax else None
            layer = DynamicInt8Linear(module, kernel=kernel, activations=config.activations, smooth=smooth)
            replace_module(model, name, layer)
            reads = parent_reads_weight(model, name)
            if reads:
                notes.append(f"{name}: its MultiheadAttention reads .weight directly, so it runs dequantized")
            kernels.add(kernel)
            extra = {"smoothed": True} if smooth is not None else {}
            rows.append(layer_row(name, layer, kernel="dequantized" if reads else kernel, **extra))
    for kernel, why in sorted(set(kernels_here.values())):
        if why:
            notes.insert(0, f"{kernel} kernel because the faster one does not run: {why}")
    for kernel in sorted(kernels, reverse=True):
        notes.insert(0, KERNEL_NOTES[kernel])
    return ChangeRecord(
        technique=config.type,
        config=config.to_dict(),
        layers=rows,
        summary={
            **size_summary(rows),
            "kernel": "/".join(sorted(kernels)),
            "activations": config.activations,
            "smooth": config.smooth,
        },
        notes=notes,
        state={},
    )
