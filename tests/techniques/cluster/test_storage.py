"""Packed storage of clustered weights: exact round trips and byte counts that match real arrays."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from modelscale.core.apply import apply
from modelscale.core.errors import ModelscaleError
from modelscale.techniques.cluster.kmeans import WeightClusterConfig
from modelscale.techniques.cluster.storage import (
    codebook_bytes,
    export_packed,
    pack_indices,
    unpack_indices,
)


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("count", [1, 7, 13, 1000])
def test_pack_round_trip_is_exact(bits, count):
    rng = np.random.default_rng(bits * 100 + count)
    indices = rng.integers(0, 2**bits, size=count, dtype=np.uint8)
    packed = pack_indices(torch.from_numpy(indices), bits)
    assert packed.dtype == np.uint8 and packed.size == math.ceil(count * bits / 8)
    assert np.array_equal(unpack_indices(packed, bits, count), indices)


def test_pack_layout_is_msb_first():
    assert pack_indices(np.array([1, 2, 3, 0]), 2).tolist() == [0b01101100]
    assert pack_indices(np.array([5]), 3).tolist() == [0b10100000]


def test_pack_rejects_out_of_range():
    with pytest.raises(ModelscaleError):
        pack_indices(np.array([4]), 2)
    with pytest.raises(ModelscaleError):
        unpack_indices(np.zeros(1, dtype=np.uint8), 4, 3)


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_packed_bytes_are_bits_over_32_plus_codebook(bits):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(100, 60), nn.Conv2d(3, 16, 3))
    result = apply(model, WeightClusterConfig(bits=bits))
    total_dense = total_packed = 0
    for row in result.record.layers:
        layer = result.model.get_submodule(row["name"])
        sizes = codebook_bytes(layer)
        numel = layer.weight.numel()
        assert sizes["dense_bytes"] == 4 * numel
        assert sizes["codebook_bytes"] == 4 * 2**bits
        assert sizes["packed_bytes"] == math.ceil(numel * bits / 8) + 4 * 2**bits
        assert sizes["packed_bytes"] == pytest.approx(bits / 32 * sizes["dense_bytes"] + 4 * 2**bits, abs=1)
        assert codebook_bytes(layer, codebook_dtype="float16")["codebook_bytes"] == 2 * 2**bits
        # The figure is the length of the real packed stream, which rebuilds the weight exactly.
        packed = export_packed(layer)
        assert packed["indices"].size == sizes["index_bytes"]
        idx = unpack_indices(packed["indices"], bits, numel).astype(np.int64)
        rebuilt = torch.from_numpy(packed["codebook"][0][idx]).reshape(layer.weight.shape)
        assert torch.equal(rebuilt, layer.weight.detach())
        assert row["packed_bytes"] == sizes["packed_bytes"] and row["dense_bytes"] == sizes["dense_bytes"]
        total_dense, total_packed = total_dense + sizes["dense_bytes"], total_packed + sizes["packed_bytes"]
    summary = result.record.summary
    assert summary["dense_bytes"] == total_dense and summary["packed_bytes"] == total_packed
    assert summary["packed_bytes"] < summary["dense_bytes"]


def test_codebook_bytes_needs_a_clustered_layer():
    with pytest.raises(ModelscaleError, match="not clustered"):
        codebook_bytes(nn.Linear(2, 2))
