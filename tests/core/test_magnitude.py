import pytest
import torch
from torch import nn

from modelscale.core.apply import apply
from modelscale.core.errors import ModelscaleError
from modelscale.core.select import Target
from modelscale.techniques.prune.magnitude import MagnitudePruneConfig
from modelscale.techniques.prune.masks import bake_masks, get_mask


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 10))


def test_zero_amount_is_the_identity():
    model = _mlp()
    x = torch.randn(5, 20)
    pruned = apply(model, MagnitudePruneConfig(amount=0.0)).model
    assert torch.equal(pruned(x), model(x))


def test_layer_scope_prunes_exact_count_per_layer():
    result = apply(_mlp(), MagnitudePruneConfig(amount=0.3))
    for row in result.record.layers:
        assert row["sparsity"] == pytest.approx(int(0.3 * row["numel"]) / row["numel"])


def test_global_scope_prunes_smallest_overall():
    model = _mlp()
    with torch.no_grad():
        model[0].weight.abs_().add_(0.5)  # every first-layer weight outranks every second-layer one
    result = apply(model, MagnitudePruneConfig(amount=300 / 900, scope="global"))
    rows = {r["name"]: r["sparsity"] for r in result.record.layers}
    assert rows["2"] == 1.0 and rows["0"] == 0.0
    assert result.record.summary["zeroed"] == 300


def test_input_untouched_and_inplace_changes_it():
    model = _mlp()
    w = model[0].weight.clone()
    apply(model, MagnitudePruneConfig(amount=0.5))
    assert torch.equal(model[0].weight, w)
    apply(model, MagnitudePruneConfig(amount=0.5), inplace=True)
    assert (model[0].weight == 0).float().mean() == 0.5


def test_masks_survive_optimizer_steps():
    model = apply(_mlp(), MagnitudePruneConfig(amount=0.6)).model
    zero_before = model[0].weight == 0
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-2)
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(8, 20)).pow(2).mean().backward()
        opt.step()
    assert torch.equal(model[0].weight == 0, zero_before)


def test_second_prune_intersects_masks_and_bake_removes_parametrization():
    model = apply(_mlp(), MagnitudePruneConfig(amount=0.5)).model
    first = get_mask(model[0]).clone()
    model = apply(model, MagnitudePruneConfig(amount=0.75)).model
    second = get_mask(model[0])
    assert not (second & ~first).any()
    assert (~second).float().mean() == 0.75
    x = torch.randn(3, 20)
    y = model(x)
    bake_masks(model)
    assert get_mask(model[0]) is None
    assert torch.equal(model(x), y)


def test_per_layer_override_and_bad_amount():
    result = apply(_mlp(), MagnitudePruneConfig(amount=0.5, target=Target(overrides={"2": {"amount": 0.9}})))
    rows = {r["name"]: r["sparsity"] for r in result.record.layers}
    assert rows["0"] == 0.5 and rows["2"] == pytest.approx(0.9)
    with pytest.raises(ModelscaleError, match="amount must be < 1.0"):
        MagnitudePruneConfig(amount=1.0)


def test_bake_on_a_deep_copy_leaves_the_original_working():
    import copy

    model = apply(_mlp(), MagnitudePruneConfig(amount=0.5)).model
    x = torch.randn(2, 20)
    y = model(x)
    bake_masks(copy.deepcopy(model))
    assert torch.equal(model(x), y)
    assert get_mask(model[0]) is not None
