"""GPTQ as a technique: RTN-or-better at 8 bits, damping retries recorded, packed storage on disk, reload."""

from __future__ import annotations

import torch
from torch import nn

from modelscale import apply, load_compressed, save_compressed
from modelscale.techniques.oneshot.gptq import GPTQConfig
from modelscale.techniques.oneshot.packed import LowBitLayer
from modelscale.techniques.oneshot.wanda import WandaConfig
from modelscale.techniques.quantize.weight_only import WeightOnlyConfig, WeightOnlyLayer
from tests.techniques.oneshot.conftest import output_error, tiny_gpt, windows


def _one_layer(cols=96, rows=64):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(cols, rows)).eval()


def _correlated(n, cols, seed=0):
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(cols, cols, generator=g) * 0.3 + torch.eye(cols)
    return (torch.randn(n, cols, generator=g) @ mix) * torch.linspace(0.2, 3.0, cols)


def test_eight_bit_per_channel_reproduces_rtn_or_better():
    model = _one_layer()
    x = _correlated(512, 96)
    gptq = apply(
        model, GPTQConfig(bits=8, group_size=0, symmetric=True, damp=1e-6, act_order=False), calibration=[x]
    )
    rtn = apply(model, WeightOnlyConfig(bits=8, group_size=0, symmetric=True))
    assert gptq.record.summary["damping_retries"] == 0
    assert output_error(model, gptq.model, x) <= output_error(model, rtn.model, x)
    layer = gptq.model[0]
    assert isinstance(layer, WeightOnlyLayer) and layer.format == "int8_sym_g96"


def test_rank_deficient_calibration_retries_damping_and_records_it():
    model = _one_layer(cols=48, rows=16)
    x = torch.randn(4, 48, generator=torch.Generator().manual_seed(1))  # rank 4 in 48 dimensions
    result = apply(model, GPTQConfig(bits=4, group_size=16, damp=1e-8), calibration=[x])
    row = result.record.layers[0]
    assert result.record.summary["damping_retries"] == row["damping_retries"] >= 1
    assert row["damp"] > 1e-8 and not row["fallback"]
    assert any("damping raised" in note for note in result.record.notes)
    assert torch.isfinite(result.model(x)).all()


def test_gptq_beats_round_to_nearest_at_three_bits_on_real_text(stdlib_bytes):
    model = tiny_gpt()
    calib = windows(stdlib_bytes, 64, 32, seed=1)
    held_out = windows(stdlib_bytes, 32, 32, seed=2)
    rtn = apply(model, WeightOnlyConfig(bits=4, group_size=32, symmetric=False))  # a 4-bit reference point
    g3 = apply(model, GPTQConfig(bits=3, group_size=32), calibration=[calib]).model
    from modelscale.techniques.oneshot.packed import rtn_layer
    from modelscale.techniques.quantize.common import replace_module

    r3 = tiny_gpt()
    for name, module in list(r3.named_modules()):
        if isinstance(module, nn.Linear) and not name.endswith("lm_head"):
            replace_module(r3, name, rtn_layer(module, bits=3, group_size=32, symmetric=False))
    assert output_error(model, g3, held_out) < output_error(model, r3, held_out)
    assert output_error(model, rtn.model, held_out) < output_error(model, r3, held_out)


def test_two_to_eight_bits_shrink_the_file_and_reload_exactly(tmp_path, stdlib_bytes):
    model = tiny_gpt()
    calib = windows(stdlib_bytes, 16, 32, seed=3)
    x = calib[:4]
    save_compressed(tmp_path / "float", model, [])
    dense = (tmp_path / "float" / "model.safetensors").stat().st_size
    sizes = {}
    for bits in (2, 3, 4, 8):
        result = apply(model, GPTQConfig(bits=bits, group_size=32), calibration=[calib])
        kinds = {type(m) for m in result.model.modules()}
        assert (LowBitLayer if bits < 4 else WeightOnlyLayer) in kinds
        save_compressed(tmp_path / str(bits), result.model, [result.record], model_spec={"name": "gpt"})
        sizes[bits] = (tmp_path / str(bits) / "model.safetensors").stat().st_size
        reloaded = load_compressed(tmp_path / str(bits), tiny_gpt()).eval()
        torch.testing.assert_close(reloaded(x), result.model(x), rtol=0, atol=0)
    assert sizes[2] < sizes[3] < sizes[4] < sizes[8] < dense
    # the quantized layers themselves: 2 bits + one fp32 scale and one uint8 zero per 32 weights
    linear = sum(
        m.weight.numel() for n, m in model.named_modules() if isinstance(m, nn.Linear) and "lm_head" not in n
    )
    assert dense - sizes[2] > 0.9 * linear * 4 * (1 - (2 / 8 + 5 / 32) / 4)


def test_hf_gpt2_conv1d_layers_are_quantized_and_reload(tmp_path, stdlib_bytes):
    from modelscale.models import build_model

    def build():
        torch.manual_seed(0)
        return build_model("hf:tiny-gpt2", task="lm", block_size=32).eval()

    model = build()
    calib = windows(stdlib_bytes, 16, 32, seed=4)
    result = apply(model, GPTQConfig(bits=4, group_size=32), calibration=[calib])
    names = {r["name"] for r in result.record.layers}
    assert "hf.transformer.h.0.attn.c_attn" in names and all(r["conv1d"] for r in result.record.layers)
    assert result.record.summary["mode"] == "sequential"
    save_compressed(tmp_path / "q", result.model, [result.record])
    torch.testing.assert_close(
        load_compressed(tmp_path / "q", build()).eval()(calib[:2]), result.model(calib[:2])
    )


def test_wanda_then_gptq_keeps_the_zeros(stdlib_bytes):
    model = tiny_gpt()
    calib = windows(stdlib_bytes, 16, 32, seed=5)
    pruned = apply(model, WandaConfig(sparsity=0.5), calibration=[calib]).model
    both = apply(pruned, GPTQConfig(bits=4, group_size=32), calibration=[calib])
    for name, module in both.model.named_modules():
        if isinstance(module, WeightOnlyLayer):
            zeros = pruned.get_submodule(name).weight == 0
            assert torch.equal(module.weight[zeros], torch.zeros(int(zeros.sum())))
            assert float(zeros.float().mean()) == 0.5
    assert all(r["kept_mask_sparsity"] == 0.5 for r in both.record.layers)
