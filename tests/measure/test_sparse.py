import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from modelscale.core.apply import apply
from modelscale.core.errors import ModelscaleError
from modelscale.measure.size import effective_state_dict
from modelscale.measure.sparse import (
    SparseStorageReport,
    decode_bitmask,
    decode_csr,
    decode_state,
    encode_bitmask,
    encode_csr,
    encode_state,
    narrowest_index_dtype,
    sparse_storage,
)


def _sparse(shape, sparsity, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g).to(dtype)
    keep = torch.rand(shape, generator=g) >= sparsity
    return x * keep


def _bits_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.dtype == torch.bool:
        return torch.equal(a, b)
    view = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[a.element_size()]
    return torch.equal(a.contiguous().view(view), b.contiguous().view(view))


CASES = [
    ((64, 32), 0.8, torch.float32),
    ((16, 8, 3, 3), 0.5, torch.float32),
    ((7,), 0.3, torch.float64),
    ((5, 13), 0.0, torch.float16),
    ((5, 13), 1.0, torch.bfloat16),
    ((3, 0), 0.5, torch.float32),
    ((), 0.0, torch.float32),
    ((9, 70000), 0.99, torch.float32),  # > int16 columns: int32 indices
]


@pytest.mark.parametrize("shape,sparsity,dtype", CASES)
def test_round_trips_are_exact(shape, sparsity, dtype):
    x = _sparse(shape, sparsity, dtype)  # masking yields -0.0 too: zero by value, decoded as +0.0
    expected = torch.where(x == 0, torch.zeros_like(x), x)
    for enc, dec in ((encode_bitmask, decode_bitmask), (encode_csr, decode_csr)):
        encoded = enc(x)
        assert torch.equal(dec(encoded), x)
        assert _bits_equal(dec(encoded), expected)
        assert encoded.values.size == int((x != 0).sum())


def test_round_trip_keeps_nan_inf_tiny_values_and_ints():
    x = torch.tensor([[0.0, -0.0, float("nan")], [1.5, -2.5e-38, float("-inf")]])
    expected = x.clone()
    expected[0, 1] = 0.0  # -0.0 is zero by value: not stored, decoded as +0.0
    for enc, dec in ((encode_bitmask, decode_bitmask), (encode_csr, decode_csr)):
        encoded = enc(x)
        assert encoded.values.size == 4
        assert _bits_equal(dec(encoded), expected)
    for t in (torch.tensor([0, 3, 0, -7], dtype=torch.int64), torch.tensor([True, False, False, True])):
        assert torch.equal(decode_bitmask(encode_bitmask(t)), t)
        assert torch.equal(decode_csr(encode_csr(t)), t)


def test_bytes_are_the_buffers_and_formula():
    x = _sparse((64, 32), 0.8)
    nnz = int((x != 0).sum())
    bm = encode_bitmask(x)
    assert bm.nbytes == math.ceil(x.numel() / 8) + 4 * nnz == bm.mask.nbytes + bm.values.nbytes
    csr = encode_csr(x)
    assert csr.col_idx.dtype == np.int16 and csr.row_ptr.dtype == np.int16
    assert csr.nbytes == 2 * (64 + 1) + 2 * nnz + 4 * nnz


def test_narrowest_index_dtype():
    assert narrowest_index_dtype(0) == np.int16
    assert narrowest_index_dtype(32767) == np.int16
    assert narrowest_index_dtype(32768) == np.int32
    assert narrowest_index_dtype(2**31) == np.int64
    assert encode_csr(torch.ones(2, 40000)).col_idx.dtype == np.int32
    assert encode_csr(torch.ones(2, 40000)).row_ptr.dtype == np.int32  # nnz = 80000


def test_corrupt_encoding_is_rejected():
    bm = encode_bitmask(_sparse((8, 8), 0.5))
    bm.values = bm.values[:-1]
    with pytest.raises(ModelscaleError):
        decode_bitmask(bm)
    with pytest.raises(ModelscaleError):
        encode_csr(torch.zeros(3, dtype=torch.complex64))


def test_eighty_percent_sparse_layer_bitmask_below_a_third_of_dense():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 128, bias=False))
    pruned = apply(model, {"type": "magnitude_prune", "amount": 0.8}).model
    report = sparse_storage(pruned)
    (row,) = report.tensors
    assert row.sparsity == pytest.approx(0.8, abs=1e-3)
    assert row.bitmask_bytes < row.dense_bytes / 3
    assert row.best in ("bitmask", "csr") and row.best_bytes < row.dense_bytes / 3
    assert report.compression > 3.0
    # The counted bytes reconstruct the masked weight exactly.
    encoded = encode_state(effective_state_dict(pruned))
    assert torch.equal(decode_state(encoded)["0.weight"], pruned[0].weight)
    assert encoded["0.weight"].nbytes == row.best_bytes


def test_dense_layer_claims_no_saving():
    torch.manual_seed(0)
    report = sparse_storage(nn.Sequential(nn.Linear(64, 32), nn.BatchNorm1d(32)))
    assert report.nnz > 0
    for row in report.tensors:
        if row.nnz == row.numel:
            assert row.best == "dense" and row.best_bytes == row.dense_bytes
            assert row.bitmask_bytes > row.dense_bytes and row.csr_bytes > row.dense_bytes
    linear = next(r for r in report.tensors if r.name == "0.weight")
    assert linear.sparsity == 0.0
    dense_rows = [r for r in report.tensors if r.nnz == r.numel]
    assert sum(r.best_bytes for r in dense_rows) == sum(r.dense_bytes for r in dense_rows)
    assert report.best_uniform == "dense"


def test_fully_dense_model_compression_is_one():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 16), nn.Linear(16, 4))
    report = sparse_storage(model)
    assert report.compression == 1.0 and report.best_bytes == report.dense_bytes
    assert report.dense_bytes == 4 * sum(p.numel() for p in model.parameters())


def test_to_dict_is_json_safe_and_round_trips():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3), nn.Flatten(), nn.Linear(8 * 6 * 6, 10))
    pruned = apply(model, {"type": "magnitude_prune", "amount": 0.9}).model
    report = sparse_storage(pruned)
    data = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    back = SparseStorageReport.from_dict(data)
    assert back.best_bytes == report.best_bytes
    assert [r.name for r in back.tensors] == [r.name for r in report.tensors]
    conv = next(r for r in back.tensors if r.name == "0.weight")
    assert conv.sparsity == pytest.approx(0.9, abs=0.02)
    assert {r["best"] for r in data["tensors"]} <= {"dense", "bitmask", "csr"}


def test_tied_tensors_counted_once():
    a = nn.Linear(8, 8, bias=False)
    model = nn.Sequential(a, nn.Linear(8, 8, bias=False))
    model[1].weight = a.weight
    assert len(sparse_storage(model).tensors) == 1
