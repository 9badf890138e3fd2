"""Shared pieces of the quantization techniques: the math, int4 packing, the quantized-layer base, sizes.

Integer formats (per output channel row r, split into groups of g input values, scale s and, when
asymmetric, an integer zero point z per group):

    symmetric:   q = clamp(round(w / s), -Q, Q),          s = max|w| / Q,      w ≈ q · s
    asymmetric:  q = clamp(round(w / s) + z, 0, 2^b - 1), s = (max - min) / (2^b - 1),
                 z = clamp(round(-min / s), 0, 2^b - 1),  w ≈ (q - z) · s

with Q = 2^(b-1) - 1 (127 for int8, 7 for int4). When a row's length is not a multiple of g the last
group is shorter (zero-padded for the math only; nothing padded is stored). int4 values are stored
two per byte: byte j of a row holds element 2j in its low nibble and 2j+1 in its high nibble (a row of
odd length gets one spare nibble); symmetric int4 is stored offset by 8 (q + 8 ∈ [1, 15]).

Every quantized layer subclasses `QuantizedLayer`: it keeps its compact tensors as registered buffers
(so `save_compressed` writes them with safetensors and `load_compressed` reads them back after the
technique's restore function rebuilt the layer), exposes `.weight` as the dequantized float weight (so a
parent that reads `child.weight` directly, like `nn.MultiheadAttention` with `out_proj`, still works)
and reports its real storage with `storage_bytes()`.

Example::

    q, scale, zero = quantize_groups(w.flatten(1), bits=4, group_size=32, symmetric=False)
    w_hat = dequantize_groups(q, scale, zero, group_size=32)
    print(sqnr_db(w.flatten(1), w_hat))                         # ~21 dB for Gaussian weights
    print(quantized_bytes(model)["quantized_ratio"])            # float bytes / stored bytes
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from modelscale.core.apply import ChangeRecord
from modelscale.core.errors import ModelscaleError
from modelscale.core.select import Target, select_modules
from modelscale.core.select import set_module as replace_module  # noqa: F401 - one swap, used by the quantizers

SCALE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_EPS = 1e-12


# --- quantization math --------------------------------------------------------------------------------
def group_layout(columns: int, group_size: int) -> tuple[int, int]:
    """(group length, number of groups) for rows of `columns` values; group_size 0 = one group per row."""
    group = columns if group_size <= 0 or group_size >= columns else group_size
    return group, math.ceil(columns / group)


def quantize_groups(
    w: torch.Tensor,
    *,
    bits: int,
    group_size: int,
    symmetric: bool,
    scale_dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Quantize a 2-D weight (rows × columns) group-wise; a last, shorter group is zero-padded for the math.

    Returns (q, scale, zero): q is int16 of shape (rows, columns) holding the integer codes (signed for
    symmetric, in [0, 2^b - 1] for asymmetric); scale has shape (rows, groups) in `scale_dtype` and is
    exactly the scale the codes were computed with; zero is uint8 (rows, groups) for asymmetric
    formats, else None.
    """
    if w.dim() != 2:
        raise ModelscaleError(f"quantize_groups needs a 2-D weight, got shape {tuple(w.shape)}")
    rows, columns = w.shape
    group, groups = group_layout(columns, group_size)
    x = w.detach().to(torch.float32)
    if groups * group != columns:
        x = F.pad(x, (0, groups * group - columns))  # zeros change no group's max|w|, min or max
    x = x.view(rows, groups, group)
    tiny = torch.finfo(scale_dtype).tiny
    if symmetric:
        qmax = 2 ** (bits - 1) - 1
        scale = (x.abs().amax(-1) / qmax).clamp(min=tiny).to(scale_dtype)
        q = torch.clamp(torch.round(x / scale.float()[..., None]), -qmax, qmax)
        zero = None
    else:
        levels = 2**bits - 1
        lo = x.amin(-1).clamp(max=0.0)  # the range always holds 0, so zero padding is exact
        hi = x.amax(-1).clamp(min=0.0)
        scale = ((hi - lo) / levels).clamp(min=tiny).to(scale_dtype)
        s = scale.float()
        zero = torch.clamp(torch.round(-lo / s), 0, levels)
        q = torch.clamp(torch.round(x / s[..., None]) + zero[..., None], 0, levels)
        zero = zero.to(torch.uint8)
    q = q.to(torch.int16).view(rows, groups * group)[:, :columns].contiguous()
    return q, scale, zero


def dequantize_groups(
    q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | int | None, *, group_size: int
) -> torch.Tensor:
    """Float32 weight (rows × columns) from integer codes: (q - z) · s per group.

    `zero` is a (rows × groups) tensor of zero points, one integer offset for every group (8 for
    symmetric int4 stored as q + 8), or None (symmetric codes).
    """
    rows, columns = q.shape
    group, groups = group_layout(columns, group_size)
    x = q.to(torch.float32, copy=True)  # the one new buffer; the steps below work in place
    if groups * group != columns:
        x = F.pad(x, (0, groups * group - columns))
    x = x.view(rows, groups, group)
    if isinstance(zero, torch.Tensor):
        x.sub_(zero.to(torch.float32)[..., None])
    elif zero:
        x.sub_(float(zero))
    x.mul_(scale.to(torch.float32)[..., None])
    w = x.view(rows, groups * group)
    return w[:, :columns] if groups * group != columns else w


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """Pack values in [0, 15] (rows × even columns) into uint8 (rows × columns/2): low nibble first."""
    if q.shape[-1] % 2:
        raise ModelscaleError(f"pack_int4 needs an even number of columns, got {q.shape[-1]}")
    if q.numel() and (int(q.min()) < 0 or int(q.max()) > 15):
        raise ModelscaleError("pack_int4 needs values in [0, 15]")
    u = q.to(torch.uint8)
    return (u[..., 0::2] | (u[..., 1::2] << 4)).contiguous()


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of `pack_int4`: uint8 values in [0, 15], twice as many columns."""
    low = packed & 0x0F
    high = packed >> 4
    return torch.stack((low, high), dim=-1).flatten(-2)


def quantize_rows_int8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Dynamic symmetric int8 per row (token): (codes int8 rows × k, scale float32 rows × 1)."""
    # max|x| as max(max x, -min x): two reads and no |x| copy (torch.aminmax measured slower on CPU)
    amax = torch.maximum(x.amax(-1, keepdim=True), x.amin(-1, keepdim=True).neg()).clamp_(min=_EPS)
    q = (x * (127.0 / amax)).round_().to(torch.int8)  # |x| · 127 / amax <= 127 by construction
    return q, amax / 127.0


def sqnr_db(reference: torch.Tensor, approx: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio 10·log10(Σ ref² / Σ (ref - approx)²) in dB (inf if exact)."""
    ref = reference.detach().double()
    noise = (ref - approx.detach().double()).pow(2).sum().item()
    signal = ref.pow(2).sum().item()
    return math.inf if noise == 0 else 10.0 * math.log10(max(signal, _EPS) / noise)


def int_mm_available(device: torch.device | str = "cpu") -> bool:
    """Whether `torch._int_mm` runs here and gives the exact int32 product (a small probe, run once per call)."""
    device = torch.device(device)
    if not hasattr(torch, "_int_mm"):
        return False
    g = torch.Generator().manual_seed(0)
    a = torch.randint(-128, 128, (32, 64), dtype=torch.int8, generator=g)
    b = torch.randint(-128, 128, (32, 64), dtype=torch.int8, generator=g)
    try:
        out = torch._int_mm(a.to(device), b.to(device).t())
    except (RuntimeError, NotImplementedError):
        return False
    return out.dtype == torch.int32 and torch.equal(out.cpu().long(), a.long() @ b.long().t())


# --- the quantized-layer base -------------------------------------------------------------------------
def layer_geometry(module: nn.Module) -> dict[str, Any]:
    """How to call a Linear or Conv2d functionally: kind, weight shape and conv arguments (JSON data)."""
    geo: dict[str, Any] = {"weight_shape": list(module.weight.shape)}
    if isinstance(module, nn.Linear):
        geo["kind"] = "linear"
    elif isinstance(module, nn.Conv2d):
        geo.update(
            kind="conv2d",
            stride=list(module.stride),
            padding=module.padding if isinstance(module.padding, str) else list(module.padding),
            dilation=list(module.dilation),
            groups=module.groups,
        )
    else:
        raise ModelscaleError(f"cannot quantize a {type(module).__name__}; supported: Linear, Conv2d")
    return geo


class QuantizedLayer(nn.Module):
    """A Linear or Conv2d whose weight is kept in a compact format; subclasses define `dequantize`."""

    format: str = "float"

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.geometry = layer_geometry(module)
        self.weight_dtype = module.weight.dtype
        shape = self.geometry["weight_shape"]
        self.out_features, self.in_features = shape[0], math.prod(shape[1:])
        bias = module.bias
        if bias is None:
            self.register_parameter("bias", None)
        else:
            self.bias = nn.Parameter(bias.detach().clone(), bias.requires_grad)

    def dequantize(self) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def weight(self) -> torch.Tensor:
        """The effective (dequantized) weight in the layer's original float dtype."""
        return self.dequantize().to(self.weight_dtype)

    def float_forward(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """The original layer's computation with `weight` (already in x's dtype)."""
        bias = None if self.bias is None else self.bias.to(x.dtype)
        geo = self.geometry
        if geo["kind"] == "linear":
            return F.linear(x, weight, bias)
        padding = geo["padding"] if isinstance(geo["padding"], str) else tuple(geo["padding"])
        return F.conv2d(x, weight, bias, tuple(geo["stride"]), padding, tuple(geo["dilation"]), geo["groups"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.float_forward(x, self.dequantize().to(x.dtype))

    def storage_bytes(self) -> int:
        """Bytes of everything this layer stores (compact weight, scales, zero points, bias)."""
        tensors = list(self.buffers(recurse=False)) + list(self.parameters(recurse=False))
        return sum(t.numel() * t.element_size() for t in tensors)

    def float_bytes(self) -> int:
        """Bytes the same layer takes as float32 weight + bias."""
        bias = 0 if self.bias is None else self.bias.numel() * 4
        return math.prod(self.geometry["weight_shape"]) * 4 + bias

    def extra_repr(self) -> str:
        return f"{self.format}, {self.geometry['kind']}, weight_shape={tuple(self.geometry['weight_shape'])}"


# --- selecting and swapping layers --------------------------------------------------------------------
def select_layers(
    model: nn.Module, target: Target, *, kinds: tuple[type, ...] = (nn.Linear, nn.Conv2d)
) -> tuple[list[tuple[str, nn.Module]], list[str]]:
    """Chosen (name, module) pairs this technique can quantize, and notes about the ones it skips."""
    chosen, notes = [], []
    for name, module in select_modules(model, target):
        if isinstance(module, QuantizedLayer):
            notes.append(f"{name}: already quantized ({module.format}), left as is")
        elif not isinstance(module, kinds):
            wanted = "/".join(k.__name__ for k in kinds)
            notes.append(f"{name}: {type(module).__name__} is not supported (only {wanted}), left float")
        elif isinstance(module, nn.Conv2d) and module.padding_mode != "zeros":
            notes.append(f"{name}: padding_mode={module.padding_mode!r} is not supported, left float")
        else:
            chosen.append((name, module))
    if not chosen:
        raise ModelscaleError(
            "no selected layer can be quantized ("
            + "; ".join(notes[:3])
            + "); select Linear or Conv2d layers"
        )
    return chosen, notes


def parent_reads_weight(model: nn.Module, name: str) -> bool:
    """True when `name` is the out_proj of an nn.MultiheadAttention, which reads `.weight` directly."""
    parent, _, child = name.rpartition(".")
    owner = model.get_submodule(parent) if parent else model
    return isinstance(owner, nn.MultiheadAttention) and child == "out_proj"


def layer_row(name: str, layer: QuantizedLayer, **extra: Any) -> dict[str, Any]:
    """One `ChangeRecord.layers` entry: what the layer is and what it stores."""
    return {
        "name": name,
        "kind": layer.geometry["kind"],
        "shape": list(layer.geometry["weight_shape"]),
        "format": layer.format,
        "bytes": layer.storage_bytes(),
        "float_bytes": layer.float_bytes(),
        **extra,
    }


def size_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    stored = sum(r["bytes"] for r in rows)
    dense = sum(r["float_bytes"] for r in rows)
    return {
        "layers": len(rows),
        "quantized_bytes": stored,
        "float_bytes": dense,
        "ratio": dense / stored if stored else 1.0,
    }


def restore_layers(model: nn.Module, record: ChangeRecord, build: Any) -> None:
    """Rebuild the recorded quantized layers on a fresh float model: `build(module, row)` per row.

    The codes are computed from the fresh model's weights (so every buffer has its final shape and
    dtype) and then overwritten by the saved ones when the state dict is loaded.
    """
    for row in record.layers:
        name = row["name"]
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise ModelscaleError(
                f"saved model has quantized layer {name!r} that the base model lacks; pass the same architecture"
            ) from None
        replace_module(model, name, build(module, row))


# --- sizes --------------------------------------------------------------------------------------------
def quantized_bytes(model: nn.Module) -> dict[str, Any]:
    """Bytes each part of `model` really takes as stored (int4 packed, scales and zero points counted).

    Returns total_bytes (every parameter and buffer), float32_bytes (the same model with every quantized
    layer back in float32), quantized_bytes / quantized_float_bytes (the quantized layers only, stored
    vs float32), their ratios, and one row per quantized layer (name, format, bytes, float_bytes).
    """
    layers = []
    quantized_names: set[str] = set()
    for name, module in model.named_modules():
        if isinstance(module, QuantizedLayer):
            layers.append(
                {
                    "name": name,
                    "format": module.format,
                    "bytes": module.storage_bytes(),
                    "float_bytes": module.float_bytes(),
                }
            )
            quantized_names.add(name)
    other = 0
    seen: set[int] = set()
    for full, tensor in list(model.named_parameters()) + list(model.named_buffers()):
        owner = full.rpartition(".")[0]
        if owner in quantized_names or id(tensor) in seen:
            continue
        seen.add(id(tensor))
        other += tensor.numel() * tensor.element_size()
    q = sum(r["bytes"] for r in layers)
    qf = sum(r["float_bytes"] for r in layers)
    return {
        "total_bytes": other + q,
        "float32_bytes": other + qf,
        "ratio": (other + qf) / max(other + q, 1),
        "quantized_bytes": q,
        "quantized_float_bytes": qf,
        "quantized_ratio": qf / q if q else 1.0,
        "layers": layers,
    }


def safetensors_tensor_bytes(path: str | Path) -> dict[str, int]:
    """Bytes each tensor takes inside a .safetensors file (read from its header, no tensor is loaded)."""
    with open(path, "rb") as fh:
        (length,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(length))
    return {
        name: entry["data_offsets"][1] - entry["data_offsets"][0]
        for name, entry in header.items()
        if name != "__metadata__"
    }


def require_torchao() -> Any:
    """Import torchao (optional; used only as an independent reference and a benchmark comparison)."""
    try:
        import torchao
    except ImportError:
        raise ModelscaleError(
            "this needs torchao, which is not installed; pip install modelscale[quant] (or pip install torchao)"
        ) from None
    return torchao
