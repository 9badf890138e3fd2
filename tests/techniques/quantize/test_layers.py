"""Quantized layers: exact invariants against reference formulas, kernels against references, round trips."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from modelscale import load_compressed, save_compressed
from modelscale.core.apply import apply
from modelscale.core.errors import ModelscaleError
from modelscale.techniques.quantize.cast import CastConfig, CastLayer
from modelscale.techniques.quantize.common import (
    QuantizedLayer,
    int_mm_available,
    quantized_bytes,
    safetensors_tensor_bytes,
    unpack_int4,
)
from modelscale.techniques.quantize.dynamic_int8 import DynamicInt8Config, DynamicInt8Linear
from modelscale.techniques.quantize.weight_only import WeightOnlyConfig, WeightOnlyLayer
from tests.contract.tiny_models import inputs_for, tiny_cnn, tiny_transformer


def mlp(hidden=96):
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, 10)).eval()  # fmt: skip


# --- dynamic int8 ---------------------------------------------------------------------------------------
def test_dynamic_int8_matches_the_reference_formula():
    lin = nn.Linear(48, 24)
    layer = DynamicInt8Linear(lin, kernel="simulated")
    s_w = lin.weight.detach().abs().amax(1) / 127
    assert torch.equal(layer.qweight, torch.round(lin.weight.detach() / s_w[:, None]).to(torch.int8))
    assert torch.equal(layer.weight, layer.qweight.float() * layer.scale[:, None])
    x = torch.randn(2, 5, 48)
    rows = x.reshape(-1, 48)
    s_x = rows.abs().amax(1, keepdim=True) / 127
    xq = torch.round(rows * (127 / rows.abs().amax(1, keepdim=True)))
    reference = (
        xq.double() @ layer.qweight.double().t()
    ) * s_x.double() * layer.scale.double() + lin.bias.double()
    torch.testing.assert_close(layer(x), reference.view(2, 5, 24).float(), rtol=1e-5, atol=1e-5)
    assert layer(x.to(torch.bfloat16)).dtype == torch.bfloat16


@pytest.mark.skipif(not int_mm_available("cpu"), reason="torch._int_mm does not run on this CPU/torch")
@pytest.mark.parametrize("rows", [1, 3, 32])
def test_int_mm_kernel_equals_simulated_path(rows):
    lin = nn.Linear(256, 80)
    real, simulated = DynamicInt8Linear(lin, kernel="int_mm"), DynamicInt8Linear(lin, kernel="simulated")
    x = torch.randn(rows, 256)
    xq = torch.randint(-127, 128, (rows, 256), dtype=torch.int8)
    # integer sums below 2^24 are exact in float32, so the two paths give identical accumulators
    acc = real.int_matmul(xq)
    assert acc.dtype == torch.int32  # the int8 kernel really ran
    assert torch.equal(acc.to(torch.float32), simulated.int_matmul(xq))
    assert torch.equal(real(x), simulated(x))


def test_dynamic_int8_targets_linear_only_and_keeps_excluded_layers_float():
    model = mlp()
    result = apply(model, DynamicInt8Config(target={"exclude": ["1", "5"]}))  # first and last Linear
    q = result.model
    assert isinstance(q[3], DynamicInt8Linear)
    assert type(q[1]) is nn.Linear and type(q[5]) is nn.Linear
    assert torch.equal(q[1].weight, model[1].weight) and torch.equal(q[5].weight, model[5].weight)
    assert [r["name"] for r in result.record.layers] == ["3"]
    cnn = apply(tiny_cnn(), DynamicInt8Config(target={"types": ["Linear", "Conv2d"]})).model
    assert type(cnn[0]) is nn.Conv2d and isinstance(cnn[8], DynamicInt8Linear)
    with pytest.raises(ModelscaleError, match="kernel"):
        DynamicInt8Config(kernel="fast")


# --- weight only ----------------------------------------------------------------------------------------
def reference_dequant(layer: WeightOnlyLayer) -> torch.Tensor:
    """Dequantize from the stored buffers by hand: unpack nibbles, subtract zero (or 8), times the scale."""
    q = layer.qweight.to(torch.int32)
    if layer.bits == 4:
        q = torch.stack((q & 15, q >> 4), -1).flatten(-2)
        if layer.symmetric:
            q = q - 8
    q = q[:, : layer.in_features]
    out = torch.empty(q.shape)
    for g in range(math.ceil(layer.in_features / layer.group)):
        cols = slice(g * layer.group, (g + 1) * layer.group)
        z = 0 if layer.zero_point is None else layer.zero_point[:, g : g + 1].float()
        out[:, cols] = (q[:, cols].float() - z) * layer.scale[:, g : g + 1].float()
    return out.reshape(layer.geometry["weight_shape"])


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("group", [0, 32])
def test_weight_only_stores_what_it_says_and_dequantizes_exactly(bits, symmetric, group):
    lin = nn.Linear(72, 20)  # 72 = 2 groups of 32 + a shorter one of 8
    layer = WeightOnlyLayer(lin, bits=bits, group_size=group, symmetric=symmetric)
    groups = 1 if group == 0 else 3
    assert layer.qweight.shape == (20, 72 * bits // 8)  # nothing padded is stored
    assert layer.qweight.dtype == (torch.int8 if bits == 8 and symmetric else torch.uint8)
    assert layer.scale.shape == (20, groups)
    assert (layer.zero_point is None) == symmetric
    assert torch.equal(layer.weight, reference_dequant(layer))
    x = torch.randn(3, 72)
    torch.testing.assert_close(layer(x), F.linear(x, reference_dequant(layer), lin.bias), rtol=0, atol=0)
    if bits == 4 and symmetric:
        assert int(unpack_int4(layer.qweight).min()) >= 1  # codes -7..7 stored as 1..15
    # bytes: codes + scales (+ zero points) + bias, exactly
    expected = 20 * 72 * bits // 8 + 20 * groups * 4 + (0 if symmetric else 20 * groups) + 20 * 4
    assert layer.storage_bytes() == expected


def test_weight_only_conv2d_and_scale_dtype():
    conv = nn.Conv2d(3, 8, 3, padding=1, stride=2)
    layer = WeightOnlyLayer(conv, bits=4, group_size=0, symmetric=False, scale_dtype="bfloat16")
    assert layer.scale.dtype == torch.bfloat16 and layer.qweight.shape == (8, 14)  # 27 values padded to 28
    x = torch.randn(2, 3, 9, 9)
    assert torch.equal(layer(x), F.conv2d(x, reference_dequant(layer), conv.bias, 2, 1))


@pytest.mark.parametrize(("bits", "group", "symmetric"), [(8, 0, True), (4, 32, False), (4, 64, True)])
def test_aten_weight_only_kernels_match_the_reference(bits, group, symmetric):
    lin = nn.Linear(128, 32)
    layer = WeightOnlyLayer(lin, bits=bits, group_size=group, symmetric=symmetric, kernel="torch", tune_ms=5)
    if layer.kernel != "torch":
        pytest.skip(f"ATen kernel not usable here: {layer.torch_kernel_problem()}")
    x = torch.randn(5, 128)
    reference = F.linear(x, reference_dequant(layer), lin.bias)
    # bf16/fp16 activations round x and y (8 significant bits: ~3e-3 typical); float32 ones agree to 1e-4
    low = any(not c["path"].endswith("fp32") for c in layer.choices)
    error = (layer(x) - reference).norm() / reference.norm()
    assert error <= (1e-2 if low else 1e-4)


def test_aten_kernel_falls_back_with_a_note_where_a_layer_does_not_fit():
    result = apply(mlp(), WeightOnlyConfig(bits=8, group_size=40, kernel="torch", tune_ms=5))
    assert all(r["kernel"] == "dequant" for r in result.record.layers)
    assert any("not a multiple of the group size" in note for note in result.record.notes)


def test_weight_only_per_layer_overrides_give_mixed_precision():
    config = WeightOnlyConfig(
        bits=4, group_size=32, target={"exclude": ["1"], "overrides": {"5": {"bits": 8}}}
    )
    q = apply(mlp(), config).model
    assert type(q[1]) is nn.Linear
    assert (q[3].bits, q[5].bits) == (4, 8)
    with pytest.raises(ModelscaleError, match="group_size"):
        WeightOnlyConfig(group_size=33)
    with pytest.raises(ModelscaleError, match="bits"):
        WeightOnlyConfig(bits=3)


# --- cast -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_casts_store_the_rounded_weight_and_compose_in_float32(dtype):
    lin = nn.Linear(40, 12)
    layer = CastLayer(lin, dtype=dtype)
    torch_dtype = getattr(torch, dtype)
    assert torch.equal(layer.qweight, lin.weight.detach().to(torch_dtype))
    x = torch.randn(3, 40)
    out = layer(x)
    assert out.dtype == torch.float32
    assert torch.equal(out, F.linear(x.to(torch_dtype), layer.qweight, lin.bias.to(torch_dtype)).float())


@pytest.mark.parametrize("granularity", ["channel", "tensor"])
def test_fp8_e4m3_dequantizes_exactly_and_keeps_its_error_floor(granularity):
    conv = nn.Conv2d(4, 6, 3)
    layer = CastLayer(conv, dtype="float8_e4m3", fp8_scale=granularity)
    w = conv.weight.detach()
    amax = w.flatten(1).abs().amax(1) if granularity == "channel" else w.abs().amax().reshape(1)
    scale = amax / 448.0
    assert torch.equal(layer.scale, scale)
    assert layer.qweight.dtype == torch.float8_e4m3fn
    expected = (w.flatten(1) / scale[:, None]).to(torch.float8_e4m3fn).float() * scale[:, None]
    assert torch.equal(layer.weight, expected.view_as(w))
    noise = (layer.weight - w).pow(2).sum() / w.pow(2).sum()
    assert 10 * math.log10(1 / noise.item()) > 25  # e4m3: 3 mantissa bits, ~30 dB


# --- round trips and sizes ------------------------------------------------------------------------------
CONFIGS = [
    DynamicInt8Config(),
    WeightOnlyConfig(bits=8, group_size=0),
    WeightOnlyConfig(bits=4, group_size=32, symmetric=False, scale_dtype="float16"),
    CastConfig(dtype="bfloat16"),
    CastConfig(dtype="float8_e4m3", fp8_scale="tensor"),
]


@pytest.mark.parametrize(
    "config", CONFIGS, ids=lambda c: f"{c.type}-{getattr(c, 'bits', getattr(c, 'dtype', ''))}"
)
def test_save_reload_round_trip_is_exact_and_the_file_shrinks(config, tmp_path):
    model = tiny_transformer().eval()
    x, _ = inputs_for("transformer")
    result = apply(model, config)
    save_compressed(tmp_path / "q", result.model, [result.record])
    save_compressed(tmp_path / "f", model, [])
    reloaded = load_compressed(tmp_path / "q", tiny_transformer()).eval()
    assert torch.equal(reloaded(x), result.model(x))
    for name, module in result.model.named_modules():
        if isinstance(module, QuantizedLayer):
            other = reloaded.get_submodule(name)
            assert type(other) is type(module) and other.format == module.format
            assert all(torch.equal(a, b) for a, b in zip(module.buffers(), other.buffers()))
    # the tensors of the quantized layers in the file are as many bytes as quantized_bytes counts
    quantized = {r["name"] for r in result.record.layers}
    stored = safetensors_tensor_bytes(tmp_path / "q" / "model.safetensors")
    in_file = sum(n for key, n in stored.items() if key.rpartition(".")[0] in quantized)
    sizes = quantized_bytes(result.model)
    assert in_file == sizes["quantized_bytes"] == result.record.summary["quantized_bytes"]
    assert sum(stored.values()) == sizes["total_bytes"]
    float_file = (tmp_path / "f" / "model.safetensors").stat().st_size
    assert (tmp_path / "q" / "model.safetensors").stat().st_size < float_file


def test_quantized_bytes_counts_int4_packed_with_scales_and_zero_points():
    model = mlp(hidden=128)
    q = apply(model, WeightOnlyConfig(bits=4, group_size=32, symmetric=False)).model
    sizes = quantized_bytes(q)
    # per Linear: packed codes (half a byte each) + per group a float32 scale and a uint8 zero + bias
    expected = 0
    for out_f, in_f in [(128, 64), (128, 128), (10, 128)]:
        groups = in_f // 32
        expected += out_f * in_f // 2 + out_f * groups * (4 + 1) + out_f * 4
    assert sizes["quantized_bytes"] == expected
    assert sizes["total_bytes"] == expected  # nothing else in this model
    assert sizes["float32_bytes"] == sum(p.numel() * 4 for p in model.parameters())
    assert sizes["quantized_ratio"] > 5.5


def test_quantizing_a_pruned_model_keeps_pruned_weights_exactly_zero():
    from modelscale.techniques.prune.magnitude import MagnitudePruneConfig

    pruned = apply(mlp(), MagnitudePruneConfig(amount=0.5)).model
    for config in (WeightOnlyConfig(bits=4, group_size=32, symmetric=False), DynamicInt8Config()):
        q = apply(pruned, config).model
        for i in (1, 3, 5):
            zeros = pruned[i].weight == 0
            assert zeros.float().mean() >= 0.49
            assert (q[i].weight[zeros] == 0).all()


def test_aten_int4_kernel_repacks_after_codes_are_loaded_in_place():
    a = WeightOnlyLayer(nn.Linear(64, 32), bits=4, group_size=32, symmetric=True, kernel="torch")
    if a.kernel != "torch":
        pytest.skip(f"ATen kernel not usable here: {a.torch_kernel_problem()}")
    b = WeightOnlyLayer(nn.Linear(64, 32), bits=4, group_size=32, symmetric=True, kernel="torch")
    x = torch.randn(2, 64)
    b(x)  # packs b's own codes
    b.load_state_dict(a.state_dict())
    torch.testing.assert_close(b(x), a(x), rtol=0, atol=0)
