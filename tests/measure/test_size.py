import torch
from torch import nn

from modelscale.measure import effective_state_dict, measure_size
from modelscale.techniques.prune.masks import attach_mask


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 256))


def test_sparse_model_zips_much_smaller_while_serialized_bytes_stay_equal():
    dense = _mlp()
    sparse = _mlp()
    for layer in (sparse[0], sparse[2]):
        keep = torch.zeros(layer.weight.numel(), dtype=torch.bool)
        keep[torch.randperm(keep.numel())[: keep.numel() // 10]] = True  # 90 % zeros
        attach_mask(layer, keep.view_as(layer.weight))
    d, s = measure_size(dense), measure_size(sparse)
    assert abs(s.serialized_bytes - d.serialized_bytes) / d.serialized_bytes < 0.02
    assert s.safetensors_bytes == d.safetensors_bytes  # same tensors, same shapes, same dtypes
    assert s.zipped_bytes < 0.35 * d.zipped_bytes
    assert d.zipped_bytes > 0.85 * d.serialized_bytes  # random floats hardly compress
    assert s.zip_ratio > 3.0


def test_effective_state_dict_bakes_masks_and_matches_bake_masks_keys():
    from modelscale.techniques.prune.masks import bake_masks

    model = _mlp()
    attach_mask(model[0], torch.rand(256, 256) > 0.5)
    state = effective_state_dict(model)
    assert not any("parametrizations" in k for k in state)
    assert torch.equal(state["0.weight"], model[0].weight)
    assert "parametrizations.weight.original" in "".join(model.state_dict())  # the model was not baked
    baked = bake_masks(_copy(model))
    assert set(state) == set(baked.state_dict())
    assert torch.equal(state["0.weight"], baked.state_dict()["0.weight"])


def _copy(model):
    import copy

    return copy.deepcopy(model)


def test_tied_weights_are_stored_once_in_safetensors():
    emb = nn.Embedding(1000, 64)
    head = nn.Linear(64, 1000, bias=False)
    head.weight = emb.weight
    report = measure_size(nn.ModuleDict({"emb": emb, "head": head}))
    assert report.safetensors_bytes is not None
    assert 1000 * 64 * 4 <= report.safetensors_bytes < 2 * 1000 * 64 * 4
