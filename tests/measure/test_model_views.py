"""Looking inside models for reports: effective weights, comparable blocks, feature maps, similarity."""

import pytest
import torch

from modelscale.core.apply import apply
from modelscale.measure.model_views import (
    comparable_blocks,
    first_conv_maps,
    layer_weights,
    pooled,
    similarity,
    weight_stats,
)
from modelscale.models import build_model


def _cnn():
    torch.manual_seed(0)
    return build_model("cnn", num_classes=10, input_shape=(1, 8, 8)).eval()


def test_masked_weights_are_seen_as_used_in_forward():
    from modelscale.techniques.prune.magnitude import MagnitudePruneConfig

    pruned = apply(_cnn(), MagnitudePruneConfig(amount=0.5, scope="global")).model
    weights = layer_weights(pruned)
    assert list(weights) == ["features.0.0.conv", "features.1.1.conv", "features.2.1.conv", "classifier"]
    stats = weight_stats(pooled(weights))
    assert stats["count"] == sum(w.numel() for w in weights.values())
    assert stats["zeros"] == pytest.approx(0.5, abs=1 / stats["count"])
    assert torch.equal(weights["classifier"], pruned.classifier.weight.detach())


def test_lora_updates_are_added_like_merge_lora():
    pytest.importorskip("peft")
    from modelscale.techniques.peft.lora import LoRAConfig, merge_lora

    torch.manual_seed(0)
    model = build_model("mlp", num_classes=10, input_shape=(1, 8, 8))
    adapted = apply(model, LoRAConfig(rank=2, alpha=4.0)).model
    with torch.no_grad():  # B starts at zero: give the update a value so it can be seen
        for name, p in adapted.named_parameters():
            if "lora_B" in name:
                p.normal_()
    got = layer_weights(adapted)
    want = layer_weights(merge_lora(adapted))
    assert sorted(got) == sorted(want)
    changed = 0
    for name in want:
        torch.testing.assert_close(got[name], want[name])
        changed += not torch.equal(got[name], layer_weights(model)[name])
    assert changed >= 1


def test_comparable_blocks_expand_containers_and_skip_parameter_free_wrappers():
    a, b = _cnn(), _cnn()
    assert comparable_blocks(a, b) == ["features.0", "features.1", "features.2", "pool", "classifier"]
    assert comparable_blocks(a, b, limit=3) == ["features.0", "features.2", "classifier"]


@pytest.fixture(scope="module")
def digits_bundle():
    from modelscale.data import load_data

    return load_data("digits", seed=0)


def test_first_conv_maps_and_similarity_of_a_model_with_itself(digits_bundle):
    digits = digits_bundle
    model = _cnn()
    x = torch.stack([digits.test[i][0] for i in range(3)])
    maps = first_conv_maps(model, model, x)
    assert maps["layer"] == "features.0.0.conv"
    assert maps["base"].shape == (3, 32, 8, 8)
    assert (maps["base"] == maps["other"]).all()
    same = similarity(model, model, digits)
    assert same["agreement"] == 1.0
    assert same["examples"] == len(digits.test)
    assert all(v == pytest.approx(1.0, abs=1e-6) for v in same["blocks"].values())
    assert set(same["blocks"]) == {"features.0", "features.1", "features.2", "pool", "classifier"}


def test_recorded_views_reload_with_their_arrays(digits_bundle, tmp_path):
    from modelscale.measure.model_views import load_views, record_views
    from modelscale.techniques.prune.magnitude import MagnitudePruneConfig

    base = _cnn()
    pruned = apply(base, MagnitudePruneConfig(amount=0.5, scope="global")).model
    views = record_views(base, pruned, digits_bundle, tmp_path)
    loaded = load_views(tmp_path)
    assert loaded["weights"]["final"]["stats"]["zeros"] == pytest.approx(0.5, abs=0.01)
    counted = sum(loaded["weights"]["baseline"]["counts"])
    assert (
        0.998 * views["weights"]["baseline"]["stats"]["count"]
        <= counted
        <= views["weights"]["baseline"]["stats"]["count"]
    )
    assert loaded["activations"]["base"].shape == (3, 32, 8, 8)
    assert 0.0 <= loaded["similarity"]["agreement"] <= 1.0
