"""Weight clustering: codebook sizes, k-means quality, shared gradients, pruning composition, reload."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from modelscale import load_compressed, save_compressed
from modelscale.core.apply import apply
from modelscale.core.errors import ModelscaleError
from modelscale.core.select import Target
from modelscale.techniques.cluster.kmeans import (
    WeightClusterConfig,
    bake_clusters,
    get_clusters,
    kmeans_1d,
)
from modelscale.techniques.prune.magnitude import MagnitudePruneConfig
from modelscale.techniques.prune.masks import get_mask


def _mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(40, 48), nn.ReLU(), nn.Linear(48, 10))


def _cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(2, 12, 3), nn.ReLU(), nn.Flatten(), nn.Linear(12 * 16, 5))


@pytest.mark.parametrize("bits", [1, 2, 4])
@pytest.mark.parametrize("per_channel", [False, True])
def test_at_most_two_to_the_bits_values(bits, per_channel):
    result = apply(_cnn(), WeightClusterConfig(bits=bits, per_channel=per_channel))
    for name in ("0", "3"):
        w = result.model.get_submodule(name).weight.detach()
        rows = w.reshape(w.shape[0], -1) if per_channel else w.reshape(1, -1)
        assert max(row.unique().numel() for row in rows) <= 2**bits
        if rows.shape[1] >= 64:  # plenty of distinct weights per group: every centroid gets members
            assert min(row.unique().numel() for row in rows) == 2**bits
    assert all(r["bits"] == bits for r in result.record.layers)


def test_reconstruction_error_falls_as_bits_grow():
    torch.manual_seed(0)
    layer = nn.Linear(64, 64)
    errors = []
    for bits in range(1, 7):
        result = apply(nn.Sequential(layer), WeightClusterConfig(bits=bits))
        errors.append(float((result.model[0].weight - layer.weight).detach().pow(2).mean()))
        assert result.record.layers[0]["relative_mse"] == pytest.approx(
            errors[-1] / float(layer.weight.detach().pow(2).mean()), rel=1e-4
        )
    assert all(a > b for a, b in zip(errors, errors[1:], strict=False))
    assert errors[-1] < 1e-3 * float(layer.weight.detach().pow(2).mean())


def test_kmeans_finds_obvious_clusters_and_is_seeded():
    g = torch.Generator().manual_seed(0)
    centers = torch.tensor([-2.0, 0.5, 3.0])
    values = (centers[torch.randint(0, 3, (300,), generator=g)] + 0.01 * torch.randn(300, generator=g))[None]
    for init in ("linear", "kmeans++"):
        c, assign = kmeans_1d(values, 3, init=init, generator=torch.Generator().manual_seed(1))
        torch.testing.assert_close(c[0], centers, atol=0.01, rtol=0)
        # Lloyd fixed point: each centroid is the mean of its members.
        for k in range(3):
            assert float(c[0, k]) == pytest.approx(float(values[0][assign[0] == k].mean()), abs=1e-5)
    a = kmeans_1d(values, 8, init="kmeans++", generator=torch.Generator().manual_seed(5))
    b = kmeans_1d(values, 8, init="kmeans++", generator=torch.Generator().manual_seed(5))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_codebook_gradient_is_per_cluster_sum_of_weight_gradient():
    for per_channel in (False, True):
        model = apply(_mlp(), WeightClusterConfig(bits=3, per_channel=per_channel)).model
        x, y = torch.randn(8, 40), torch.randint(0, 10, (8,))
        nn.functional.cross_entropy(model(x), y).backward()
        layer = model[0]
        clustered = get_clusters(layer)

        # Hand computation: the gradient w.r.t. a plain dense copy of the weight, summed per cluster.
        dense = layer.weight.detach().clone().requires_grad_(True)
        hidden = torch.relu(nn.functional.linear(x, dense, layer.bias.detach()))
        nn.functional.cross_entropy(model[2](hidden), y).backward()
        groups, entries = clustered.codebook.shape
        idx = clustered.indices.reshape(groups, -1).long()
        grad = dense.grad.reshape(groups, -1)
        expected = torch.zeros(groups, entries)
        for g in range(groups):
            for k in range(entries):
                expected[g, k] = grad[g][idx[g] == k].sum()
        torch.testing.assert_close(clustered.codebook.grad, expected, rtol=1e-5, atol=1e-6)
        assert clustered.indices.dtype == torch.uint8
        assert layer.parametrizations.weight.original.numel() == 0  # no dense copy kept


def test_pruned_zeros_stay_zero_through_clustering_and_training():
    pruned = apply(_mlp(), MagnitudePruneConfig(amount=0.6)).model
    zeros = {n: get_mask(pruned.get_submodule(n)).logical_not().clone() for n in ("0", "2")}
    model = apply(pruned, WeightClusterConfig(bits=2)).model
    for name, off in zeros.items():
        layer = model.get_submodule(name)
        clustered = get_clusters(layer)
        assert clustered.zero_centroid and clustered.codebook.shape == (1, 3)
        assert get_mask(layer) is not None  # the mask is still attached
        w = layer.weight.detach()
        assert torch.equal(w[off], torch.zeros_like(w[off]))
        assert torch.all(w[~off] != 0)  # kept weights map to the learned centroids
        assert torch.equal(clustered.indices[off], torch.zeros_like(clustered.indices[off]))
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9, weight_decay=0.1)
    x, y = torch.randn(16, 40), torch.randint(0, 10, (16,))
    before = get_clusters(model[0]).codebook.detach().clone()
    for _ in range(3):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    assert not torch.equal(before, get_clusters(model[0]).codebook)
    for name, off in zeros.items():
        w = model.get_submodule(name).weight.detach()
        assert torch.equal(w[off], torch.zeros_like(w[off]))
        assert w.unique().numel() <= 4


def test_attention_projection_is_clustered_and_trains():
    torch.manual_seed(0)
    block = nn.TransformerEncoderLayer(16, 2, dim_feedforward=32, dropout=0.0, batch_first=True)
    result = apply(block, WeightClusterConfig(bits=3))
    names = [r["name"] for r in result.record.layers]
    assert "self_attn.out_proj" in names and "linear1" in names
    model = result.model
    x = torch.randn(2, 5, 16)
    model(x).pow(2).mean().backward()
    assert get_clusters(model.self_attn.out_proj).codebook.grad.abs().sum() > 0
    with torch.no_grad():
        assert torch.isfinite(model.eval()(x)).all()


def test_save_reload_after_prune_then_cluster(tmp_path):
    pruned = apply(_cnn(), MagnitudePruneConfig(amount=0.5))
    clustered = apply(pruned.model, WeightClusterConfig(bits=3, per_channel=True))
    save_compressed(tmp_path / "m", clustered.model, [pruned.record, clustered.record])
    reloaded = load_compressed(tmp_path / "m", _cnn(seed=9))
    x = torch.randn(3, 2, 6, 6)
    assert torch.equal(reloaded(x), clustered.model(x))
    assert get_clusters(reloaded[0]).bits == 3 and get_mask(reloaded[0]) is not None
    state = clustered.model.state_dict()
    assert state["0.parametrizations.weight.0.indices"].dtype == torch.uint8
    assert not any(v.numel() == 12 * 2 * 9 and v.is_floating_point() for v in state.values())


def test_bake_clusters_gives_dense_parameters_with_same_values():
    model = apply(_mlp(), WeightClusterConfig(bits=2)).model
    before = model[0].weight.detach().clone()
    bake_clusters(model)
    assert get_clusters(model[0]) is None
    assert isinstance(model[0].weight, nn.Parameter) and model[0].weight.requires_grad
    assert torch.equal(model[0].weight, before)


def test_skips_already_clustered_and_honours_overrides():
    config = WeightClusterConfig(bits=4, target=Target(overrides={"2": {"bits": 2}}))
    once = apply(_mlp(), config)
    assert [r["bits"] for r in once.record.layers] == [4, 2]
    twice = apply(once.model, WeightClusterConfig())
    assert twice.record.summary["clustered"] == 0
    assert {s["reason"] for s in twice.record.summary["skipped_layers"]} == {"already clustered"}


@pytest.mark.parametrize("kwargs", [{"bits": 0}, {"bits": 9}, {"init": "random"}, {"iterations": 0}])
def test_bad_values_raise(kwargs):
    with pytest.raises(ModelscaleError):
        WeightClusterConfig(**kwargs)


def test_invalid_entries_do_not_move_centroids():
    values = torch.tensor([[0.0, 0.1, 1.0, 1.1, 50.0, -50.0]])
    valid = torch.tensor([[True, True, True, True, False, False]])
    centroids, assign = kmeans_1d(values, 2, valid=valid)
    torch.testing.assert_close(centroids, torch.tensor([[0.05, 1.05]]))
    assert assign[0, :4].tolist() == [0, 0, 1, 1]


@pytest.mark.gpu
def test_cuda_clustering_is_deterministic_and_matches_cpu():
    model = _cnn()
    seeded = WeightClusterConfig(bits=4, per_channel=True, init="kmeans++", seed=3)
    runs = [apply(model.cuda(), seeded).model for _ in range(2)]
    linear = WeightClusterConfig(bits=4, per_channel=True)  # no random draws: CPU and GPU agree
    gpu, cpu = apply(model.cuda(), linear).model, apply(model.cpu(), linear).model
    for name in ("0", "3"):
        a, b = (get_clusters(r.get_submodule(name)) for r in runs)
        assert torch.equal(a.codebook, b.codebook) and torch.equal(a.indices, b.indices)
        on_gpu, on_cpu = get_clusters(gpu.get_submodule(name)), get_clusters(cpu.get_submodule(name))
        torch.testing.assert_close(on_gpu.codebook.cpu(), on_cpu.codebook, rtol=1e-4, atol=1e-5)
