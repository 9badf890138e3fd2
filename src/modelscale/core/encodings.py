"""Exact, lossless encodings of tensors as byte arrays: bitmask and CSR sparse, and bit-packed indices.

These are the codecs the saved-folder writer (`core/weights_file.py`) uses and the storage measures
(`measure/sparse.py`, `techniques/cluster/storage.py`) count; every figure is the length of a real
array. Non-zero values are kept as their raw bit patterns (an integer view of the same width, so
bfloat16 works too) and decode bit for bit, NaN and infinities included; "zero" is by value, so -0.0
is stored as zero and decodes as +0.0.

- bitmask: ⌈n / 8⌉ bytes (one bit per element: non-zero or not) + nnz · itemsize
- CSR:     the tensor as (shape[0] × rest); (rows + 1) row pointers + nnz column indices, each in the
           narrowest of int16 / int32 / int64 that holds it, + nnz · itemsize
- packed indices: n integers < 2^bits in ⌈n · bits / 8⌉ bytes, most significant bit first

Example::

    from modelscale.core.encodings import decode_csr, encode_csr, pack_indices, unpack_indices
    enc = encode_csr(weight); assert torch.equal(decode_csr(enc), weight); print(enc.nbytes)
    packed = pack_indices(indices, bits=4)  # numpy uint8, ceil(n * 4 / 8) bytes
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from modelscale.core.errors import ModelscaleError

_BIT_VIEWS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
_INDEX_DTYPES = (np.int16, np.int32, np.int64)


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _dtype_from_name(name: str) -> torch.dtype:
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise ModelscaleError(f"unknown torch dtype {name!r} in an encoded tensor")
    return dtype


def _bit_pattern(tensor: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """The tensor flattened as same-width integers holding its exact bits, and where it is non-zero."""
    if not isinstance(tensor, torch.Tensor):
        raise ModelscaleError(f"expected a torch.Tensor, got {type(tensor).__name__}")
    if tensor.is_quantized or tensor.is_sparse or tensor.is_complex() or tensor.device.type == "meta":
        raise ModelscaleError(
            f"cannot encode a {tensor.dtype} tensor on {tensor.device} (layout {tensor.layout}); "
            "pass a dense real tensor (dequantize or bake it first)"
        )
    flat = tensor.detach().cpu().contiguous().reshape(-1)
    view = _BIT_VIEWS.get(flat.element_size())
    if view is None:
        raise ModelscaleError(f"cannot encode dtype {tensor.dtype}: no integer view of its width")
    nonzero = (flat != 0).numpy()  # by value: -0.0 (what masking a negative weight gives) is zero
    if flat.dtype == torch.bool:
        flat = flat.to(torch.uint8)
    return flat.view(view).numpy(), nonzero


def _from_bit_pattern(bits: np.ndarray, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    flat = torch.from_numpy(np.ascontiguousarray(bits))
    if dtype == torch.bool:
        return flat.to(torch.bool).reshape(shape)
    return flat.view(dtype).reshape(shape)


def narrowest_index_dtype(largest: int) -> np.dtype:
    """The narrowest signed integer dtype (int16, int32, int64) that holds values 0..largest."""
    for dtype in _INDEX_DTYPES:
        if largest <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    raise ModelscaleError(f"index {largest} does not fit in int64")


@dataclass
class BitmaskEncoding:
    """One bit per element (MSB first, packed) plus the non-zero elements' bit patterns in order."""

    shape: tuple[int, ...]
    dtype: str  # torch dtype name of the original tensor
    mask: np.ndarray  # uint8, ⌈numel / 8⌉ bytes
    values: np.ndarray  # nnz same-width integers (raw bits of the non-zero values)

    @property
    def nbytes(self) -> int:
        return int(self.mask.nbytes + self.values.nbytes)


@dataclass
class CSREncoding:
    """Compressed sparse rows of the tensor viewed as (rows × cols) = (shape[0] × the rest)."""

    shape: tuple[int, ...]
    dtype: str
    rows: int
    cols: int
    row_ptr: np.ndarray  # rows + 1 offsets into col_idx / values (narrowest dtype holding nnz)
    col_idx: np.ndarray  # nnz column indices (narrowest dtype holding cols - 1)
    values: np.ndarray  # nnz same-width integers (raw bits of the non-zero values)

    @property
    def nbytes(self) -> int:
        return int(self.row_ptr.nbytes + self.col_idx.nbytes + self.values.nbytes)


def encode_bitmask(tensor: torch.Tensor) -> BitmaskEncoding:
    """Encode `tensor` as a packed non-zero bitmask plus its non-zero values (exactly invertible)."""
    bits, nonzero = _bit_pattern(tensor)
    return BitmaskEncoding(
        shape=tuple(tensor.shape),
        dtype=_dtype_name(tensor.dtype),
        mask=np.packbits(nonzero),
        values=bits[nonzero].copy(),
    )


def decode_bitmask(encoded: BitmaskEncoding) -> torch.Tensor:
    """The tensor `encode_bitmask` encoded, bit for bit (on CPU)."""
    numel = math.prod(encoded.shape)
    nonzero = np.unpackbits(encoded.mask, count=numel).astype(bool)
    if nonzero.size != numel or int(nonzero.sum()) != encoded.values.size:
        raise ModelscaleError("corrupt bitmask encoding: mask length or set bits do not match the values")
    bits = np.zeros(numel, dtype=encoded.values.dtype)
    bits[nonzero] = encoded.values
    return _from_bit_pattern(bits, _dtype_from_name(encoded.dtype), encoded.shape)


def _matrix_shape(shape: tuple[int, ...]) -> tuple[int, int]:
    numel = math.prod(shape)
    if len(shape) >= 2 and shape[0] > 0:
        return shape[0], numel // shape[0]
    return 1, numel


def encode_csr(tensor: torch.Tensor) -> CSREncoding:
    """Encode `tensor` (viewed as shape[0] × rest; 0-/1-D as one row) in CSR with narrow indices."""
    bits, nonzero = _bit_pattern(tensor)
    rows, cols = _matrix_shape(tuple(tensor.shape))
    matrix = bits.reshape(rows, cols)
    nonzero = nonzero.reshape(rows, cols)
    row_idx, col_idx = np.nonzero(nonzero)  # row-major order, as CSR stores them
    nnz = int(col_idx.size)
    row_ptr = np.zeros(rows + 1, dtype=np.int64)
    np.cumsum(np.bincount(row_idx, minlength=rows), out=row_ptr[1:])
    return CSREncoding(
        shape=tuple(tensor.shape),
        dtype=_dtype_name(tensor.dtype),
        rows=rows,
        cols=cols,
        row_ptr=row_ptr.astype(narrowest_index_dtype(nnz)),
        col_idx=col_idx.astype(narrowest_index_dtype(max(cols - 1, 0))),
        values=matrix[nonzero].copy(),
    )


def decode_csr(encoded: CSREncoding) -> torch.Tensor:
    """The tensor `encode_csr` encoded, bit for bit (on CPU)."""
    counts = np.diff(encoded.row_ptr.astype(np.int64))
    if counts.size != encoded.rows or (counts < 0).any() or int(counts.sum()) != encoded.values.size:
        raise ModelscaleError("corrupt CSR encoding: row pointers do not match the values")
    matrix = np.zeros((encoded.rows, encoded.cols), dtype=encoded.values.dtype)
    rows = np.repeat(np.arange(encoded.rows), counts)
    matrix[rows, encoded.col_idx.astype(np.int64)] = encoded.values
    return _from_bit_pattern(matrix.reshape(-1), _dtype_from_name(encoded.dtype), encoded.shape)


def _check_bits(bits: int) -> None:
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 8:
        raise ModelscaleError(f"bits must be an integer in 1..8, got {bits!r}")


def pack_indices(indices: torch.Tensor | np.ndarray, bits: int) -> np.ndarray:
    """Pack non-negative indices < 2**bits into a uint8 array of ⌈n·bits/8⌉ bytes (MSB first)."""
    _check_bits(bits)
    if isinstance(indices, torch.Tensor):
        indices = indices.detach().cpu().numpy()
    flat = np.asarray(indices).reshape(-1)
    if flat.size and (flat.min() < 0 or flat.max() >= 2**bits):
        raise ModelscaleError(f"indices must lie in [0, {2**bits}) to pack at {bits} bits")
    # Each index as 8 bits (MSB first), keep its low `bits` bits, then pack the bit stream.
    as_bits = np.unpackbits(flat.astype(np.uint8)[:, None], axis=1)[:, 8 - bits :]
    return np.packbits(as_bits.reshape(-1))


def unpack_indices(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    """Inverse of `pack_indices`: the first `count` indices as a uint8 array."""
    _check_bits(bits)
    stream = np.unpackbits(np.asarray(packed, dtype=np.uint8))[: count * bits]
    if stream.size != count * bits:
        raise ModelscaleError(f"packed data holds fewer than {count} indices of {bits} bits")
    padded = np.zeros((count, 8), dtype=np.uint8)
    padded[:, 8 - bits :] = stream.reshape(count, bits)
    return np.packbits(padded, axis=1).reshape(-1)
