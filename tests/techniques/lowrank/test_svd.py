"""Truncated-SVD factorization: exact at full rank, the rank rules, skipping, fine-tuning, save/reload."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from modelscale import load_compressed, save_compressed
from modelscale.core.apply import apply
from modelscale.core.errors import ModelscaleError
from modelscale.core.select import Target
from modelscale.techniques.lowrank.svd import (
    LowRankConv2d,
    LowRankLinear,
    LowRankSVDConfig,
    choose_rank,
    rank_for_energy,
)
from modelscale.techniques.prune.magnitude import MagnitudePruneConfig


def _with_spectrum(out_features: int, in_features: int, singular: list[float]) -> torch.Tensor:
    """A weight with exactly the given singular values (random orthonormal bases)."""
    g = torch.Generator().manual_seed(7)
    u, _ = torch.linalg.qr(torch.randn(out_features, len(singular), generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(in_features, len(singular), generator=g, dtype=torch.float64))
    return (u * torch.tensor(singular, dtype=torch.float64)) @ v.T


@pytest.mark.parametrize("kwargs", [{"rank_by": "rank", "rank": 64}, {"rank_by": "energy", "energy": 1.0}])
def test_full_rank_linear_reproduces_outputs(kwargs):
    model = nn.Sequential(nn.Linear(20, 12), nn.Tanh(), nn.Linear(12, 5, bias=False))
    x = torch.randn(16, 20)
    result = apply(model, LowRankSVDConfig(force=True, **kwargs))
    assert isinstance(result.model[0], LowRankLinear) and isinstance(result.model[2], LowRankLinear)
    assert result.model[0].rank == 12 and result.model[2].rank == 5
    assert result.model[2].up.bias is None
    torch.testing.assert_close(result.model(x), model(x), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(result.model[0].weight, model[0].weight, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("stride,padding,dilation", [(1, 1, 1), (2, 0, 1), (1, 2, 2)])
def test_full_rank_conv_reproduces_outputs(stride, padding, dilation):
    conv = nn.Conv2d(3, 6, 3, stride=stride, padding=padding, dilation=dilation)
    model = nn.Sequential(conv, nn.ReLU())
    x = torch.randn(2, 3, 11, 11)
    result = apply(model, LowRankSVDConfig(rank_by="rank", rank=10**6, force=True))
    new = result.model[0]
    assert isinstance(new, LowRankConv2d) and new.rank == 6
    assert (
        new.down.stride == conv.stride
        and new.down.padding == conv.padding
        and new.down.dilation == conv.dilation
    )
    assert new.up.kernel_size == (1, 1)
    torch.testing.assert_close(result.model(x), model(x), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(new.weight, conv.weight, rtol=1e-4, atol=1e-4)


def test_energy_rule_picks_smallest_rank_reaching_target():
    # s² = 16, 9, 4, 1 (total 30): cumulative fractions 0.533, 0.833, 0.967, 1.0.
    s = torch.tensor([4.0, 3.0, 2.0, 1.0])
    assert [rank_for_energy(s, e) for e in (0.5, 0.534, 0.8, 0.9, 0.97, 1.0)] == [1, 2, 2, 3, 4, 4]
    assert rank_for_energy(s, 25 / 30) == 2  # exactly on the boundary: 2 is enough

    layer = nn.Linear(40, 30)
    with torch.no_grad():
        layer.weight.copy_(_with_spectrum(30, 40, [4.0, 3.0, 2.0, 1.0]))
    result = apply(nn.Sequential(layer), LowRankSVDConfig(energy=0.9))
    row = result.record.layers[0]
    assert row["rank"] == 3 and row["full_rank"] == 30
    assert row["energy_kept"] == pytest.approx(29 / 30, abs=1e-5)
    # The weight has rank 4, so keeping 3 directions leaves exactly the smallest one out.
    err = (result.model[0].weight - layer.weight).detach()
    assert float(torch.linalg.matrix_norm(err, ord=2)) == pytest.approx(1.0, abs=1e-4)


def test_param_ratio_and_round_to():
    s = torch.ones(32)
    r = choose_rank(s, 32, 64, rank_by="param_ratio", energy=0.9, param_ratio=0.25, rank=1)
    assert r * (32 + 64) <= 0.25 * 32 * 64 < (r + 1) * (32 + 64)
    assert choose_rank(s, 32, 64, rank_by="rank", energy=0.9, param_ratio=0.5, rank=5, round_to=8) == 8
    assert choose_rank(s, 32, 64, rank_by="rank", energy=0.9, param_ratio=0.5, rank=99, round_to=8) == 32

    model = nn.Sequential(nn.Linear(64, 32))
    result = apply(model, LowRankSVDConfig(rank_by="param_ratio", param_ratio=0.25))
    summary = result.record.summary
    assert summary["weights_after"] <= 0.25 * summary["weights_before"]
    assert summary["model_params_before"] - summary["model_params_after"] == 64 * 32 - r * 96


def test_skips_layers_that_would_grow_and_lists_them():
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 2))
    result = apply(model, LowRankSVDConfig(rank_by="rank", rank=8))
    assert isinstance(result.model[0], LowRankLinear)
    assert isinstance(result.model[2], nn.Linear)  # 2·(64+2) >= 64·2: factorizing would not help
    assert [s["name"] for s in result.record.summary["skipped_layers"]] == ["2"]
    assert any(note.startswith("skipped 2:") for note in result.record.notes)
    forced = apply(model, LowRankSVDConfig(rank_by="rank", rank=8, force=True))
    assert isinstance(forced.model[2], LowRankLinear)
    # The boundary: 32·(64 + 64) equals 64·64, so rank 32 saves nothing while rank 31 does.
    square = nn.Sequential(nn.Linear(64, 64))
    assert apply(square, LowRankSVDConfig(rank_by="rank", rank=32)).record.summary["factorized"] == 0
    assert apply(square, LowRankSVDConfig(rank_by="rank", rank=31)).record.summary["factorized"] == 1


def test_grouped_conv_and_attention_projection_are_skipped():
    model = nn.Sequential(nn.Conv2d(8, 8, 3, groups=8), nn.Conv2d(8, 16, 3))
    result = apply(model, LowRankSVDConfig(rank_by="rank", rank=2))
    assert isinstance(result.model[0], nn.Conv2d) and isinstance(result.model[1], LowRankConv2d)
    assert "groups=8" in result.record.summary["skipped_layers"][0]["reason"]

    block = nn.TransformerEncoderLayer(16, 2, dim_feedforward=32, dropout=0.0, batch_first=True)
    result = apply(block, LowRankSVDConfig(rank_by="rank", rank=16, force=True))
    assert isinstance(result.model.self_attn.out_proj, nn.Linear)
    assert isinstance(result.model.linear1, LowRankLinear)
    skipped = {s["name"]: s["reason"] for s in result.record.summary["skipped_layers"]}
    assert "MultiheadAttention" in skipped["self_attn.out_proj"]
    # Full rank keeps the block's function on both the training path and the inference fast path.
    x = torch.randn(3, 5, 16)
    block.eval(), result.model.eval()
    torch.testing.assert_close(result.model(x), block(x), rtol=1e-4, atol=1e-4)
    with torch.no_grad():
        torch.testing.assert_close(result.model(x), block(x), rtol=1e-4, atol=1e-4)


def test_overrides_set_per_layer_ranks():
    model = nn.Sequential(nn.Linear(32, 32), nn.Linear(32, 32))
    config = LowRankSVDConfig(rank_by="rank", rank=4, target=Target(overrides={"1": {"rank": 2}}))
    result = apply(model, config)
    assert result.record.summary["ranks"] == {"0": 4, "1": 2}
    assert result.model[1].down.weight.shape == (2, 32)


def test_fine_tuning_updates_both_factors_and_lowers_loss():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 36, 10))
    x, y = torch.randn(32, 1, 6, 6), torch.randint(0, 10, (32,))
    result = apply(model, LowRankSVDConfig(rank_by="rank", rank=3))
    low = result.model
    factors = [low[0].down.weight, low[0].up.weight, low[3].down.weight, low[3].up.weight]
    before = [f.detach().clone() for f in factors]
    opt = torch.optim.SGD(low.parameters(), lr=0.05)
    losses = []
    for _ in range(5):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(low(x), y)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert all(not torch.equal(b, f) for b, f in zip(before, factors, strict=True))
    assert losses[-1] < losses[0]


def test_restore_loads_saved_factors(tmp_path):
    def build():
        torch.manual_seed(3)
        return nn.Sequential(nn.Conv2d(4, 16, 3), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 36, 24))

    model = build()
    result = apply(model, LowRankSVDConfig(rank_by="rank", rank=3))
    assert [r["kind"] for r in result.record.layers] == ["conv2d", "linear"]
    save_compressed(tmp_path / "m", result.model, [result.record])
    reloaded = load_compressed(tmp_path / "m", build())
    assert isinstance(reloaded[0], LowRankConv2d) and reloaded[3].rank == 3
    x = torch.randn(2, 4, 8, 8)
    assert torch.equal(reloaded(x), result.model(x))


def test_pruned_layer_factorizes_its_masked_weight():
    model = nn.Sequential(nn.Linear(30, 30))
    pruned = apply(model, MagnitudePruneConfig(amount=0.5)).model
    result = apply(pruned, LowRankSVDConfig(rank_by="rank", rank=30, force=True))
    torch.testing.assert_close(result.model[0].weight, pruned[0].weight, rtol=1e-4, atol=1e-4)
    assert any("folded" in note for note in result.record.notes)


@pytest.mark.parametrize(
    "kwargs", [{"energy": 0.0}, {"energy": 1.5}, {"rank": 0}, {"rank_by": "size"}, {"param_ratio": 0.0}]
)
def test_bad_values_raise(kwargs):
    with pytest.raises(ModelscaleError):
        LowRankSVDConfig(**kwargs)


def test_applying_twice_does_not_refactorize_factors():
    model = nn.Sequential(nn.Linear(64, 64))
    once = apply(model, LowRankSVDConfig(rank_by="rank", rank=4)).model
    twice = apply(once, LowRankSVDConfig(rank_by="rank", rank=2))
    assert twice.record.summary["factorized"] == 0
    assert all("already factorized" in s["reason"] for s in twice.record.summary["skipped_layers"])
    assert math.isclose(twice.record.summary["param_ratio"], 1.0)
