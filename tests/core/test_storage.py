"""The weights file a saved folder holds: masks baked (a pruned file is never larger than its baseline's),
cluster indices bit-packed, sparse encodings on request; the size measured is the file's, byte for byte."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_model
from torch import nn

from modelscale.core.apply import apply
from modelscale.core.errors import ModelscaleError
from modelscale.core.saving import save_compressed
from modelscale.core.weights_file import read_weights, weights_file_bytes, write_weights
from modelscale.measure.size import effective_state_dict, measure_file, measure_size
from modelscale.models.loading import load_compressed
from modelscale.techniques.cluster import WeightClusterConfig as ClusterConfig
from modelscale.techniques.prune import MagnitudePruneConfig


def _mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))


X = torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(3))


def _pruned(amount: float = 0.8):
    base = _mlp()
    return base, apply(base, MagnitudePruneConfig(amount=amount))


def _size(folder) -> int:
    return (folder / "model.safetensors").stat().st_size


def test_a_masked_model_saves_no_larger_than_its_baseline_and_reloads_exactly(tmp_path):
    base, result = _pruned()
    save_compressed(tmp_path / "base", base, [])
    save_compressed(tmp_path / "pruned", result.model, [result.record])
    assert _size(tmp_path / "pruned") <= _size(tmp_path / "base")
    with safe_open(str(tmp_path / "pruned" / "model.safetensors"), framework="pt") as f:
        keys = set(f.keys())  # noqa: SIM118
    assert "1.weight" in keys and not any("mask" in k or "original" in k for k in keys), keys
    reloaded = load_compressed(tmp_path / "pruned", _mlp(seed=9)).eval()
    torch.testing.assert_close(reloaded(X), result.model.eval()(X), rtol=0, atol=0)
    # the mask came back: zeros stay zero under training
    layer = reloaded[1]
    mask = layer.parametrizations.weight[0].mask
    assert mask.dtype == torch.bool and 0.75 < 1 - mask.float().mean().item() < 0.85
    with torch.no_grad():
        layer.parametrizations.weight.original.add_(1.0)
    assert int((layer.weight == 0).sum()) == int((~mask).sum())


def test_sparse_storage_is_smaller_recorded_and_lossless(tmp_path):
    _, result = _pruned(0.9)
    save_compressed(tmp_path / "dense", result.model, [result.record])
    save_compressed(tmp_path / "sparse", result.model, [result.record], storage="sparse")
    assert _size(tmp_path / "sparse") < 0.5 * _size(tmp_path / "dense")
    manifest = json.loads((tmp_path / "sparse" / "modelscale.json").read_text())
    assert manifest["storage"] == "sparse"
    assert measure_file(tmp_path / "sparse").storage == "sparse"
    reloaded = load_compressed(tmp_path / "sparse", _mlp(seed=4)).eval()
    torch.testing.assert_close(reloaded(X), result.model.eval()(X), rtol=0, atol=0)


@pytest.mark.parametrize("storage", ["dense", "sparse"])
def test_measured_size_is_the_file_written(tmp_path, storage):
    for model in (_mlp(), _pruned()[1].model, apply(_mlp(), ClusterConfig(bits=4)).model):
        path = tmp_path / f"{storage}.safetensors"
        written = write_weights(path, model, storage)
        assert written == path.stat().st_size == len(weights_file_bytes(model, storage))
        report = measure_size(model, storage=storage)
        assert report.file_bytes == written
        assert measure_file(path).zipped_bytes == report.zipped_bytes > 0


def test_cluster_indices_are_bit_packed_in_the_file(tmp_path):
    base = _mlp()
    result = apply(base, ClusterConfig(bits=4))
    save_compressed(tmp_path / "base", base, [])
    save_compressed(tmp_path / "cl", result.model, [result.record])
    # 64·128 + 128·10 weights at 4 bits ≈ 4.7 KB + biases and codebooks, against 37 KB of fp32
    assert _size(tmp_path / "cl") < 0.25 * _size(tmp_path / "base")
    reloaded = load_compressed(tmp_path / "cl", _mlp(seed=2)).eval()
    torch.testing.assert_close(reloaded(X), result.model.eval()(X), rtol=0, atol=0)


def test_tied_tensors_are_stored_once_and_reload_tied(tmp_path):
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(50, 16)
            self.head = nn.Linear(16, 50, bias=False)
            self.head.weight = self.emb.weight

        def forward(self, x):
            return self.head(self.emb(x))

    torch.manual_seed(0)
    model = Tied()
    path = tmp_path / "t.safetensors"
    write_weights(path, model)
    assert path.stat().st_size < 50 * 16 * 4 * 1.5  # one copy, not two
    fresh = Tied()
    read_weights(path, fresh)
    assert fresh.head.weight is fresh.emb.weight
    assert torch.equal(fresh.emb.weight, model.emb.weight)


def test_a_file_in_the_earlier_layout_still_loads(tmp_path):
    """Files written before masks were baked hold `original` + `mask`: keys in the model's own layout."""
    _, result = _pruned()
    save_compressed(tmp_path / "new", result.model, [result.record])
    save_model(result.model, str(tmp_path / "new" / "model.safetensors"))  # the earlier writer
    reloaded = load_compressed(tmp_path / "new", _mlp(seed=7)).eval()
    torch.testing.assert_close(reloaded(X), result.model.eval()(X), rtol=0, atol=0)


def test_bfloat16_sparse_round_trip_is_bit_exact(tmp_path):
    _, result = _pruned(0.7)
    model = copy.deepcopy(result.model).to(torch.bfloat16)
    path = tmp_path / "bf16.safetensors"
    write_weights(path, model, "sparse")
    fresh = copy.deepcopy(model)
    with torch.no_grad():
        for p in fresh.parameters():
            p.zero_()
    read_weights(path, fresh)
    # baked storage keeps the effective weights (original · mask), not the masked-out originals
    want, got = effective_state_dict(model), effective_state_dict(fresh)
    assert want.keys() == got.keys()
    for name, value in want.items():
        assert value.dtype == torch.bfloat16 and torch.equal(value, got[name]), name


def test_an_unknown_storage_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(ModelscaleError, match="storage must be one of dense, sparse"):
        save_compressed(tmp_path / "x", _mlp(), [], storage="zip")
    assert not (tmp_path / "x" / "model.safetensors").exists()


def test_weights_that_do_not_fit_name_the_keys(tmp_path):
    path = tmp_path / "w.safetensors"
    write_weights(path, _mlp())
    other = nn.Sequential(nn.Flatten(), nn.Linear(64, 32))
    with pytest.raises(RuntimeError, match="size mismatch for 1.weight"):
        read_weights(path, other)
    with pytest.raises(RuntimeError, match=r"Unexpected key\(s\) in state_dict: 3.bias, 3.weight"):
        read_weights(path, nn.Sequential(nn.Flatten(), nn.Linear(64, 128)))
