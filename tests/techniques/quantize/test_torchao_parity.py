"""Parity with an independent implementation: torchao's affine quantization primitives (if installed)."""

from __future__ import annotations

import warnings

import pytest
import torch

from modelscale.techniques.quantize.common import quantize_groups

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    qp = pytest.importorskip("torchao.quantization.quant_primitives")


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("symmetric", [True, False])
def test_codes_scales_and_zero_points_equal_torchao(bits, symmetric):
    w = torch.randn(32, 128)
    group = 32
    if symmetric:
        mapping, qmin, qmax = qp.MappingType.SYMMETRIC, -(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1
    else:
        mapping, qmin, qmax = qp.MappingType.ASYMMETRIC, 0, 2**bits - 1
    scale, zero = qp.choose_qparams_affine(
        w, mapping, (1, group), torch.int32, qmin, qmax,
        eps=torch.finfo(torch.float32).tiny, scale_dtype=torch.float32, zero_point_dtype=torch.int32,
    )  # fmt: skip
    codes = qp.quantize_affine(w, (1, group), scale, zero, torch.int32, qmin, qmax)

    q, s, z = quantize_groups(w, bits=bits, group_size=group, symmetric=symmetric)
    assert torch.equal(q.to(torch.int32), codes)
    assert torch.equal(s, scale.view(32, -1))
    if not symmetric:
        assert torch.equal(z.to(torch.int32), zero.view(32, -1))
