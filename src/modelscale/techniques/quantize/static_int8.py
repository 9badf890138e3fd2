"""Static int8 quantization: int8 weights, and activations quantized with scales calibrated beforehand.

Jacob et al., "Quantization and Training of Neural Networks for Efficient Integer-Arithmetic-Only
Inference" (2018); Krishnamoorthi, "Quantizing deep convolutional networks for efficient inference"
(2018). Conv2d → BatchNorm2d pairs are folded first (fold_bn.py). Calibration batches run through the
float model while an observer (observers.py) records each target layer's input range, giving a fixed
scale s_x and zero point z_x. Weights are symmetric int8 per output channel n (or per tensor),
s_w[n] = max|W[n]| / 127. At run time

    x_q = clamp(round(x / s_x) + z_x, qmin, qmax)              (uint8 asymmetric or int8 symmetric)
    y[m, n] = s_x · s_w[n] · Σ_k (x_q[m, k] − z_x) · W_q[n, k]  (+ bias[n], float32)

Kernels (recorded per layer): 8-bit Linear on CPU runs oneDNN's fused u8 × s8 GEMM with the scales
and bias in its epilogue (int8_kernels.py; x is quantized in one fused pass, nothing runs over the
output); otherwise Linear runs `torch._int_mm` (int8 × int8 → int32; uint8 codes are
shifted by 128 and the zero point is removed with the weight's row sums; any shape on CPU, on CUDA
features divisible by 8 and calls with more than 16 rows, else the simulated path); Conv2d runs oneDNN's int8
convolution (`torch.ops.onednn.qconv_prepack` + `qconv2d_pointwise`, the ATen ops Inductor uses, no
torch.ao) on CPU. Each is probed against the reference at apply time; where it does not run, the
layer is "simulated": the same integer codes (Linear, same numbers) or fake-quantized activations and
dequantized weights (Conv2d) computed in float32, with no speed gain. Layer outputs stay float32.

Example::

    from modelscale import apply
    from modelscale.techniques.quantize.static_int8 import StaticInt8Config
    result = apply(model, StaticInt8Config(observer="percentile"), calibration=batches)
    print(result.record.summary["ratio"], result.record.notes[:2])   # ~3.9x smaller layers; kernels
    logits = result.model(x)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from modelscale.core.apply import ApplyContext, ChangeRecord
from modelscale.core.config import TechniqueConfig, check_range, param
from modelscale.core.errors import ModelscaleError
from modelscale.core.registry import register
from modelscale.techniques.quantize.common import (
    QuantizedLayer,
    int_mm_available,
    layer_row,
    parent_reads_weight,
    quantize_groups,
    replace_module,
    restore_layers,
    select_layers,
    size_summary,
)
from modelscale.techniques.quantize.dynamic_int8 import _int_mm_fits
from modelscale.techniques.quantize.fold_bn import fold_batchnorm, refold
from modelscale.techniques.quantize.int8_kernels import PackedInt8Linear, onednn_linear_problem, quantize_u8
from modelscale.techniques.quantize.observers import (
    Observer,
    calibrate,
    calibration_batches,
    code_range,
    make_observer,
)

SIMULATED_CONV_NOTE = (
    "simulated int8 for Conv2d: for real int8 conv kernels export with `modelscale export --quantize static` "
    "(ONNX Runtime QDQ)"
)


@dataclass(kw_only=True)
class StaticInt8Config(TechniqueConfig):
    """int8 weights and calibrated (static) activation scales for Linear and Conv2d layers."""

    type: ClassVar[str] = "static_int8"
    version: ClassVar[int] = 1

    observer: Literal["minmax", "moving_average", "percentile"] = param(
        "minmax", "how calibration turns observed inputs into an activation range"
    )
    percentile: float = param(
        99.99, "percentile observer: percentile of |x| (or of x per tail) kept, in (50, 100]"
    )
    averaging_constant: float = param(0.01, "moving_average observer: weight of each new batch, in (0, 1]")
    weights: Literal["channel", "tensor"] = param(
        "channel", "one weight scale per output channel or per tensor"
    )
    activations: Literal["asymmetric", "symmetric"] = param(
        "asymmetric", "asymmetric: uint8 codes with a zero point; symmetric: int8 codes, zero point 0"
    )
    bits: int = param(
        8, "bits of weight and activation codes, 2..8 (stored as int8; < 8 for sensitivity studies)"
    )
    fold_bn: bool = param(True, "fold each Conv2d → BatchNorm2d pair into the conv before quantizing")
    kernel: Literal["auto", "simulated"] = param(
        "auto", "auto: real int8 kernels where they run (probed), else simulated; simulated: float32 math"
    )

    def validate(self) -> None:
        check_range("bits", self.bits, 2, 8)
        if not 50.0 < self.percentile <= 100.0:
            raise ModelscaleError(f"percentile must be in (50, 100], e.g. 99.99; got {self.percentile}")
        if not 0.0 < self.averaging_constant <= 1.0:
            raise ModelscaleError(
                f"averaging_constant must be in (0, 1], e.g. 0.01; got {self.averaging_constant}"
            )


class StaticInt8Layer(QuantizedLayer):
    """Linear/Conv2d with int8 `qweight`, `w_scale` (out or 1), and calibrated `x_scale`, `x_zero_point`."""

    def __init__(
        self,
        module: nn.Module,
        *,
        x_scale: float,
        x_zero_point: int,
        bits: int = 8,
        symmetric: bool = False,
        per_channel: bool = True,
        kernel: str = "simulated",
    ) -> None:
        super().__init__(module)
        device = module.weight.device
        w2d = module.weight.detach().reshape(self.out_features, -1)
        q, scale, _ = quantize_groups(
            w2d if per_channel else w2d.reshape(1, -1), bits=bits, group_size=0, symmetric=True
        )
        self.register_buffer("qweight", q.to(torch.int8).view(self.geometry["weight_shape"]))
        self.register_buffer("w_scale", scale.view(-1))
        self.register_buffer("x_scale", torch.tensor([x_scale], dtype=torch.float32, device=device))
        self.register_buffer("x_zero_point", torch.tensor([x_zero_point], dtype=torch.int32, device=device))
        self.bits, self.symmetric, self.per_channel = bits, symmetric, per_channel
        self.qmin, self.qmax = code_range(bits, symmetric)
        self.format = f"static_int{bits}" + ("" if per_channel else "_tensor")
        self.kernel = kernel
        self._cache: tuple[Any, Any] | None = None  # (key, runtime tensors in a kernel's layout), never saved

    def __getstate__(self) -> dict[str, Any]:
        state = dict(super().__getstate__())
        state["_cache"] = None  # oneDNN's packed weight cannot be copied or pickled; it is rebuilt on use
        return state

    # --- shared pieces ----------------------------------------------------------------------------
    def channel_scales(self) -> torch.Tensor:
        return self.w_scale.expand(self.out_features)

    def dequantize(self) -> torch.Tensor:
        w = self.qweight.to(torch.float32).view(self.out_features, -1) * self.channel_scales()[:, None]
        return w.view(self.geometry["weight_shape"])

    def input_codes(self, x: torch.Tensor) -> torch.Tensor:
        """clamp(round(x / s_x) + z_x, qmin, qmax) as float32 (exact small integers)."""
        inv = 1.0 / float(self.x_scale)
        return (
            torch.round(x.to(torch.float32) * inv).add_(int(self.x_zero_point)).clamp_(self.qmin, self.qmax)
        )

    def _cached(self, build: Callable[[], Any], *extra: Any) -> Any:
        key = (
            self.qweight.data_ptr(),
            self.qweight._version,
            self.w_scale._version,
            self.x_scale._version,
            self.x_zero_point._version,
            *extra,
        )
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, build())
        return self._cache[1]

    # --- Linear -----------------------------------------------------------------------------------
    def _linear(self, codes: torch.Tensor) -> torch.Tensor:
        lead = codes.shape[:-1]
        q = codes.reshape(-1, self.in_features)
        z = int(self.x_zero_point)
        w = self.qweight
        if self.kernel == "int_mm" and q.shape[0] and _int_mm_fits(q, w):
            offset = 0 if self.symmetric else 128  # uint8 codes → int8 codes (q − 128), zero point z − 128
            acc = torch._int_mm((q - offset).to(torch.int8), w.t())
            if z - offset:
                row_sums = self._cached(lambda: w.sum(1, dtype=torch.int32), "rows")
                acc.sub_((z - offset) * row_sums)
            y = acc.to(torch.float32)
        else:  # the same integer sums in float32 (exact below 2^24)
            y = (q - z) @ w.to(torch.float32).t()
        y.mul_(self.x_scale * self.w_scale)
        if self.bias is not None:
            y.add_(self.bias.to(torch.float32))
        return y.reshape(*lead, self.out_features)

    def _linear_onednn(self, x: torch.Tensor) -> torch.Tensor:
        """8-bit Linear in one oneDNN call: x → uint8 codes (one fused pass), GEMM, scales and bias fused."""
        lead = x.shape[:-1]
        rows = x.reshape(-1, self.in_features).to(torch.float32).contiguous()
        offset = 128 if self.symmetric else 0  # oneDNN takes uint8 activations: int8 codes + 128
        scale, zero = float(self.x_scale), int(self.x_zero_point) + offset
        codes = quantize_u8(rows, scale, zero)
        if self.symmetric:
            codes.clamp_(min=1)  # symmetric codes stop at -127 (u8 1), as the reference's clamp does
        packed = self._cached(lambda: PackedInt8Linear(self.qweight, self.channel_scales()), "onednn")
        bias = None if self.bias is None else self.bias.to(torch.float32)
        return packed(codes, scale, zero, bias).reshape(*lead, self.out_features)

    # --- Conv2d -----------------------------------------------------------------------------------
    def _conv_simulated(self, codes: torch.Tensor) -> torch.Tensor:
        x_hat = (codes - int(self.x_zero_point)) * self.x_scale
        return self.float_forward(x_hat, self.dequantize())

    def _conv_onednn(self, codes: torch.Tensor) -> torch.Tensor:
        geo = self.geometry
        offset = 128 if self.symmetric else 0  # oneDNN takes uint8 activations: int8 codes + 128
        zero = int(self.x_zero_point) + offset
        scale = float(self.x_scale)
        args = (list(geo["stride"]), list(geo["padding"]), list(geo["dilation"]), geo["groups"])

        def pack() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            w_scales = self.channel_scales().contiguous().to(torch.float32)
            packed = torch.ops.onednn.qconv_prepack(self.qweight, w_scales, scale, zero, *args, None)
            return packed, w_scales, torch.zeros(self.out_features, dtype=torch.int64)

        packed, w_scales, w_zeros = self._cached(pack, "onednn")
        bias = None if self.bias is None else self.bias.to(torch.float32)
        x_u8 = (codes + offset).to(torch.uint8)
        return torch.ops.onednn.qconv2d_pointwise(
            x_u8, scale, zero, packed, w_scales, w_zeros, bias, *args, 1.0, 0, torch.float32, "none", [], ""
        )

    @torch.no_grad()
    def onednn_conv_problem(self) -> str | None:
        """Why oneDNN's int8 convolution cannot run this layer here (None: it runs and matches)."""
        geo = self.geometry
        if geo["kind"] != "conv2d":
            return "not a Conv2d"
        if self.qweight.device.type != "cpu":
            return "oneDNN int8 convolution runs on CPU only"
        if isinstance(geo["padding"], str):
            return f"padding={geo['padding']!r} (needs explicit padding)"
        ops = torch.ops.onednn
        if not (hasattr(ops, "qconv_prepack") and hasattr(ops, "qconv2d_pointwise")):
            return f"torch {torch.__version__} has no torch.ops.onednn int8 convolution"
        if not torch.backends.mkldnn.is_available():
            return "this torch was built without oneDNN"
        kh, kw = geo["weight_shape"][2:]
        (sh, sw), (dh, dw) = geo["stride"], geo["dilation"]
        shape = (2, geo["weight_shape"][1] * geo["groups"], dh * (kh - 1) + 1 + sh, dw * (kw - 1) + 1 + sw)
        codes = torch.randint(self.qmin, self.qmax + 1, shape, generator=torch.Generator().manual_seed(0))
        codes = codes.to(torch.float32)
        try:
            got = self._conv_onednn(codes)
        except (RuntimeError, NotImplementedError) as exc:
            return f"oneDNN int8 convolution failed: {str(exc).strip().splitlines()[0][:120]}"
        finally:
            self._cache = None
        want = self._conv_simulated(codes)
        if not torch.allclose(got, want, rtol=1e-4, atol=1e-5 * float(want.abs().max()) + 1e-6):
            return "oneDNN int8 convolution disagrees with the reference (e.g. int16 saturation without VNNI)"
        return None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernel == "onednn" and self.geometry["kind"] == "linear" and x.device.type == "cpu":
            return self._linear_onednn(x).to(x.dtype)
        codes = self.input_codes(x)
        if self.geometry["kind"] == "linear":
            y = self._linear(codes)
        elif self.kernel == "onednn" and codes.device.type == "cpu":
            y = self._conv_onednn(codes)
        else:
            y = self._conv_simulated(codes)
        return y.to(x.dtype)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, kernel={self.kernel}, x_scale={float(self.x_scale):.4g}"


def choose_kernel(layer: StaticInt8Layer, requested: str) -> tuple[str, str | None]:
    """(kernel, why not real) for a built layer: int_mm / onednn where they run, else simulated."""
    if requested == "simulated":
        return "simulated", None
    if layer.geometry["kind"] == "linear":
        device = layer.qweight.device
        if layer.bits == 8 and onednn_linear_problem(device) is None:
            return "onednn", None
        if not int_mm_available(device):
            return "simulated", f"torch._int_mm does not run on {device.type}"
        if device.type == "cuda" and (layer.in_features % 8 or layer.out_features % 8):
            return "simulated", "cuBLAS int8 GEMM needs in_features and out_features divisible by 8"
        return "int_mm", None
    problem = layer.onednn_conv_problem()
    return ("onednn", None) if problem is None else ("simulated", problem)


def build_static_layer(
    module: nn.Module,
    x_scale: float,
    x_zero_point: int,
    *,
    bits: int,
    symmetric: bool,
    per_channel: bool,
    kernel: str,
) -> tuple[StaticInt8Layer, str | None]:
    """A StaticInt8Layer for `module` with the given activation qparams, its kernel chosen (and why not real)."""
    layer = StaticInt8Layer(
        module,
        x_scale=x_scale,
        x_zero_point=x_zero_point,
        bits=bits,
        symmetric=symmetric,
        per_channel=per_channel,
    )
    layer.kernel, why = choose_kernel(layer, kernel)
    return layer, why


def kernel_notes(rows: list[dict[str, Any]]) -> list[str]:
    """The headline notes saying which layers run real int8 kernels and which are simulated."""
    used = {(r["kind"], r["kernel"]) for r in rows}
    notes = []
    if ("linear", "onednn") in used:
        notes.append(
            "real int8 kernel for 8-bit Linear on CPU: oneDNN u8 x s8 GEMM (torch.ops.onednn.qlinear_pointwise) "
            "with the calibrated activation scale; dequantize and bias fused in its epilogue"
        )
    if ("linear", "int_mm") in used:
        notes.append(
            "real int8 kernel for Linear: torch._int_mm (int8 x int8 -> int32, zero point removed with "
            "weight row sums), rescaled to float32"
        )
    if ("conv2d", "onednn") in used:
        notes.append(
            "real int8 kernel for Conv2d on CPU: oneDNN (torch.ops.onednn.qconv2d_pointwise, uint8 x int8, "
            "probed against the reference at apply time)"
        )
    if ("linear", "simulated") in used:
        notes.append("simulated int8 for Linear: the same integer codes multiplied in float32 (not faster)")
    if ("conv2d", "simulated") in used:
        notes.append(SIMULATED_CONV_NOTE)
    notes.append("each layer quantizes its input with the calibrated scale; layer outputs stay float32")
    return notes


def skip_reading_parents(model: nn.Module, chosen: list[tuple[str, nn.Module]], notes: list[str]) -> list:
    """Drop MultiheadAttention out_proj layers (their parent reads .weight and never calls them)."""
    kept = []
    for name, module in chosen:
        if parent_reads_weight(model, name):
            notes.append(
                f"{name}: its MultiheadAttention reads .weight directly (never calls it), left float"
            )
        else:
            kept.append((name, module))
    return kept


def _restore(model: nn.Module, config: StaticInt8Config, record: ChangeRecord) -> None:
    refold(model, record.state.get("folded", []))

    def build(module: nn.Module, row: dict[str, Any]) -> StaticInt8Layer:
        layer, _ = build_static_layer(
            module,
            1.0,
            0,  # placeholders: the saved x_scale / x_zero_point are loaded next
            bits=row["bits"],
            symmetric=row["activations"] == "symmetric",
            per_channel=row["weights"] == "channel",
            kernel=config.for_layer(row["name"], "kernel"),
        )
        return layer

    restore_layers(model, record, build)


@register(StaticInt8Config, restore=_restore, strength="bits", needs_calibration=True, trainable=False)
def static_int8(model: nn.Module, config: StaticInt8Config, ctx: ApplyContext) -> ChangeRecord:
    """Static int8: calibrated activation scales, int8 weights; real int8 kernels where they run."""
    batches = calibration_batches(ctx.calibration, config.type)
    chosen, notes = select_layers(model, config.target)
    chosen = skip_reading_parents(model, chosen, notes)
    folded, fold_method = [], "off"
    if config.fold_bn:
        result = fold_batchnorm(model, convs=[n for n, m in chosen if isinstance(m, nn.Conv2d)])
        folded, fold_method = result.pairs, result.method
        notes.extend(result.notes)
        if folded:
            notes.append(
                f"folded {len(folded)} BatchNorm2d into the preceding Conv2d (found by {result.method})"
            )

    def new(name: str) -> Observer:
        return make_observer(
            config.for_layer(name, "observer"),
            averaging_constant=config.for_layer(name, "averaging_constant"),
            percentile=config.for_layer(name, "percentile"),
        )

    observers = calibrate(model, chosen, batches, new)
    rows = []
    with torch.no_grad():
        for name, module in chosen:
            obs = observers[name]
            if not obs.ready:
                notes.append(f"{name}: never ran during calibration, left float")
                continue
            bits = config.for_layer(name, "bits")
            activations, weights = config.for_layer(name, "activations"), config.for_layer(name, "weights")
            x_scale, x_zero = obs.qparams(bits=bits, symmetric=activations == "symmetric")
            layer, why = build_static_layer(
                module,
                x_scale,
                x_zero,
                bits=bits,
                symmetric=activations == "symmetric",
                per_channel=weights == "channel",
                kernel=config.for_layer(name, "kernel"),
            )
            if why:
                notes.append(f"{name}: simulated ({why})")
            replace_module(model, name, layer)
            rows.append(
                layer_row(
                    name,
                    layer,
                    kernel=layer.kernel,
                    bits=bits,
                    activations=activations,
                    weights=weights,
                    observer=obs.kind,
                    x_scale=x_scale,
                    x_zero_point=x_zero,
                )
            )
    if not rows:
        raise ModelscaleError(
            "no targeted layer ran during calibration; check that the calibration batches are inputs of this model"
        )
    notes = (
        kernel_notes(rows)
        + [f"calibrated on {len(batches)} batches with the {config.observer} observer"]
        + notes
    )
    kernels = "/".join(sorted({r["kernel"] for r in rows}))
    return ChangeRecord(
        technique=config.type,
        config=config.to_dict(),
        layers=rows,
        summary={**size_summary(rows), "kernel": kernels, "folded_bn": len(folded)},
        notes=notes,
        state={"folded": [list(p) for p in folded], "fold_method": fold_method},
    )


# --- sensitivity ----------------------------------------------------------------------------------
