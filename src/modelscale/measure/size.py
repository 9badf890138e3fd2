"""Storage size: the bytes a model's effective weights take when actually serialized, and zipped.

The state dict is saved with parametrizations baked in (a masked layer is stored as its effective
weight `original * mask`, as `bake_masks` would export it, not as original + mask), with `torch.save`
into memory and with safetensors. The torch bytes are then deflated (zlib, level 9): a masked model
is no smaller serialized — its zeros still take 4 bytes each — but its zeros compress, so the zipped
size is where unstructured sparsity shows a storage gain.

Example::

    from modelscale.measure.size import measure_size
    report = measure_size(model)
    print(report.serialized_bytes, report.zipped_bytes, report.zip_ratio)
"""

from __future__ import annotations

import io
import zlib
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import parametrize

from modelscale.measure._report import Report


@dataclass
class SizeReport(Report):
    """Bytes of the effective state dict: torch.save, safetensors, and torch.save deflated (level 9)."""

    serialized_bytes: int  # torch.save of the effective state dict
    safetensors_bytes: int | None  # safetensors of the same tensors (None if it cannot store them)
    zipped_bytes: int  # zlib level 9 of the torch.save bytes
    zip_ratio: float  # serialized_bytes / zipped_bytes (> 1: the zip is smaller)
    tensors: int  # number of tensors stored
    note: str = ""


def effective_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """`model.state_dict()` with every parametrization baked in (no copy of the model is made).

    `a.parametrizations.weight.original` and the parametrization's own buffers (masks) are replaced by
    one entry `a.weight` holding the effective tensor, as `remove_parametrizations(...,
    leave_parametrized=True)` would store it.
    """
    state = model.state_dict(keep_vars=False)
    effective: dict[str, torch.Tensor] = {}  # "a.parametrizations.weight." -> value of a.weight
    with torch.no_grad():
        for prefix, module in model.named_modules():
            if parametrize.is_parametrized(module):
                dotted = f"{prefix}." if prefix else ""
                for name in module.parametrizations:
                    effective[f"{dotted}parametrizations.{name}."] = getattr(module, name).detach()
    if not effective:
        return state
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        internal = next((p for p in effective if key.startswith(p)), None)
        if internal is None:
            out[key] = value
        else:  # keep the original's position in the ordering, under the plain name
            plain = internal.replace("parametrizations.", "", 1)[:-1]
            out.setdefault(plain, effective[internal])
    return out


def torch_bytes(state: dict[str, torch.Tensor]) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def safetensors_size(state: dict[str, torch.Tensor]) -> tuple[int | None, str]:
    """Bytes safetensors writes for `state` (tied tensors stored once), or None and the reason."""
    from safetensors.torch import save

    tensors: dict[str, torch.Tensor] = {}
    seen: set[tuple[int, int, tuple[int, ...], tuple[int, ...]]] = set()
    storages: set[int] = set()
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            continue
        if value.device.type == "meta":
            return None, "meta tensors have no bytes"
        view = (
            value.untyped_storage().data_ptr(),
            value.storage_offset(),
            tuple(value.shape),
            value.stride(),
        )
        if view in seen:
            continue  # a tied tensor: stored once
        seen.add(view)
        ptr = view[0]
        shares = ptr in storages and value.numel() > 0
        storages.add(ptr)
        if shares or not value.is_contiguous():
            value = value.contiguous().clone()
        tensors[key] = value.cpu()
    try:
        return len(save(tensors)), ""
    except Exception as exc:  # noqa: BLE001 - e.g. quantized dtypes safetensors cannot store
        return None, f"safetensors cannot store this model ({type(exc).__name__})"


def measure_size(model: nn.Module, *, level: int = 9) -> SizeReport:
    """Serialized and zipped bytes of `model`'s effective weights (see the module docstring)."""
    state = effective_state_dict(model)
    raw = torch_bytes(state)
    zipped = len(zlib.compress(raw, level))
    st_bytes, note = safetensors_size(state)
    return SizeReport(
        serialized_bytes=len(raw),
        safetensors_bytes=st_bytes,
        zipped_bytes=zipped,
        zip_ratio=len(raw) / zipped if zipped else 0.0,
        tensors=sum(isinstance(v, torch.Tensor) for v in state.values()),
        note=note,
    )
