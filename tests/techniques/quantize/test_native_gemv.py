"""Our AVX-512 int8 weight-only kernel: parity with a float64 reference, shapes, and a clean refusal."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from modelscale.techniques.quantize import kernels, native_gemv
from modelscale.techniques.quantize.weight_only import WeightOnlyLayer

needs_kernel = pytest.mark.skipif(
    native_gemv.unavailable() is not None, reason=f"kernel unavailable: {native_gemv.unavailable()}"
)


def _reference(x, w, s, group):
    n, k = w.shape
    wf = (w.double().view(n, k // group, group) * s.double()[..., None]).view(n, k)
    return x.double() @ wf.t()


def _rel(a, b):
    return float((a.double() - b).norm() / b.norm())


@needs_kernel
@pytest.mark.parametrize(
    ("m", "n", "k", "group"),
    [
        (1, 64, 128, 128),
        (3, 61, 256, 64),
        (5, 130, 4096, 4096),
        (2, 17, 4096, 128),
        (1, 8, 6144, 6144),
        (4, 9, 192, 192),
        (3, 13, 256, 32),  # groups of 32: two group scales per 64-feature chunk
        (1, 64, 4096, 32),
    ],
)
def test_kernel_matches_float64_within_16_bit_activation_rounding(m, n, k, group):
    g = torch.Generator().manual_seed(n * k)
    w = torch.randint(-127, 128, (n, k), dtype=torch.int8, generator=g)
    s = torch.rand(n, k // group, generator=g) + 0.1
    x = torch.randn(m, k, generator=g)
    x[0, :7] *= 50.0  # an outlier chunk: its scale is its own, the rest keep their precision
    packed = native_gemv.pack_int8_rows(w)
    assert packed.shape == (n + (-n % 4), k) and torch.equal(native_gemv.unpack_int8_rows(packed, n), w)
    got = native_gemv.int8_gemv(x, packed, s, group)
    assert got.shape == (m, n) and got.dtype == torch.float32
    err = _rel(got, _reference(x, w, s, group))
    bf16 = _rel(_reference(x.bfloat16().float(), w, s, group).float(), _reference(x, w, s, group))
    assert err < 2e-4 and err < bf16 / 10  # far more precise than bf16 activations, outlier included


@needs_kernel
def test_chunks_are_at_most_256_features_and_bad_shapes_are_refused():
    assert native_gemv.chunk_size(11008, 11008) == 256  # per-channel weights: activations per 256
    assert native_gemv.chunk_size(4800, 4800) == 192
    assert native_gemv.chunk_size(4096, 4096) == 256
    assert native_gemv.chunk_size(4096, 128) == 128
    assert native_gemv.chunk_size(4800, 192) == 192
    assert native_gemv.chunk_size(4096, 32) == 64  # groups of 32: two scales per chunk
    assert native_gemv.chunk_size(96, 32) is None  # ... whose chunks need in_features % 64 == 0
    assert native_gemv.chunk_size(4096, 96) is None
    assert native_gemv.chunk_size(100, 100) is None
    assert "multiple of 64" in native_gemv.shape_problem(100, 100)
    w = torch.zeros(4, 100, dtype=torch.uint8)
    with pytest.raises(ValueError, match="multiple of 64"):
        native_gemv.int8_gemv(torch.zeros(1, 100), w, torch.ones(4, 1), 100)
    with pytest.raises(TypeError, match="float32 x"):
        native_gemv.int8_gemv(torch.zeros(1, 64, dtype=torch.float64), w[:, :64], torch.ones(4, 1), 64)


def test_a_missing_compiler_is_a_reason_not_an_error(monkeypatch, tmp_path):
    monkeypatch.setenv("MODELSCALE_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    native_gemv._library.cache_clear()
    try:
        why = native_gemv.unavailable()
        assert why is not None and ("failed" in why or "AVX-512" in why)
        layer = WeightOnlyLayer(nn.Linear(64, 32), bits=8, group_size=0, symmetric=True)
        paths, skipped = kernels.candidate_paths(layer, torch.device("cpu"))
        assert "int8_avx512" not in [p.name for p in paths] and skipped["int8_avx512"] == why
    finally:
        native_gemv._library.cache_clear()


@needs_kernel
@pytest.mark.parametrize(("group", "symmetric"), [(0, True), (64, False)])
def test_the_kernel_path_computes_the_weight_only_layer_and_gives_its_codes_back(group, symmetric):
    torch.manual_seed(3)
    lin = nn.Linear(256, 96)
    layer = WeightOnlyLayer(lin, bits=8, group_size=group, symmetric=symmetric)  # dequant: the reference
    x = torch.randn(4, 256)
    reference = x @ layer.dequantize().t() + lin.bias
    path = next(p for p in kernels.candidate_paths(layer, torch.device("cpu"))[0] if p.name == "int8_avx512")
    layout = kernels.build_layout(layer, path.layout, torch.device("cpu"))
    assert kernels.check_path(layer, path, layout) is None
    assert torch.equal(
        layout.codes(), layer.codes().to(layout.codes().dtype)
    )  # invertible: one copy suffices
    got = layout.run(x, path.dtype) + lin.bias
    assert _rel(got, reference.double()) < 1e-4


@needs_kernel
@pytest.mark.parametrize(
    ("m", "n", "k", "group", "offset"),
    [
        (1, 64, 128, 64, 8),
        (3, 61, 256, 64, 0),
        (2, 9, 4096, 128, 8),
        (3, 10, 512, 32, 8),
        (1, 8, 4096, 32, 0),
    ],
)
def test_int4_kernel_matches_float64_and_its_layout_round_trips(m, n, k, group, offset):
    g = torch.Generator().manual_seed(k + n)
    nibbles = torch.randint(0, 16, (n, k), dtype=torch.uint8, generator=g)
    packed = native_gemv.pack_int4_rows(nibbles)
    assert packed.shape == (n + (-n % 4), k // 2)
    assert torch.equal(native_gemv.unpack_int4_rows(packed, n), nibbles)
    flat = (
        packed.flatten()
    )  # the documented layout: per 64 features of a 4-row block, rows (0, 1) then (2, 3)
    assert torch.equal(flat[:64], nibbles[0, :64] | (nibbles[1, :64] << 4))
    assert torch.equal(flat[64:128], nibbles[2, :64] | (nibbles[3, :64] << 4))
    assert torch.equal(flat[128:192], nibbles[0, 64:128] | (nibbles[1, 64:128] << 4))
    s = torch.rand(n, k // group, generator=g) + 0.1
    x = torch.randn(m, k, generator=g)
    got = native_gemv.int4_gemv(x, packed, s, group, offset)
    wf = ((nibbles.double() - offset).view(n, k // group, group) * s.double()[..., None]).view(n, k)
    assert _rel(got, x.double() @ wf.t()) < 2e-4


@needs_kernel
@pytest.mark.parametrize(
    ("bits", "group", "symmetric"),
    [(4, 64, True), (4, 128, False), (8, 0, False), (4, 32, False), (8, 32, True)],
)
def test_both_kernel_paths_compute_the_weight_only_layer(bits, group, symmetric):
    torch.manual_seed(4)
    layer = WeightOnlyLayer(nn.Linear(128, 48), bits=bits, group_size=group, symmetric=symmetric)
    name = f"int{bits}_avx512"
    path = next(p for p in kernels.candidate_paths(layer, torch.device("cpu"))[0] if p.name == name)
    layout = kernels.build_layout(layer, path.layout, torch.device("cpu"))
    x = torch.randn(5, 128)
    assert _rel(layout.run(x, path.dtype), (x @ layer.dequantize().t()).double()) < 1e-4
    assert kernels.check_path(layer, path, layout) is None
    want = layer.stored_qweight() if bits == 8 else None
    if bits == 8:
        assert torch.equal(layout.codes(), want)
    else:  # the canonical nibbles (symmetric codes carry their +8)
        from modelscale.techniques.quantize.weight_only import unpack_int4

        assert torch.equal(layout.codes(), unpack_int4(layer.stored_qweight())[:, :128])


@needs_kernel
@pytest.mark.parametrize("bits", [8, 4])
def test_codes_given_back_own_their_storage_when_rows_are_padded(bits):
    # 10 output rows: the kernel pads its layout to 12; codes that kept the padded storage made
    # safetensors refuse to save the model (seen on mobilenet_v2's 10-class head)
    torch.manual_seed(5)
    layer = WeightOnlyLayer(nn.Linear(64, 10), bits=bits, group_size=64, symmetric=True)
    path = next(
        p for p in kernels.candidate_paths(layer, torch.device("cpu"))[0] if p.name == f"int{bits}_avx512"
    )
    codes = kernels.build_layout(layer, path.layout, torch.device("cpu")).codes()
    assert codes.shape[0] == 10
    assert codes.untyped_storage().nbytes() == codes.numel() * codes.element_size()


@needs_kernel
@pytest.mark.parametrize(("bits", "group"), [(8, 64), (4, 64), (8, 32), (4, 32)])
def test_zero_term_bias_and_leading_dimensions_are_computed_inside_the_kernel(bits, group):
    g = torch.Generator().manual_seed(bits + group)
    n, k = 13, 256
    s = torch.rand(n, k // group, generator=g) + 0.1
    z = torch.randint(0, 16 if bits == 4 else 256, (n, k // group), generator=g).float()
    bias = torch.randn(n, generator=g)
    x = torch.randn(2, 3, k, generator=g)
    if bits == 8:
        u = torch.randint(0, 256, (n, k), generator=g)  # asymmetric uint8 codes
        got = native_gemv.int8_gemv(x, native_gemv.pack_int8_rows((u - 128).to(torch.int8)), s, group,
                                    (s * (z - 128)).contiguous(), bias)  # fmt: skip
    else:
        u = torch.randint(0, 16, (n, k), generator=g)
        got = native_gemv.int4_gemv(
            x, native_gemv.pack_int4_rows(u.to(torch.uint8)), s, group, 0, (s * z).contiguous(), bias
        )
    w = ((u.double().view(n, -1, group) - z.double()[..., None]) * s.double()[..., None]).view(n, k)
    assert got.shape == (2, 3, n)
    assert _rel(got, x.double() @ w.t() + bias.double()) < 2e-4


@needs_kernel
def test_a_copied_layer_runs_on_its_own_codes_after_the_original_is_gone():
    import copy
    import gc

    torch.manual_seed(6)
    layer = WeightOnlyLayer(nn.Linear(128, 20), bits=8, group_size=64, symmetric=False)
    path = next(p for p in kernels.candidate_paths(layer, torch.device("cpu"))[0] if p.name == "int8_avx512")
    layout = kernels.build_layout(layer, path.layout, torch.device("cpu"))
    x = torch.randn(3, 128)
    want = layout.run_native(x)  # builds the plan: pointers to this layout's tensors
    twin = copy.deepcopy(layout)
    assert twin.tensors["plan"].tensors[0] is twin.tensors["weight"]  # rebuilt around the copy
    del layout
    gc.collect()
    assert torch.equal(twin.run_native(x), want)


def _round_per_chunk_to_int8(x: torch.Tensor, chunk: int) -> torch.Tensor:
    """The kernel's 8-bit activations, emulated: per chunk, round(x / s) with s = max|x| / 127 (float32)."""
    xc = x.view(x.shape[0], -1, chunk)
    scale = xc.abs().amax(-1, keepdim=True) / 127.0
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.round(xc * (1.0 / scale)).clamp(-127, 127)
    return (q * scale).view_as(x)


@needs_kernel
@pytest.mark.parametrize(("bits", "m", "n", "k", "group"), [(8, 1, 64, 512, 128), (8, 3, 61, 4096, 4096),
                                                            (4, 1, 64, 512, 128), (4, 3, 17, 1024, 256),
                                                            (4, 2, 9, 256, 32), (8, 1, 8, 128, 32)])  # fmt: skip
def test_eight_bit_activations_are_exactly_one_byte_per_chunk(bits, m, n, k, group):
    g = torch.Generator().manual_seed(n + k + bits)
    s = torch.rand(n, k // group, generator=g) + 0.1
    x = torch.randn(m, k, generator=g)
    if bits == 8:
        w = torch.randint(-127, 128, (n, k), dtype=torch.int8, generator=g)
        packed, wq, run = native_gemv.pack_int8_rows(w), w, native_gemv.int8_gemv
        args = (x, packed, s, group)
    else:
        nibbles = torch.randint(0, 16, (n, k), dtype=torch.uint8, generator=g)
        packed, wq = native_gemv.pack_int4_rows(nibbles), nibbles.to(torch.int16) - 8
        args = (x, packed, s, group, 8)
        run = native_gemv.int4_gemv
    exact = _reference(x, wq, s, group)
    got8 = run(*args, activation_bits=8)
    emulated = _reference(_round_per_chunk_to_int8(x, native_gemv.chunk_size(k, group)), wq, s, group)
    assert _rel(got8, emulated) < 1e-5  # the same rounding, only float32 accumulation differs
    err8, err16 = _rel(got8, exact), _rel(run(*args), exact)
    assert err16 < 2e-4 < err8 < 2e-2  # one byte: coarser than 16 bits, still about bf16's precision
    with pytest.raises(ValueError):
        run(*args, activation_bits=4)


@needs_kernel
def test_a_layer_with_eight_bit_activations_offers_and_checks_the_a8_path():
    torch.manual_seed(6)
    lin = nn.Linear(256, 64)
    layer = WeightOnlyLayer(lin, bits=4, group_size=128, symmetric=False, activation_bits=8)
    paths = kernels.candidate_paths(layer, torch.device("cpu"))[0]
    assert "int4_avx512_a8" in [p.name for p in paths] and "int4_avx512" not in [p.name for p in paths]
    path = next(p for p in paths if p.name == "int4_avx512_a8")
    layout = kernels.build_layout(layer, path.layout, torch.device("cpu"))
    assert kernels.check_path(layer, path, layout) is None
    x = torch.randn(3, 256)
    err = _rel(layout.run(x, path.dtype), (x @ layer.dequantize().t()).double())
    assert 1e-4 < err < 2e-2
