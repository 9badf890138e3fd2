"""Where one-shot techniques read weights and write their results: layer views, packed codes, input scales.

- `weight_matrix(m)` / `set_weight_matrix(m, w)`: the (out × in) weight of an `nn.Linear` or of a
  Hugging Face `Conv1D` (GPT-2 stores it transposed, in × out), read as the *effective* weight (after a
  mask) and written to the right place (a masked layer's `original`).
- `quantized_layer(module, codes, scale, zero, ...)`: a layer holding the integer codes a calibrated
  quantizer chose. 4- and 8-bit layers are the weight-only technique's own `WeightOnlyLayer` (same
  buffers, same packing, same ATen kernels), with its codes replaced; 2- and 3-bit layers are
  `LowBitLayer`, whose codes are packed bit-exactly (8 codes of b bits in b bytes). Both dequantize to
  W ≈ (q − z) · s per group and save/reload through safetensors like every `QuantizedLayer`.
- `InputScaled(layer, inv_scale)`: computes layer(x · inv_scale) — AWQ's per-channel input scale when it
  cannot be folded into the op before the layer.
- `restore_oneshot_layers(model, record, config)`: rebuilds those layers on a fresh model before the
  saved tensors are loaded.

Example::

    w = weight_matrix(model.blocks[0].mlp.fc)                   # (out, in), float
    q, s, z = quantize_groups(w, bits=3, group_size=128, symmetric=False)
    layer = quantized_layer(model.blocks[0].mlp.fc, q, s, z, bits=3, group_size=128, symmetric=False)
    replace_module(model, "blocks.0.mlp.fc", layer)             # 3 bits per weight on disk
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from modelscale.core.apply import ChangeRecord
from modelscale.core.errors import ModelscaleError
from modelscale.techniques.quantize.common import (
    SCALE_DTYPES,
    QuantizedLayer,
    dequantize_groups,
    group_layout,
    pack_int4,
    quantize_groups,
    replace_module,
)
from modelscale.techniques.quantize.weight_only import WeightOnlyLayer

BITS = (2, 3, 4, 8)


# --- reading and writing weights -----------------------------------------------------------------
def is_conv1d(module: nn.Module) -> bool:
    """A Hugging Face `Conv1D` (GPT-2): a Linear whose weight is stored transposed (in × out)."""
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf")


def layer_features(module: nn.Module) -> tuple[int, int]:
    """(out_features, in_features) of a Linear or Conv1D."""
    w = module.weight
    return (w.shape[1], w.shape[0]) if is_conv1d(module) else (w.shape[0], w.shape[1])


def weight_matrix(module: nn.Module) -> torch.Tensor:
    """The effective weight as (out × in) float32 (a copy)."""
    w = module.weight.detach()
    w = w.t() if is_conv1d(module) else w
    return w.to(torch.float32, copy=True).contiguous()


def set_weight_matrix(module: nn.Module, w: torch.Tensor) -> None:
    """Write an (out × in) weight back (into `original` when the weight is masked by parametrization)."""
    w = w.t() if is_conv1d(module) else w
    if parametrize.is_parametrized(module, "weight"):
        target = module.parametrizations.weight.original
    else:
        target = module.weight
    with torch.no_grad():
        target.copy_(w.to(target.dtype).reshape(target.shape))


def as_linear(module: nn.Module) -> nn.Module:
    """A Conv1D as the equivalent nn.Linear (weight transposed); a Linear as it is."""
    if not is_conv1d(module):
        return module
    out_f, in_f = layer_features(module)
    linear = nn.Linear(in_f, out_f, bias=module.bias is not None, device=module.weight.device)
    with torch.no_grad():
        linear.weight.copy_(module.weight.detach().t())
        if module.bias is not None:
            linear.bias.copy_(module.bias.detach())
    return linear.to(module.weight.dtype)


# --- bit packing for 2 and 3 bits ----------------------------------------------------------------
def pack_bits(q: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack unsigned codes in [0, 2^bits) (rows × columns) into uint8: every 8 codes fill `bits` bytes.

    Code k of a run of 8 occupies bits [k·b, (k+1)·b) of a little-endian 8·b-bit word; a row whose length
    is not a multiple of 8 is padded with zero codes (a few spare bits per row).
    """
    if not 1 <= bits <= 8:
        raise ModelscaleError(f"pack_bits handles 1..8 bits, got {bits}")
    rows, cols = q.shape
    if q.numel() and (int(q.min()) < 0 or int(q.max()) >= 2**bits):
        raise ModelscaleError(f"pack_bits needs codes in [0, {2**bits - 1}]")
    runs = math.ceil(cols / 8)
    x = F.pad(q.to(torch.int64), (0, runs * 8 - cols)).view(rows, runs, 8)
    shifts = torch.arange(8, device=q.device, dtype=torch.int64) * bits
    word = (x << shifts).sum(-1)  # (rows, runs), at most 64 bits
    byte_shifts = torch.arange(bits, device=q.device, dtype=torch.int64) * 8
    out = (word[..., None] >> byte_shifts) & 0xFF
    return out.to(torch.uint8).view(rows, runs * bits).contiguous()


def unpack_bits(packed: torch.Tensor, bits: int, columns: int) -> torch.Tensor:
    """Inverse of `pack_bits`: int16 codes (rows × columns)."""
    rows = packed.shape[0]
    runs = packed.shape[1] // bits
    x = packed.to(torch.int64).view(rows, runs, bits)
    byte_shifts = torch.arange(bits, device=packed.device, dtype=torch.int64) * 8
    word = (x << byte_shifts).sum(-1)
    shifts = torch.arange(8, device=packed.device, dtype=torch.int64) * bits
    codes = (word[..., None] >> shifts) & (2**bits - 1)
    return codes.view(rows, runs * 8)[:, :columns].to(torch.int16)


class LowBitLayer(QuantizedLayer):
    """Linear with 2- or 3-bit codes packed bit-exactly, group-wise `scale` and maybe `zero_point`."""

    def __init__(
        self,
        module: nn.Module,
        codes: torch.Tensor,
        scale: torch.Tensor,
        zero: torch.Tensor | None,
        *,
        bits: int,
        group_size: int,
        symmetric: bool,
    ) -> None:
        super().__init__(module)
        self.bits, self.symmetric, self.group_size = bits, symmetric, group_size
        self.group = group_layout(self.in_features, group_size)[0]
        offset = 2 ** (bits - 1) if symmetric else 0  # symmetric codes in [-Q, Q] stored as q + 2^(b-1)
        self.register_buffer("qweight", pack_bits(codes.to(torch.int16) + offset, bits))
        self.register_buffer("scale", scale.detach().clone())
        self.register_buffer("zero_point", None if zero is None else zero.detach().clone())
        self.format = f"int{bits}_{'sym' if symmetric else 'asym'}_g{self.group}"

    def codes(self) -> torch.Tensor:
        q = unpack_bits(self.qweight, self.bits, self.in_features)
        return q - 2 ** (self.bits - 1) if self.symmetric else q

    def dequantize(self) -> torch.Tensor:
        w = dequantize_groups(self.codes(), self.scale, self.zero_point, group_size=self.group)
        return w.view(self.geometry["weight_shape"])


# --- building quantized layers from chosen codes ---------------------------------------------------
def _weight_only_storage(codes: torch.Tensor, bits: int, symmetric: bool) -> torch.Tensor:
    """Codes in the layout `WeightOnlyLayer` keeps in `qweight` (see weight_only.py)."""
    if bits == 8:
        return codes.to(torch.int8) if symmetric else codes.to(torch.uint8)
    nibbles = codes + 8 if symmetric else codes
    if nibbles.shape[1] % 2:
        nibbles = F.pad(nibbles, (0, 1))
    return pack_int4(nibbles)


def quantized_layer(
    module: nn.Module,
    codes: torch.Tensor,
    scale: torch.Tensor,
    zero: torch.Tensor | None,
    *,
    bits: int,
    group_size: int,
    symmetric: bool,
    scale_dtype: str = "float32",
    kernel: str = "dequant",
) -> QuantizedLayer:
    """A layer storing `codes` (out × in, int) with `scale` / `zero` per group; Conv1D becomes Linear.

    The stored layer dequantizes to exactly `dequantize_groups(codes, scale, zero)` (checked here).
    """
    if bits not in BITS:
        raise ModelscaleError(f"bits must be one of {', '.join(map(str, BITS))}; got {bits}")
    linear = as_linear(module)
    scale = scale.to(SCALE_DTYPES[scale_dtype])
    if bits in (4, 8):
        layer: QuantizedLayer = WeightOnlyLayer(
            linear, bits=bits, group_size=group_size, symmetric=symmetric, scale_dtype=scale_dtype
        )
        layer.qweight = _weight_only_storage(codes.to(torch.int16), bits, symmetric)
        layer.scale = scale.clone()
        layer.zero_point = None if zero is None else zero.to(torch.uint8).clone()
        group = group_layout(layer.in_features, group_size)[0]
        want = dequantize_groups(codes, scale, zero, group_size=group)
        if not torch.equal(layer.dequantize().reshape(want.shape), want):
            raise ModelscaleError(
                "the weight-only storage no longer matches the codes one-shot quantizers write; "
                "report this (techniques/oneshot/packed.py must follow weight_only.py's layout)"
            )
        if kernel == "torch" and layer.torch_kernel_problem() is None:
            layer.kernel = "torch"
        return layer
    return LowBitLayer(linear, codes, scale, zero, bits=bits, group_size=group_size, symmetric=symmetric)


def rtn_layer(module: nn.Module, *, bits: int, group_size: int, symmetric: bool, **kw: Any) -> QuantizedLayer:
    """Round-to-nearest codes of the module's own weight (also the fresh layer `restore` builds)."""
    codes, scale, zero = quantize_groups(
        weight_matrix(module), bits=bits, group_size=group_size, symmetric=symmetric
    )
    return quantized_layer(
        module, codes, scale, zero, bits=bits, group_size=group_size, symmetric=symmetric, **kw
    )


# --- AWQ input scales that could not be folded ----------------------------------------------------
class InputScaled(nn.Module):
    """`layer(x * inv_scale)`: a per-input-channel scale kept in front of a layer (a float buffer)."""

    def __init__(self, layer: nn.Module, inv_scale: torch.Tensor) -> None:
        super().__init__()
        self.layer = layer
        self.register_buffer("inv_scale", inv_scale.detach().to(torch.float32).clone())

    @property
    def weight(self) -> torch.Tensor:
        """The effective weight seen by an input x: W · diag(inv_scale) (for parents reading .weight)."""
        w = self.layer.weight
        return w * self.inv_scale.to(w.dtype)

    @property
    def bias(self) -> torch.Tensor | None:
        return self.layer.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x * self.inv_scale.to(x.dtype))


# --- records and restore ------------------------------------------------------------------------------
def quant_row(name: str, module: nn.Module, layer: QuantizedLayer, **extra: Any) -> dict[str, Any]:
    """One ChangeRecord.layers entry for a quantized layer (what restore needs, plus its bytes)."""
    return {
        "name": name,
        "conv1d": is_conv1d(module),
        "shape": list(layer.geometry["weight_shape"]),
        "format": layer.format,
        "bits": layer.bits,
        "group": layer.group,
        "bytes": layer.storage_bytes(),
        "float_bytes": layer.float_bytes(),
        **extra,
    }


def restore_oneshot_layers(model: nn.Module, record: ChangeRecord, config: Any) -> None:
    """Rebuild the recorded quantized (and input-scaled) layers on a fresh model, shapes and dtypes only.

    Rows with `bits` become quantized layers (from round-to-nearest codes, overwritten when the saved
    tensors load); rows with `input_scale` get an `InputScaled` wrapper.
    """
    for row in record.layers:
        name = row["name"]
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise ModelscaleError(
                f"saved model has a compressed layer {name!r} that the base model lacks; pass the same architecture"
            ) from None
        new = module
        if row.get("bits"):
            new = rtn_layer(
                module,
                bits=row["bits"],
                group_size=row.get("group_size", row["group"]),
                symmetric=row["symmetric"],
                scale_dtype=config.scale_dtype,
                kernel=row.get("kernel", "dequant"),
            )
        if row.get("input_scale"):
            new = InputScaled(new, torch.ones(layer_features(module)[1], device=module.weight.device))
        if new is not module:
            replace_module(model, name, new)
