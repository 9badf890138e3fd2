"""Bottleneck adapters: identity at insertion, wrap (never subclass), frozen backbone, save and reload."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from modelscale import load_compressed, save_compressed
from modelscale.core.apply import apply
from modelscale.core.errors import ModelscaleError
from modelscale.core.select import Target
from modelscale.models import build_model
from modelscale.techniques.peft import AdapterWrapped, BottleneckAdapterConfig
from tests.contract.tiny_models import tiny_transformer


def _cnn() -> nn.Module:
    torch.manual_seed(0)
    return build_model("cnn", num_classes=10, input_shape=(1, 8, 8), width=0.25)


def _gpt() -> nn.Module:
    torch.manual_seed(0)
    return build_model("gpt", block_size=16, n_layer=2, n_head=2, n_embd=32)


def test_identity_at_insertion_cnn():
    model = _cnn().eval()
    x = torch.rand(4, 1, 8, 8)
    result = apply(model, BottleneckAdapterConfig(bottleneck=4))
    assert torch.equal(result.model.eval()(x), model(x))
    assert type(result.model) is type(model)  # the user's class is kept; leaves are wrapped
    wrapped = [m for m in result.model.modules() if isinstance(m, AdapterWrapped)]
    assert len(wrapped) == 3 and all(isinstance(w.inner, nn.Conv2d) for w in wrapped)
    assert wrapped[0].adapter.kind == "conv"
    assert all(not isinstance(m, AdapterWrapped) for m in [result.model.classifier])


def test_identity_at_insertion_gpt_blocks_sized_by_probe():
    model = _gpt().eval()
    x = torch.randint(0, 256, (2, 16))
    config = BottleneckAdapterConfig(target=Target(types=("Block",)), bottleneck=4)
    result = apply(model, config, example_inputs=x)
    assert torch.equal(result.model.eval()(x), model(x))
    rows = result.record.layers
    assert [r["name"] for r in rows] == ["blocks.0", "blocks.1"]
    assert all(r["dim"] == 32 and r["sized_by"] == "probe" and r["kind"] == "linear" for r in rows)
    # Without example inputs the width comes from the block's last Linear (mlp.proj: 32).
    assert apply(model, config).record.layers[0]["dim"] == 32


def test_only_adapters_and_head_train():
    model = _cnn()
    result = apply(model, BottleneckAdapterConfig(bottleneck=4))
    trainable = {n for n, p in result.model.named_parameters() if p.requires_grad}
    assert trainable and all(".adapter." in n or n.startswith("classifier.") for n in trainable)
    summary = result.record.summary
    adapters = sum(r["params"] for r in result.record.layers)
    assert summary["added_params"] == adapters
    assert summary["trainable_params"] == adapters + 10 * model.classifier.in_features + 10
    before = {n: p.detach().clone() for n, p in result.model.named_parameters()}
    opt = torch.optim.SGD([p for p in result.model.parameters() if p.requires_grad], lr=0.1)
    x, y = torch.rand(8, 1, 8, 8), torch.arange(8)
    for _ in range(2):
        opt.zero_grad()
        nn.functional.cross_entropy(result.model(x), y).backward()
        opt.step()
    for name, p in result.model.named_parameters():
        assert torch.equal(p, before[name]) != (name in trainable), name


def test_nested_sites_save_and_reload(tmp_path):
    model = _gpt()
    x = torch.randint(0, 256, (2, 16))
    config = BottleneckAdapterConfig(target=Target(types=("Block", "Linear"), include=("blocks.0*",)))
    result = apply(model, config, example_inputs=x)
    names = [r["name"] for r in result.record.layers]
    assert "blocks.0" in names and "blocks.0.mlp.fc" in names
    with torch.no_grad():  # make the adapters non-trivial before saving
        for n, p in result.model.named_parameters():
            if ".adapter.up." in n:
                p.normal_(0, 0.1)
    out = result.model.eval()(x)
    assert not torch.allclose(out, model.eval()(x))
    save_compressed(tmp_path / "a", result.model, [result.record])
    reloaded = load_compressed(tmp_path / "a", _gpt()).eval()
    torch.testing.assert_close(reloaded(x), out, rtol=0, atol=0)
    trainable = {n for n, p in reloaded.named_parameters() if p.requires_grad}
    assert trainable == {n for n, p in result.model.named_parameters() if p.requires_grad}


def test_children_of_attention_layers_are_skipped_with_a_note():
    model = tiny_transformer()
    result = apply(model, BottleneckAdapterConfig(), example_inputs=torch.randint(0, 32, (2, 12)))
    assert [r["name"] for r in result.record.layers] == ["block"]
    assert any("block.linear1" in n and "reads" in n for n in result.record.notes)


def test_errors():
    with pytest.raises(ModelscaleError, match="bottleneck"):
        BottleneckAdapterConfig(bottleneck=0)
    with pytest.raises(ModelscaleError, match="no layer to adapt"):
        apply(_cnn(), BottleneckAdapterConfig(target=Target(types=("Linear",))))  # only the head is Linear


class _ReadsQkvWeight(nn.Module):
    """Like torchvision's Swin window attention: forward calls F.linear with `self.qkv.weight`."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(8, 8)
        self.proj = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(nn.functional.linear(x, self.qkv.weight, self.qkv.bias))


def test_a_layer_whose_parent_reads_its_weight_is_skipped_not_broken():
    torch.manual_seed(0)
    model = nn.Sequential(_ReadsQkvWeight(), nn.ReLU(), nn.Linear(8, 3)).eval()
    x = torch.rand(4, 8)
    result = apply(model, BottleneckAdapterConfig(bottleneck=2), example_inputs=x)
    assert not isinstance(result.model[0].qkv, AdapterWrapped)  # F.linear(self.qkv.weight) still works
    assert isinstance(result.model[0].proj, AdapterWrapped)  # called as a module: safe to wrap
    assert any("0.qkv" in n and "reads its .weight directly" in n for n in result.record.notes)
    assert torch.equal(result.model.eval()(x), model(x))
