"""Fused int8 Linear kernels on CPU: oneDNN's u8 × s8 GEMM with the dequantize and bias in its epilogue.

The int8 quantizers (dynamic_int8.py, static_int8.py) run their Linear layers here when this torch and
CPU have it. One call is three passes over the activations at most, and none over the output:

    s, z   = per-tensor scale and zero point (calibrated: static; from min/max of x: dynamic, one read)
    x_u8   = clamp(round(x / s) + z, 0, 255)                           (one fused pass, 1 byte written)
    y[m,n] = s · s_w[n] · Σ_k (x_u8[m,k] − z) · W_q[n,k] + b[n]        (oneDNN: VNNI int8 GEMM; the
                                                                       scales and bias in its epilogue)

The kernel is `torch.ops.onednn.qlinear_pointwise` (the ATen op PyTorch's Inductor emits for PT2E int8
Linear; no torch.ao module is involved) with the weight packed once by `onednn.qlinear_prepack`.
Activation codes come from `torch.quantize_per_tensor` (one vectorized pass) where this torch still has
it, else the same formula in elementwise ops. `onednn_linear_problem()` probes the kernel against an
exact integer reference (it can saturate in int16 on CPUs without VNNI); callers fall back to
`torch._int_mm` or to float32 math and name the path in their record.

Example::

    from modelscale.techniques.quantize.int8_kernels import PackedInt8Linear, onednn_linear_problem
    assert onednn_linear_problem() is None
    packed = PackedInt8Linear(qweight, w_scale)          # int8 (out × in), float32 (out,)
    y = packed(quantize_u8(x, 0.02, 128), 0.02, 128, bias)
"""

from __future__ import annotations

import warnings
from typing import Any

import torch


def quantize_u8(x: torch.Tensor, scale: float, zero_point: int) -> torch.Tensor:
    """clamp(round(x / scale) + zero_point, 0, 255) as uint8, in one pass where torch has a fused op."""
    if hasattr(torch, "quantize_per_tensor"):
        with (
            warnings.catch_warnings()
        ):  # torch >= 2.14 flags quantized tensors as deprecated; we keep only bytes
            warnings.simplefilter("ignore", UserWarning)
            return torch.quantize_per_tensor(x, scale, zero_point, torch.quint8).int_repr()
    return torch.round(x * (1.0 / scale)).add_(zero_point).clamp_(0, 255).to(torch.uint8)


def dynamic_qparams(x: torch.Tensor) -> tuple[float, int]:
    """Per-tensor asymmetric uint8 scale and zero point of x's range (always holding 0), one read of x."""
    if x.numel() == 0:
        return 1.0, 0
    lo, hi = torch.aminmax(x.detach())
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    scale = (hi - lo) / 255.0
    if not scale > 0.0:  # all zeros (or NaN, which the caller's output will show)
        return 1.0, 0
    return scale, min(255, max(0, round(-lo / scale)))


class PackedInt8Linear:
    """An int8 weight packed for oneDNN once, plus its per-channel scales; call it on uint8 codes.

    Not an nn.Module and never saved: the owning layer keeps the int8 codes as buffers and rebuilds
    this from them (after a state-dict load, a deepcopy or a pickle).
    """

    def __init__(self, qweight: torch.Tensor, w_scale: torch.Tensor) -> None:
        out_features = qweight.shape[0]
        self.out_features = out_features
        self.w_scale = w_scale.detach().to(torch.float32).expand(out_features).contiguous()
        self.w_zero = torch.zeros(out_features, dtype=torch.int64)
        self.packed = torch.ops.onednn.qlinear_prepack(qweight.contiguous(), None)

    def __call__(self, x_u8: torch.Tensor, scale: float, zero_point: int, bias: torch.Tensor | None) -> Any:
        """float32 y (rows × out) = scale · w_scale · (x_u8 − zero_point) @ W_qᵀ + bias."""
        return torch.ops.onednn.qlinear_pointwise(
            x_u8, scale, zero_point, self.packed, self.w_scale, self.w_zero, bias,
            1.0, 0, torch.float32, "none", [], "",
        )  # fmt: skip


def onednn_linear_problem(device: torch.device | str = "cpu") -> str | None:
    """Why the fused oneDNN int8 Linear cannot run here (None: it runs and matches an exact reference)."""
    device = torch.device(device)
    if device.type != "cpu":
        return f"oneDNN int8 Linear runs on CPU only, not {device.type}"
    ops = torch.ops.onednn
    if not (hasattr(ops, "qlinear_prepack") and hasattr(ops, "qlinear_pointwise")):
        return f"torch {torch.__version__} has no torch.ops.onednn int8 Linear"
    if not torch.backends.mkldnn.is_available():
        return "this torch was built without oneDNN"
    g = torch.Generator().manual_seed(0)
    w = torch.randint(-127, 128, (24, 96), dtype=torch.int8, generator=g)
    x = torch.randint(0, 256, (5, 96), dtype=torch.uint8, generator=g)
    w_scale = torch.rand(24, generator=g) * 0.01 + 1e-3
    bias = torch.randn(24, generator=g)
    scale, zero = 0.03, 131
    try:
        got = PackedInt8Linear(w, w_scale)(x, scale, zero, bias)
    except (RuntimeError, NotImplementedError) as exc:
        return f"oneDNN int8 Linear failed: {str(exc).strip().splitlines()[0][:120]}"
    acc = (x.double() - zero) @ w.double().t()
    want = acc * scale * w_scale.double() + bias.double()
    if got.dtype != torch.float32 or not torch.allclose(got.double(), want, rtol=1e-4, atol=1e-4):
        return "oneDNN int8 Linear disagrees with the exact reference (e.g. int16 saturation without VNNI)"
    return None
