"""How a saved folder's `model.safetensors` stores the weights: the bytes on disk are the model's.

`weights_state(model, storage)` turns a model into the tensors the file holds, and `write_weights` /
`read_weights` write and read that file; `weights_file_bytes(model, storage)` serializes the same
tensors in memory, byte for byte what `write_weights` puts on disk, so a size figure without a file
is still the file's.

Rules, applied to every model (no technique is named here; parametrizations declare what they need):

- A tensor behind parametrizations that all set `store_effective = True` (pruning masks) is stored as
  its effective value under the plain name (`fc.weight`), as a dense model stores it: a masked model's
  file is exactly as large as its unpruned baseline's. On reading, each parametrization rebuilds its
  own buffers from that value (`state_from_effective(effective) -> {buffer: tensor}`; a mask is
  `effective != 0`), so the reloaded model computes the same outputs and keeps its zeros when trained.
- A parametrization's `packed_bits() -> {buffer: bits}` buffers (clustering's indices) are stored
  bit-packed at that width, and every bool tensor at 1 bit per element.
- `storage="sparse"`: each remaining tensor is stored as a bitmask or CSR encoding (`core/encodings.py`)
  when that is smaller than dense (the user's choice, recorded in the file's metadata and the folder's
  manifest); `storage="dense"` (the default) keeps them dense.

Tied tensors are stored once (as `safetensors.torch.save_model` does). A file written before these
rules (masks stored as `original` + `mask`) still loads: keys already in the model's own layout are
loaded as they are.

Example::

    from modelscale.core.weights_file import read_weights, weights_file_bytes, write_weights
    write_weights("out/model.safetensors", pruned, storage="sparse")
    assert weights_file_bytes(pruned, "sparse") == os.path.getsize("out/model.safetensors")
    read_weights("out/model.safetensors", fresh_model_with_masks_restored)
"""

from __future__ import annotations

import io
import json
import math
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from modelscale.core.encodings import (
    BitmaskEncoding,
    CSREncoding,
    decode_bitmask,
    decode_csr,
    encode_bitmask,
    encode_csr,
    pack_indices,
    unpack_indices,
)
from modelscale.core.errors import ModelscaleError

STORAGE_CHOICES = ("dense", "sparse")
META_KEY = "modelscale.storage"
SEP = "::"  # encoded parts of one tensor: "fc.weight::values"
ZIP_LEVEL = 9


def check_storage(storage: str) -> str:
    if storage not in STORAGE_CHOICES:
        raise ModelscaleError(
            f"storage must be one of {', '.join(STORAGE_CHOICES)} (dense: baked weights, sparse: "
            f"bitmask/CSR where smaller); got {storage!r}"
        )
    return storage


def _parametrized(model: nn.Module):
    """(dotted name of the tensor, module, tensor name, its parametrization list) for every one."""
    for prefix, module in model.named_modules():
        if parametrize.is_parametrized(module):
            dotted = f"{prefix}." if prefix else ""
            for name, plist in module.parametrizations.items():
                yield f"{dotted}{name}", f"{dotted}parametrizations.{name}.", module, name, plist


def _stores_effective(plist: Any) -> bool:
    return len(plist) > 0 and all(getattr(p, "store_effective", False) for p in plist)


def _dedupe(state: dict[str, torch.Tensor], preferred: Any = ()) -> dict[str, list[str]]:
    from safetensors.torch import _remove_duplicate_names

    return _remove_duplicate_names(state, preferred_names=list(preferred))


def weights_state(model: nn.Module, storage: str = "dense") -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, safetensors metadata) that `write_weights` stores for `model` (see the module doc)."""
    check_storage(storage)
    state = model.state_dict()
    metadata: dict[str, str] = {}
    for kept, removed in _dedupe(state).items():
        for name in removed:
            metadata.setdefault(name, kept)
            del state[name]
    info: dict[str, Any] = {"storage": storage}
    packed: dict[str, Any] = {}
    with torch.no_grad():
        for plain, base, module, name, plist in _parametrized(model):
            if _stores_effective(plist):
                keys = [k for k in state if k.startswith(base)]
                if keys:
                    for key in keys:
                        del state[key]
                    state[plain] = getattr(module, name).detach()
                continue
            for i, p in enumerate(plist):
                bits_of = getattr(p, "packed_bits", None)
                for buffer, bits in (bits_of() if callable(bits_of) else {}).items():
                    key = f"{base}{i}.{buffer}"
                    if key in state:
                        packed[key] = int(bits)
    for key, value in list(state.items()):
        if value.dtype == torch.bool:
            packed.setdefault(key, 1)
    for key, bits in packed.items():
        value = state[key]
        packed[key] = {
            "bits": bits,
            "shape": list(value.shape),
            "dtype": str(value.dtype).removeprefix("torch."),
        }
        state[key] = torch.from_numpy(pack_indices(value.detach().cpu().to(torch.uint8), bits))
    if packed:
        info["packed"] = packed
    if storage == "sparse":
        encoded = _encode_sparse(state, skip=set(packed))
        if encoded:
            info["encoded"] = encoded
    metadata[META_KEY] = json.dumps(info, sort_keys=True, separators=(",", ":"))
    return {k: v.detach().cpu().contiguous() for k, v in state.items()}, metadata


def _encode_sparse(state: dict[str, torch.Tensor], *, skip: set[str]) -> dict[str, Any]:
    """Replace each tensor whose bitmask or CSR form is smaller than dense by that form, in place."""
    encoded: dict[str, Any] = {}
    for key in list(state):
        value = state[key]
        if key in skip or value.numel() == 0 or value.is_complex() or value.dtype == torch.bool:
            continue
        dense = value.numel() * value.element_size()
        nnz = int(torch.count_nonzero(value))
        if math.ceil(value.numel() / 8) + nnz * value.element_size() >= dense:
            continue  # not even the bitmask is smaller: keep it dense
        forms: list[BitmaskEncoding | CSREncoding] = [encode_bitmask(value), encode_csr(value)]
        best = min(forms, key=lambda e: e.nbytes)
        if best.nbytes >= dense:
            continue
        del state[key]
        entry: dict[str, Any] = {"shape": list(value.shape), "dtype": best.dtype}
        if isinstance(best, BitmaskEncoding):
            entry["codec"] = "bitmask"
            parts = {"mask": best.mask, "values": best.values}
        else:
            entry.update(codec="csr", rows=best.rows, cols=best.cols)
            parts = {"row_ptr": best.row_ptr, "col_idx": best.col_idx, "values": best.values}
        for part, array in parts.items():
            state[f"{key}{SEP}{part}"] = torch.from_numpy(np.ascontiguousarray(array))
        encoded[key] = entry
    return encoded


def _decode(tensors: dict[str, torch.Tensor], info: dict[str, Any], where: str) -> dict[str, torch.Tensor]:
    """The state dict the file encodes: sparse forms decoded, packed tensors unpacked."""
    state = dict(tensors)
    for key, entry in (info.get("encoded") or {}).items():
        shape = tuple(entry["shape"])
        try:
            parts = {
                p: state.pop(f"{key}{SEP}{p}").numpy()
                for p in ("values", "mask", "row_ptr", "col_idx")
                if f"{key}{SEP}{p}" in state
            }
            if entry["codec"] == "bitmask":
                state[key] = decode_bitmask(
                    BitmaskEncoding(shape, entry["dtype"], parts["mask"], parts["values"])
                )
            else:
                enc = CSREncoding(
                    shape,
                    entry["dtype"],
                    int(entry["rows"]),
                    int(entry["cols"]),
                    parts["row_ptr"],
                    parts["col_idx"],
                    parts["values"],
                )
                state[key] = decode_csr(enc)
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelscaleError(
                f"{where}: the sparse encoding of {key} is incomplete ({exc}); re-save the model"
            ) from None
    for key, entry in (info.get("packed") or {}).items():
        if key not in state:
            raise ModelscaleError(f"{where}: packed tensor {key} is missing; re-save the model")
        shape = tuple(entry["shape"])
        values = unpack_indices(state[key].numpy(), int(entry["bits"]), math.prod(shape))
        dtype = getattr(torch, str(entry.get("dtype", "uint8")), torch.uint8)
        state[key] = torch.from_numpy(values.copy()).reshape(shape).to(dtype)
    return state


def _serialize(model: nn.Module, storage: str) -> bytes:
    from safetensors.torch import save

    tensors, metadata = weights_state(model, storage)
    return save(tensors, metadata=metadata)


def write_weights(path: str | Path, model: nn.Module, storage: str = "dense") -> int:
    """Write `model`'s weights to `path` (a safetensors file) under the rules above; returns its bytes."""
    from safetensors.torch import save_file

    tensors, metadata = weights_state(model, storage)
    save_file(tensors, str(path), metadata=metadata)
    return Path(path).stat().st_size


def weights_file_bytes(model: nn.Module, storage: str = "dense") -> bytes:
    """The exact bytes `write_weights(path, model, storage)` writes, produced in memory."""
    return _serialize(model, storage)


def zip_bytes(payload: bytes, arcname: str = "model.safetensors") -> int:
    """Bytes of a zip archive (deflate, level 9) holding `payload` as `arcname` — what `zip -9` gives."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=ZIP_LEVEL) as archive:
        info = zipfile.ZipInfo(arcname, date_time=(1980, 1, 1, 0, 0, 0))
        info.compress_type = zipfile.ZIP_DEFLATED
        archive.writestr(info, payload, compresslevel=ZIP_LEVEL)
    return len(buffer.getvalue())


def file_storage(path: str | Path) -> str:
    """The storage choice recorded in a weights file ("dense" for files written before it was recorded)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
    try:
        return str(json.loads(metadata.get(META_KEY, "{}")).get("storage", "dense"))
    except json.JSONDecodeError:
        return "dense"


def read_weights(path: str | Path, model: nn.Module) -> nn.Module:
    """Load a file `write_weights` wrote into `model` (structure already restored), strictly.

    Raises RuntimeError naming missing / unexpected keys when the file does not fit the model."""
    from safetensors import safe_open

    where = str(path)
    with safe_open(where, framework="pt") as f:
        metadata = f.metadata() or {}
        tensors = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 - safe_open has no items()
    try:
        info = json.loads(metadata.get(META_KEY, "{}"))
    except json.JSONDecodeError:
        raise ModelscaleError(f"{where}: its storage metadata is not JSON; re-save the model") from None
    state = _decode(tensors, info if isinstance(info, dict) else {}, where)
    for plain, base, _module, _name, plist in _parametrized(model):
        if plain in state and f"{base}original" not in state and _stores_effective(plist):
            effective = state.pop(plain)
            state[f"{base}original"] = effective
            for i, p in enumerate(plist):
                for buffer, value in p.state_from_effective(effective).items():
                    state[f"{base}{i}.{buffer}"] = value
    removed = _dedupe(model.state_dict(), preferred=state.keys())
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing, unexpected = set(missing), list(unexpected)
    for group in removed.values():
        for name in group:
            if name in missing:
                missing.remove(name)
            else:
                unexpected.append(name)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append("Missing key(s) in state_dict: " + ", ".join(sorted(missing)))
        if unexpected:
            parts.append("Unexpected key(s) in state_dict: " + ", ".join(sorted(unexpected)))
        raise RuntimeError("; ".join(parts))
    return model
