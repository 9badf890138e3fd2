"""LoRA via peft on plain nn.Modules: merge parity, restore after save, adapter-only files."""

from __future__ import annotations

import sys

import pytest
import torch
from torch import nn

from modelscale import load_compressed, save_compressed
from modelscale.core.apply import apply
from modelscale.core.errors import ModelscaleError
from modelscale.core.select import Target
from modelscale.models import build_model
from modelscale.techniques.peft import LoRAConfig, load_adapter, merge_lora, save_adapter

pytest.importorskip("peft")


class EmbedNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(50, 16)
        self.conv = nn.Conv1d(16, 16, 3, padding=1)
        self.head = nn.Linear(16, 4)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.conv(self.embed(tokens).transpose(1, 2)).relu()
        return self.head(h.mean(dim=2))


def _cnn() -> nn.Module:
    torch.manual_seed(0)
    return build_model("cnn", num_classes=10, input_shape=(1, 8, 8), width=0.25)


def _perturb(model: nn.Module, seed: int = 1) -> None:
    """Give every LoRA tensor random values so the update B·A is not zero."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)


CASES = {
    "cnn": (_cnn, lambda: torch.rand(4, 1, 8, 8), LoRAConfig(rank=4)),
    "embed_conv1d": (
        EmbedNet,
        lambda: torch.randint(0, 50, (4, 7)),
        LoRAConfig(rank=2, target=Target(types=("Embedding", "Conv1d"))),
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_merge_keeps_outputs_and_gives_plain_layers(case):
    build, inputs, config = CASES[case]
    model = build().eval()
    x = inputs()
    result = apply(model, config)
    torch.testing.assert_close(result.model(x), model(x), rtol=0, atol=1e-6)  # B = 0 at insertion
    _perturb(result.model)
    adapted = result.model(x)
    assert not torch.allclose(adapted, model(x), atol=1e-3)
    merged = merge_lora(result.model)
    torch.testing.assert_close(merged(x), adapted, rtol=0, atol=1e-5)
    assert not any("lora" in k or "base_layer" in k for k in merged.state_dict())
    assert set(merged.state_dict()) == set(model.state_dict())
    kinds = {type(m).__module__.split(".")[0] for m in merged.modules()}
    assert "peft" not in kinds
    assert any("lora_" in k for k in result.model.state_dict())  # merge copied; the input is unchanged


def test_record_counts_ranks_and_frozen_base():
    model = _cnn()
    config = LoRAConfig(rank=4, target=Target(types=("Conv2d",), overrides={"features.2.*": {"rank": 2}}))
    result = apply(model, config)
    ranks = {row["name"]: row["rank"] for row in result.record.layers}
    assert ranks == {"features.0.0.conv": 4, "features.1.1.conv": 4, "features.2.1.conv": 2}
    conv = result.model.features[2][1].conv
    assert conv.lora_A["default"].weight.shape[0] == 2
    trainable = {n for n, p in result.model.named_parameters() if p.requires_grad}
    assert all("lora_" in n or n.startswith("classifier.") for n in trainable)
    lora = sum(p.numel() for n, p in result.model.named_parameters() if "lora_" in n)
    head = sum(p.numel() for p in model.classifier.parameters())
    assert result.record.summary["trainable_params"] == lora + head
    assert result.record.summary["added_params"] == lora
    assert "features.0.0.conv.base_layer.weight" in result.model.state_dict()


def test_restore_after_training_and_adapter_file(tmp_path):
    x = torch.rand(4, 1, 8, 8)
    config = LoRAConfig(rank=4)
    result = apply(_cnn(), config)
    _perturb(result.model)
    with torch.no_grad():
        result.model.classifier.bias.add_(0.5)
    out = result.model.eval()(x)

    save_compressed(tmp_path / "full", result.model, [result.record])
    reloaded = load_compressed(tmp_path / "full", _cnn()).eval()
    torch.testing.assert_close(reloaded(x), out, rtol=0, atol=0)

    path = save_adapter(result.model, tmp_path / "adapter.safetensors")
    full_bytes = (tmp_path / "full" / "model.safetensors").stat().st_size
    assert path.stat().st_size < full_bytes / 3
    fresh = apply(_cnn(), config).model.eval()
    names = load_adapter(fresh, path)
    assert all("lora_" in n or n.startswith("classifier.") for n in names)
    torch.testing.assert_close(fresh(x), out, rtol=0, atol=0)

    with pytest.raises(ModelscaleError, match="shape|lacks"):
        load_adapter(apply(_cnn(), LoRAConfig(rank=2)).model, path)
    with pytest.raises(ModelscaleError, match="this model lacks"):
        load_adapter(_cnn(), path)


def test_skips_attention_children_and_reports_missing_peft(monkeypatch):
    from tests.contract.tiny_models import tiny_transformer

    result = apply(tiny_transformer(), LoRAConfig())
    assert [row["name"] for row in result.record.layers] == ["embed"]
    assert any("self_attn.out_proj" in n for n in result.record.notes)

    monkeypatch.setitem(sys.modules, "peft", None)  # what an environment without peft looks like
    with pytest.raises(ModelscaleError, match=r"pip install modelscale\[peft\]"):
        apply(_cnn(), LoRAConfig())


def test_config_validation():
    with pytest.raises(ModelscaleError, match="rank"):
        LoRAConfig(rank=0)
    with pytest.raises(ModelscaleError, match="dropout"):
        LoRAConfig(dropout=1.0)
    with pytest.raises(ModelscaleError, match="no LoRA layers"):
        merge_lora(_cnn())


def test_merge_refuses_masked_layers():
    from modelscale.techniques.prune.magnitude import MagnitudePruneConfig

    pruned = apply(_cnn(), MagnitudePruneConfig(amount=0.5)).model
    result = apply(pruned, LoRAConfig(rank=2, target=Target(types=("Conv2d",))))
    assert any("parametrizations" in n for n in result.record.notes)
    with pytest.raises(ModelscaleError, match="bake"):
        merge_lora(result.model)


def test_transformers_gpt2_conv1d_layers(tmp_path):
    pytest.importorskip("transformers")

    def build():
        torch.manual_seed(0)
        return build_model("hf:tiny-gpt2", task="lm", block_size=16)

    model = build().eval()
    x = torch.randint(0, 256, (2, 16))
    result = apply(model, LoRAConfig(rank=2))
    kinds = {row["kind"] for row in result.record.layers}
    assert "Conv1D" in kinds  # GPT-2's attention and MLP projections
    assert any("shares tensors" in n for n in result.record.notes)  # lm_head is tied to wte
    # wte is tied to lm_head: merging an update into it would change the head too, so it is skipped.
    assert "hf.transformer.wte" not in {row["name"] for row in result.record.layers}
    assert any("its weight is tied" in n and "hf.transformer.wte" in n for n in result.record.notes)
    assert "hf.transformer.wte" in result.record.summary["skipped"]
    _perturb(result.model)
    out = result.model.eval()(x)
    torch.testing.assert_close(merge_lora(result.model)(x), out, rtol=0, atol=1e-5)
    save_compressed(tmp_path / "gpt2", result.model, [result.record])
    torch.testing.assert_close(load_compressed(tmp_path / "gpt2", build()).eval()(x), out, rtol=0, atol=0)


def test_grouped_convolutions_are_skipped_and_listed_and_a_model_without_linear_is_adapted():
    """Defaults adapt what peft can adapt: depthwise convs skipped (listed, cause first), no-Linear models work."""
    x = torch.rand(2, 3, 32, 32)
    model = build_model("torchvision:mobilenet_v3_small", num_classes=10, input_shape=(3, 32, 32)).eval()
    result = apply(model, LoRAConfig())
    depthwise = sorted(n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.groups > 1)
    assert depthwise and set(depthwise) <= set(result.record.summary["skipped"])
    assert not {row["name"] for row in result.record.layers} & set(depthwise)
    note = next(n for n in result.record.notes if "groups > 1" in n)
    assert note.startswith(f"skipped {len(depthwise)} layer(s), grouped or depthwise") and len(note) < 400
    torch.testing.assert_close(result.model.eval()(x), model(x))  # B = 0 at insertion

    squeeze = build_model("torchvision:squeezenet1_1", num_classes=10, input_shape=(3, 32, 32)).eval()
    result = apply(squeeze, LoRAConfig())
    assert result.record.summary["head"] is None
    assert "classifier.1" in {row["name"] for row in result.record.layers}  # the output conv
    assert any("no nn.Linear head" in n for n in result.record.notes)


def test_layers_whose_parent_reads_their_weight_are_skipped_not_silently_bypassed():
    """torchvision's Swin attention calls F.linear(x, self.qkv.weight): a LoRA update there never ran."""
    model = build_model("torchvision:swin_t", num_classes=10, input_shape=(3, 32, 32)).eval()
    result = apply(model, LoRAConfig())
    adapted = {row["name"] for row in result.record.layers}
    assert "features.1.0.attn.qkv" in result.record.summary["skipped"]
    assert not any(n.endswith(("attn.qkv", "attn.proj")) for n in adapted)
    assert any(
        "ShiftedWindowAttention's forward reads its .weight directly" in n for n in result.record.notes
    )
    # Every adapted layer's update reaches the output.
    x = torch.rand(1, 3, 32, 32)
    modules = dict(result.model.named_modules())
    base = result.model(x)
    with torch.no_grad():
        modules["features.1.0.mlp.0"].lora_B["default"].weight.fill_(1.0)
    assert not torch.allclose(result.model(x), base)
