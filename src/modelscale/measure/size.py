"""Storage size: the bytes of the file a saved folder holds, its zip, and named estimates beside them.

`file_bytes` is `model.safetensors` exactly as `save_compressed` writes it (`core/weights_file.py`: masks
baked, cluster indices bit-packed, sparse encodings when `storage="sparse"`), serialized in memory by
the same writer — or, with `measure_file`, the length of a file on disk; `zipped_bytes` is that file in
a zip archive (deflate, level 9), where unstructured sparsity shows (a baked-dense masked model's file
is as large as its baseline's; its zeros compress). Two estimates of named encodings stay beside them:
`serialized_bytes` (torch.save of the effective state dict) and `safetensors_bytes` (safetensors of
the effective dense state dict, masks applied).

Example::

    from modelscale.measure.size import measure_file, measure_size
    report = measure_size(model)                       # what `--out` would write
    print(report.file_bytes, report.zipped_bytes, report.zip_ratio)
    on_disk = measure_file("out/model")                # the file a command wrote
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils import parametrize

from modelscale.measure._report import Report


@dataclass
class SizeReport(Report):
    """Bytes of the weights file (and its zip), with two estimates of named encodings beside them."""

    serialized_bytes: int  # estimate: torch.save of the effective (mask-applied) state dict
    safetensors_bytes: int | None  # estimate: safetensors of the effective dense state dict
    zipped_bytes: int  # the weights file in a zip archive (deflate level 9)
    zip_ratio: float  # file_bytes / zipped_bytes (> 1: the zip is smaller)
    tensors: int  # number of tensors in the effective state dict
    note: str = ""
    file_bytes: int | None = None  # model.safetensors as save_compressed writes it
    storage: str = "dense"  # how that file stores tensors (dense | sparse; see core/weights_file.py)
    measured_on: str = "memory"  # "memory" (the writer's bytes, serialized in memory) or the file's path


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


def measure_size(model: nn.Module, *, storage: str = "dense") -> SizeReport:
    """The bytes `save_compressed(..., storage=storage)` writes for `model`, their zip, and estimates."""
    from modelscale.core.weights_file import weights_file_bytes, zip_bytes

    state = effective_state_dict(model)
    raw = torch_bytes(state)
    st_bytes, note = safetensors_size(state)
    try:
        payload = weights_file_bytes(model, storage)
    except Exception as exc:  # noqa: BLE001 - e.g. quantized dtypes safetensors cannot store
        file_bytes, zipped = None, 0
        note = note or f"the weights file cannot be written ({type(exc).__name__})"
    else:
        file_bytes, zipped = len(payload), zip_bytes(payload)
    return SizeReport(
        serialized_bytes=len(raw),
        safetensors_bytes=st_bytes,
        zipped_bytes=zipped,
        zip_ratio=file_bytes / zipped if file_bytes and zipped else 0.0,
        tensors=sum(isinstance(v, torch.Tensor) for v in state.values()),
        note=note,
        file_bytes=file_bytes,
        storage=storage,
    )


def measure_file(folder: str | Path, report: SizeReport | None = None) -> SizeReport:
    """The size of the weights file a saved folder holds, measured on disk (`os.path.getsize`).

    With `report` (the in-memory measure of the same model), its estimates are kept and the file's
    figures replace its own; without, the estimates are left at 0 (no model to serialize)."""
    from modelscale.core.weights_file import file_storage, zip_bytes

    path = Path(folder)
    weights = path / "model.safetensors" if path.is_dir() else path
    payload = weights.read_bytes()
    base = report or SizeReport(
        serialized_bytes=0, safetensors_bytes=None, zipped_bytes=0, zip_ratio=0.0, tensors=0
    )
    zipped = zip_bytes(payload)
    return SizeReport(
        serialized_bytes=base.serialized_bytes,
        safetensors_bytes=base.safetensors_bytes,
        zipped_bytes=zipped,
        zip_ratio=len(payload) / zipped if zipped else 0.0,
        tensors=base.tensors,
        note=base.note,
        file_bytes=weights.stat().st_size,
        storage=file_storage(weights),
        measured_on=str(weights),
    )
