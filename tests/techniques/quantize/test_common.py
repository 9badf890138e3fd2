"""Quantization math against naive references, error floors (SQNR) and exact byte accounting."""

from __future__ import annotations

import math
import sys

import pytest
import torch

from modelscale.core.errors import ModelscaleError
from modelscale.techniques.quantize.common import (
    dequantize_groups,
    pack_int4,
    quantize_groups,
    quantize_rows_int8,
    require_torchao,
    sqnr_db,
    unpack_int4,
)


def naive_quantize(w, bits, group, symmetric):
    """Element-by-group loop reference for `quantize_groups` (same rounding rule: half to even)."""
    rows, cols = w.shape
    padded = math.ceil(cols / group) * group
    wp = torch.zeros(rows, padded)
    wp[:, :cols] = w
    q = torch.zeros(rows, padded, dtype=torch.int16)
    scales = torch.zeros(rows, padded // group)
    zeros = torch.zeros(rows, padded // group, dtype=torch.uint8)
    for r in range(rows):
        for gi in range(padded // group):
            chunk = wp[r, gi * group : (gi + 1) * group]
            if symmetric:
                qmax = 2 ** (bits - 1) - 1
                s = max(float(chunk.abs().max()) / qmax, torch.finfo(torch.float32).tiny)
                s = torch.tensor(s, dtype=torch.float32)
                codes = torch.clamp(torch.round(chunk / s), -qmax, qmax)
            else:
                levels = 2**bits - 1
                lo, hi = min(float(chunk.min()), 0.0), max(float(chunk.max()), 0.0)
                s = torch.tensor(
                    max((hi - lo) / levels, torch.finfo(torch.float32).tiny), dtype=torch.float32
                )
                z = torch.clamp(torch.round(torch.tensor(-lo, dtype=torch.float32) / s), 0, levels)
                codes = torch.clamp(torch.round(chunk / s) + z, 0, levels)
                zeros[r, gi] = int(z)
            q[r, gi * group : (gi + 1) * group] = codes.to(torch.int16)
            scales[r, gi] = s
    return q, scales, (None if symmetric else zeros)


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("group", [0, 16])
def test_quantize_groups_matches_naive_reference(bits, symmetric, group):
    w = torch.randn(6, 40)  # 40 is not a multiple of 16: the last group is zero-padded
    q, scale, zero = quantize_groups(w, bits=bits, group_size=group, symmetric=symmetric)
    g = 40 if group == 0 else group
    rq, rs, rz = naive_quantize(w, bits, g, symmetric)
    assert torch.equal(q, rq[:, :40])
    assert torch.allclose(scale, rs, rtol=1e-6, atol=0)
    if symmetric:
        assert zero is None
    else:
        assert torch.equal(zero, rz)
    # (q - z) * s exactly, with the padding cut off
    z = 0 if zero is None else zero.float().repeat_interleave(g, dim=1)
    reference = ((rq.float() - z) * scale.repeat_interleave(g, dim=1))[:, :40]
    assert torch.equal(dequantize_groups(q, scale, zero, group_size=g), reference)


def test_pack_int4_round_trip_and_nibble_order():
    q = torch.randint(0, 16, (5, 12), dtype=torch.int16)
    packed = pack_int4(q)
    assert packed.dtype == torch.uint8 and packed.shape == (5, 6)
    assert int(packed[0, 0]) == int(q[0, 0]) | (int(q[0, 1]) << 4)
    assert torch.equal(unpack_int4(packed).to(torch.int16), q)
    with pytest.raises(ModelscaleError, match="values in"):
        pack_int4(torch.full((1, 2), 16))
    with pytest.raises(ModelscaleError, match="even"):
        pack_int4(torch.zeros(1, 3))


@pytest.mark.parametrize(
    ("bits", "group", "symmetric", "floor"),
    [
        (8, 0, True, 35.0),
        (8, 128, True, 35.0),
        (8, 128, False, 35.0),
        (4, 32, True, 15.0),
        (4, 32, False, 15.0),
    ],
)
def test_sqnr_floor_on_gaussian_weights(bits, group, symmetric, floor):
    w = torch.randn(256, 512)
    q, scale, zero = quantize_groups(w, bits=bits, group_size=group, symmetric=symmetric)
    db = sqnr_db(w, dequantize_groups(q, scale, zero, group_size=group))
    assert db >= floor, db
    # more bits or smaller groups are never worse on the same weights
    if bits == 4:
        q8, s8, z8 = quantize_groups(w, bits=8, group_size=group, symmetric=symmetric)
        assert sqnr_db(w, dequantize_groups(q8, s8, z8, group_size=group)) > db + 20


def test_scale_dtype_is_the_scale_used():
    w = torch.randn(4, 64)
    q, scale, _ = quantize_groups(w, bits=8, group_size=32, symmetric=True, scale_dtype=torch.bfloat16)
    assert scale.dtype == torch.bfloat16
    # the codes were computed with the rounded (bfloat16) scale, so they stay in range and invert well
    assert int(q.abs().max()) <= 127
    assert sqnr_db(w, dequantize_groups(q, scale, None, group_size=32)) > 35


def test_dynamic_row_quantization():
    x = torch.randn(7, 33) * torch.linspace(0.01, 100, 7)[:, None]  # rows of very different ranges
    q, s = quantize_rows_int8(x)
    assert q.dtype == torch.int8 and s.shape == (7, 1)
    assert (q.abs().amax(1) == 127).all()  # each row uses its full range
    assert sqnr_db(x, q.float() * s) > 35
    zero_q, _ = quantize_rows_int8(torch.zeros(2, 5))
    assert torch.equal(zero_q, torch.zeros(2, 5, dtype=torch.int8))


def test_sqnr_is_inf_for_exact_copy():
    w = torch.randn(10)
    assert sqnr_db(w, w.clone()) == math.inf
    assert sqnr_db(w, w + 0.1 * w) == pytest.approx(20.0, abs=1e-5)


def test_torchao_is_optional_with_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchao", None)  # as if it were not installed
    with pytest.raises(ModelscaleError, match=r"pip install modelscale\[quant\]"):
        require_torchao()
