"""structured_prune's channels_last option: NHWC weights, same function, kept through save and reload."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from modelscale import load_compressed, save_compressed
from modelscale.core.apply import apply
from modelscale.techniques.prune.structured import StructuredPruneConfig

tvm = pytest.importorskip("torchvision.models")


def _four_d(model: nn.Module) -> list[torch.Tensor]:
    return [t for t in [*model.parameters(), *model.buffers()] if t.dim() == 4]


def _resnet18() -> nn.Module:
    torch.manual_seed(0)
    return tvm.resnet18(num_classes=10).eval()


def test_channels_last_stores_nhwc_weights_with_the_same_shapes_and_outputs(tmp_path):
    x = torch.randn(2, 3, 32, 32)
    plain = apply(_resnet18(), StructuredPruneConfig(ratio=0.5), example_inputs=x[:1]).model.eval()
    result = apply(_resnet18(), StructuredPruneConfig(ratio=0.5, channels_last=True), example_inputs=x[:1])
    nhwc = result.model.eval()
    weights = _four_d(nhwc)
    assert weights and all(w.is_contiguous(memory_format=torch.channels_last) for w in weights)
    assert not all(w.is_contiguous() for w in weights)  # really another layout, not a 1×1 coincidence
    assert all(w.is_contiguous() for w in _four_d(plain))  # the default leaves the layout alone
    assert [p.shape for p in nhwc.parameters()] == [p.shape for p in plain.parameters()]
    assert any(f"{len(weights)} 4-D tensor(s) stored channels-last" == n for n in result.record.notes)
    with torch.no_grad():
        out = nhwc(x)  # plain NCHW inputs still work
        torch.testing.assert_close(out, plain(x), rtol=1e-4, atol=1e-5)
    save_compressed(tmp_path / "m", nhwc, [result.record])
    reloaded = load_compressed(tmp_path / "m", tvm.resnet18(num_classes=10)).eval()
    assert all(w.is_contiguous(memory_format=torch.channels_last) for w in _four_d(reloaded))
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x), out)


def test_channels_last_on_a_model_without_convs_changes_nothing_else():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)).eval()
    x = torch.randn(3, 16)
    result = apply(model, StructuredPruneConfig(ratio=0.5, channels_last=True), example_inputs=x)
    assert result.model[0].out_features == 16
    assert "0 4-D tensor(s) stored channels-last" in result.record.notes
    assert StructuredPruneConfig.from_dict(result.record.config).channels_last is True
