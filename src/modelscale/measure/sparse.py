"""Honest storage of sparse weights: dense vs. bitmask vs. CSR, counted on real encoded buffers.

A masked (unstructured-pruned) model stores its zeros like any other value, so it is no smaller
until its tensors are written in a sparse format. This module writes them in two and counts the
bytes of the arrays it produced, for the effective weights (masks applied, see
`modelscale.measure.size.effective_state_dict`):

- dense:   n · itemsize
- bitmask: ⌈n / 8⌉ (one bit per weight: non-zero or not) + nnz · itemsize (the non-zero values)
- CSR:     the tensor as a (shape[0] × rest) matrix; (rows + 1) row pointers + nnz column indices,
           each in the narrowest of int16 / int32 / int64 that holds it, + nnz · itemsize values

Non-zero values are kept as their raw bit patterns (an integer view of the same width, so bfloat16
works too) and decode bit for bit, NaN and infinities included; "zero" is by value, so -0.0 (which
masking a negative weight produces) is stored as zero and decodes as +0.0 (`torch.equal` holds).

For float32, bitmask beats dense above 1/32 ≈ 3 % sparsity; CSR beats dense above ~33 % with int16
column indices (50 % with int32) and beats bitmask only above ~94 % (int16). The small per-tensor
header (shape, dtype) is not counted, as dense bytes count no header either.

Example::

    from modelscale.measure.sparse import decode_csr, encode_csr, sparse_storage
    report = sparse_storage(pruned_model)
    print(report.dense_bytes, report.bitmask_bytes, report.csr_bytes, report.best_bytes)
    enc = encode_csr(weight); assert torch.equal(decode_csr(enc), weight); print(enc.nbytes)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from modelscale.core.encodings import (  # the codecs live in core: the saved-folder writer uses them too
    BitmaskEncoding,
    CSREncoding,
    _dtype_name,
    decode_bitmask,
    decode_csr,
    encode_bitmask,
    encode_csr,
    narrowest_index_dtype,
)
from modelscale.core.errors import ModelscaleError
from modelscale.measure._report import Report
from modelscale.measure.size import effective_state_dict

__all__ = [
    "BitmaskEncoding",
    "CSREncoding",
    "SparseStorageReport",
    "TensorStorage",
    "decode_bitmask",
    "decode_csr",
    "decode_state",
    "encode_bitmask",
    "encode_csr",
    "encode_state",
    "narrowest_index_dtype",
    "sparse_storage",
    "tensor_storage",
]


@dataclass
class TensorStorage(Report):
    """Bytes of one effective tensor stored dense, as a bitmask, and as CSR."""

    name: str
    shape: list[int]
    dtype: str
    numel: int
    nnz: int
    sparsity: float  # zero elements / numel
    dense_bytes: int
    bitmask_bytes: int
    csr_bytes: int
    csr_index_dtype: str  # column indices
    csr_row_ptr_dtype: str
    best: str  # "dense" | "bitmask" | "csr": the smallest (dense on ties)
    best_bytes: int


@dataclass
class SparseStorageReport(Report):
    """Storage of a model's effective tensors in each encoding, per tensor and in total.

    `best_bytes` stores every tensor in its own smallest encoding; `compression` = dense / best.
    A model without zeros reports best == dense and compression 1.0.
    """

    dense_bytes: int
    bitmask_bytes: int  # every tensor as a bitmask
    csr_bytes: int  # every tensor as CSR
    best_bytes: int  # each tensor in its smallest encoding
    best_uniform: str  # the one encoding smallest for all tensors together
    compression: float  # dense_bytes / best_bytes (1.0: no saving)
    numel: int
    nnz: int
    sparsity: float
    tensors: list[TensorStorage] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # tensors that cannot be encoded, with why
    note: str = ""


def tensor_storage(name: str, tensor: torch.Tensor) -> TensorStorage:
    """Encode one tensor both ways and count the bytes of the buffers produced."""
    bitmask = encode_bitmask(tensor)
    csr = encode_csr(tensor)
    numel = tensor.numel()
    dense = numel * tensor.element_size()
    sizes = {"dense": dense, "bitmask": bitmask.nbytes, "csr": csr.nbytes}
    best = min(sizes, key=lambda k: (sizes[k], k != "dense"))
    nnz = int(bitmask.values.size)
    return TensorStorage(
        name=name,
        shape=list(tensor.shape),
        dtype=_dtype_name(tensor.dtype),
        numel=numel,
        nnz=nnz,
        sparsity=1.0 - nnz / numel if numel else 0.0,
        dense_bytes=dense,
        bitmask_bytes=bitmask.nbytes,
        csr_bytes=csr.nbytes,
        csr_index_dtype=str(csr.col_idx.dtype),
        csr_row_ptr_dtype=str(csr.row_ptr.dtype),
        best=best,
        best_bytes=sizes[best],
    )


def sparse_storage(model: nn.Module | dict[str, torch.Tensor]) -> SparseStorageReport:
    """Dense, bitmask and CSR bytes of `model`'s effective state dict (tied tensors counted once)."""
    state = model if isinstance(model, dict) else effective_state_dict(model)
    rows: list[TensorStorage] = []
    skipped: list[str] = []
    seen: set[tuple[int, int, tuple[int, ...], tuple[int, ...]]] = set()
    for name, value in state.items():
        if not isinstance(value, torch.Tensor):
            skipped.append(f"{name}: not a tensor ({type(value).__name__})")
            continue
        if value.device.type != "meta" and not value.is_sparse and value.numel():
            view = (
                value.untyped_storage().data_ptr(),
                value.storage_offset(),
                tuple(value.shape),
                value.stride(),
            )
            if view in seen:
                continue  # tied: stored once
            seen.add(view)
        try:
            rows.append(tensor_storage(name, value))
        except ModelscaleError as exc:
            skipped.append(f"{name}: {exc}")
    totals = {k: sum(getattr(r, f"{k}_bytes") for r in rows) for k in ("dense", "bitmask", "csr")}
    best_uniform = min(totals, key=lambda k: (totals[k], k != "dense"))
    best = sum(r.best_bytes for r in rows)
    numel = sum(r.numel for r in rows)
    nnz = sum(r.nnz for r in rows)
    return SparseStorageReport(
        dense_bytes=totals["dense"],
        bitmask_bytes=totals["bitmask"],
        csr_bytes=totals["csr"],
        best_bytes=best,
        best_uniform=best_uniform,
        compression=totals["dense"] / best if best else 1.0,
        numel=numel,
        nnz=nnz,
        sparsity=1.0 - nnz / numel if numel else 0.0,
        tensors=rows,
        skipped=skipped,
        note="raw buffer bytes of each encoding; per-tensor headers (shape, dtype) are not counted",
    )


def encode_state(state: dict[str, torch.Tensor], encoding: str = "best") -> dict[str, Any]:
    """Encode every tensor of a state dict: "dense" (kept), "bitmask", "csr" or "best" (smallest each)."""
    if encoding not in ("best", "dense", "bitmask", "csr"):
        raise ModelscaleError(f"encoding must be one of best, dense, bitmask, csr; got {encoding!r}")
    out: dict[str, Any] = {}
    for name, value in state.items():
        choice = encoding if encoding != "best" else tensor_storage(name, value).best
        if choice == "bitmask":
            out[name] = encode_bitmask(value)
        elif choice == "csr":
            out[name] = encode_csr(value)
        else:
            out[name] = value
    return out


def decode_state(encoded: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Inverse of `encode_state`."""
    out = {}
    for name, value in encoded.items():
        if isinstance(value, BitmaskEncoding):
            out[name] = decode_bitmask(value)
        elif isinstance(value, CSREncoding):
            out[name] = decode_csr(value)
        else:
            out[name] = value
    return out
