"""Linear probe and BitFit: exactly the promised tensors train, counts are right, saved models reload."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from modelscale import load_compressed, save_compressed
from modelscale.core.apply import apply
from modelscale.core.errors import ModelscaleError
from modelscale.core.select import Target
from modelscale.models import build_model
from modelscale.techniques.peft import BitFitConfig, LinearProbeConfig, find_head, replace_head
from tests.contract.tiny_models import tiny_mlp


def _trainable(model: nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def _step(model: nn.Module, x: torch.Tensor, classes: int) -> dict[str, torch.Tensor]:
    """One SGD step on a random target; returns the weights before it."""
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    y = torch.randint(0, classes, (x.shape[0],), generator=torch.Generator().manual_seed(0))
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    return before


def test_linear_probe_trains_only_the_head():
    model = build_model("cnn", num_classes=10, input_shape=(1, 8, 8), width=0.25)
    result = apply(model, LinearProbeConfig())
    assert _trainable(result.model) == {"classifier.weight", "classifier.bias"}
    head = result.model.classifier
    assert result.record.summary["trainable_params"] == head.weight.numel() + head.bias.numel()
    assert result.record.summary["total_params"] == sum(p.numel() for p in model.parameters())
    x = torch.rand(8, 1, 8, 8)
    before = _step(result.model.train(), x, 10)
    for name, p in result.model.named_parameters():
        assert torch.equal(p, before[name]) != name.startswith("classifier."), name


def test_linear_probe_new_head_shape_and_reload(tmp_path):
    model = tiny_mlp()
    config = LinearProbeConfig(new_num_classes=3, seed=7)
    result = apply(model, config)
    x = torch.rand(4, 1, 8, 8)
    assert result.model(x).shape == (4, 3)
    assert result.record.summary["trainable_params"] == 32 * 3 + 3
    # Same seed, same new head: the re-draw is reproducible and leaves the global RNG alone.
    state = torch.random.get_rng_state()
    again = apply(model, config).model
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(again[5].weight, result.model[5].weight)
    _step(result.model, x, 3)
    save_compressed(tmp_path / "probe", result.model, [result.record])
    reloaded = load_compressed(tmp_path / "probe", tiny_mlp())
    torch.testing.assert_close(reloaded(x), result.model(x))
    assert _trainable(reloaded) == {"5.weight", "5.bias"}


def test_linear_probe_target_picks_the_head():
    model = tiny_mlp()
    result = apply(model, LinearProbeConfig(target=Target(types=("Linear",), include=("3",)), reinit=True))
    assert _trainable(result.model) == {"3.weight", "3.bias"}
    assert not torch.equal(result.model[3].weight, model[3].weight)


def test_bitfit_trains_biases_and_head():
    model = tiny_mlp()
    result = apply(model, BitFitConfig())
    assert _trainable(result.model) == {"1.bias", "3.bias", "5.weight", "5.bias"}
    assert result.record.summary["trainable_params"] == 32 + 32 + 32 * 10 + 10
    assert result.record.summary["biases"] == 2
    x = torch.rand(8, 1, 8, 8)
    before = _step(result.model, x, 10)
    assert torch.equal(result.model[1].weight, before["1.weight"])
    assert not torch.equal(result.model[1].bias, before["1.bias"])

    only_biases = apply(model, BitFitConfig(train_head=False)).model
    assert _trainable(only_biases) == {"1.bias", "3.bias", "5.bias"}


def test_bitfit_on_bias_free_convs_uses_batchnorm_shifts():
    model = build_model("cnn", num_classes=10, input_shape=(1, 8, 8), width=0.25)
    result = apply(model, BitFitConfig(train_head=False))
    trainable = _trainable(result.model)
    assert trainable and all(n.endswith(".bias") for n in trainable)
    assert any(".bn." in n for n in trainable)  # the zoo cnn's convs have no bias; BN shifts do


def test_head_helpers_and_errors():
    model = tiny_mlp()
    assert find_head(model)[0] == "5"
    assert replace_head(model, 4, seed=1) == "5" and model[5].out_features == 4
    with pytest.raises(ModelscaleError, match="not a module"):
        find_head(model, "nope")
    with pytest.raises(ModelscaleError, match="unknown field"):
        LinearProbeConfig.from_dict({"new_classes": 3})
    with pytest.raises(ModelscaleError, match="new_num_classes"):
        LinearProbeConfig(new_num_classes=0)
