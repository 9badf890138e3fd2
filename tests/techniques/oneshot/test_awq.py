"""AWQ: exact folds, the α search scored on the block output (never worse than α = 0), per-layer α for
explicit scales, the clipping search, and better-than-RTN rounding of a gpt on real stdlib text."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from modelscale import apply, load_compressed, save_compressed
from modelscale.core.errors import ModelscaleError
from modelscale.techniques.oneshot.awq import AWQConfig, weight_magnitude
from modelscale.techniques.oneshot.awq_clip import clip_rtn, rtn
from modelscale.techniques.oneshot.packed import InputScaled
from tests.techniques.oneshot.conftest import output_error, tiny_gpt, windows


def _rtn3():
    """Plain round-to-nearest into the same 3-bit storage: one grid point (s = 1), no clipping."""
    return AWQConfig(bits=3, group_size=32, grid=1, clip=False)


@pytest.fixture(scope="module")
def gpt_awq(stdlib_bytes):
    model = tiny_gpt()
    calib = windows(stdlib_bytes, 32, 32, seed=1)
    result = apply(model, AWQConfig(bits=3, group_size=32, grid=10), calibration=[calib])
    return model, result


def test_folds_are_where_the_gpt_block_allows_them(gpt_awq):
    _, result = gpt_awq
    rows = {r["name"]: r for r in result.record.layers}
    for i in range(2):
        head = f"blocks.{i}"
        qkv = [rows[f"{head}.attn.{p}_proj"] for p in "qkv"]
        assert len({r["awq_alpha"] for r in qkv}) == 1  # one fold, one s for the three
        if qkv[0]["awq_alpha"] > 0:
            assert {r["folded_into"] for r in qkv} == {f"{head}.ln_1"}
        if rows[f"{head}.mlp.fc"]["awq_alpha"] > 0:
            assert rows[f"{head}.mlp.fc"]["folded_into"] == f"{head}.ln_2"
        if rows[f"{head}.attn.out_proj"]["awq_alpha"] > 0:
            assert rows[f"{head}.attn.out_proj"]["folded_into"] == f"{head}.attn.v_proj"
        proj = rows[f"{head}.mlp.proj"]  # after a GELU: nothing to fold into
        assert proj["folded_into"] is None
        assert proj["input_scale"] == (proj["awq_alpha"] > 0)
        if proj["input_scale"]:
            assert isinstance(result.model.get_submodule(f"{head}.mlp.proj"), InputScaled)
    assert all(r["awq_objective"] == "block" for r in rows.values())
    used = {r["folded_into"].rsplit(".", 1)[-1] for r in rows.values() if r["folded_into"]}
    assert used == {"ln_1", "ln_2", "v_proj"}  # every kind of fold happened somewhere (seeded data)
    assert result.record.summary["explicit_scale_layers"] >= 1


def test_the_search_is_never_worse_than_alpha_zero_on_its_objective(gpt_awq):
    _, result = gpt_awq
    ratios = [r["awq_error_ratio"] for r in result.record.layers]
    assert all(0 <= r <= 1.0 for r in ratios)
    assert min(ratios) < 1.0  # and somewhere a scale was better than none


def test_three_bit_awq_beats_round_to_nearest_on_held_out_text(gpt_awq, stdlib_bytes):
    model, result = gpt_awq
    calib = windows(stdlib_bytes, 32, 32, seed=1)
    held_out = windows(stdlib_bytes, 32, 32, seed=2)
    rtn = apply(model, _rtn3(), calibration=[calib]).model
    assert output_error(model, result.model, held_out) < 0.8 * output_error(model, rtn, held_out)


def test_saved_awq_model_reloads_to_the_same_outputs(gpt_awq, tmp_path, stdlib_bytes):
    _, result = gpt_awq
    x = windows(stdlib_bytes, 4, 32, seed=3)
    save_compressed(tmp_path / "q", result.model, [result.record], model_spec={"name": "gpt"})
    reloaded = load_compressed(tmp_path / "q", tiny_gpt()).eval()
    torch.testing.assert_close(reloaded(x), result.model(x), rtol=0, atol=0)


def test_layers_sharing_an_input_without_a_fold_get_their_own_alpha():
    """Two Linears reading the block input (no norm in front): explicit scales, searched one by one."""

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(64, 32), nn.Linear(64, 32)

        def forward(self, x):
            return torch.cat([self.a(x), torch.tanh(self.b(x))], -1)

    torch.manual_seed(0)
    model = nn.Sequential(Block(), nn.Linear(64, 64), Block()).eval()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 64, generator=g) * torch.linspace(0.1, 4.0, 64)  # uneven channel magnitudes
    per_layer = apply(model, AWQConfig(bits=3, group_size=32, grid=10), calibration=[x])
    shared = apply(model, AWQConfig(bits=3, group_size=32, grid=10, per_layer_alpha=False), calibration=[x])
    rows = {r["name"]: r for r in per_layer.record.layers}
    assert all(r["folded_into"] is None for r in rows.values())
    assert all(r["input_scale"] == (r["awq_alpha"] > 0) for r in rows.values())
    shared_rows = {r["name"]: r for r in shared.record.layers}
    assert shared_rows["0.a"]["awq_alpha"] == shared_rows["0.b"]["awq_alpha"]
    assert per_layer.record.summary["explicit_scale_layers"] >= 1
    rtn = apply(model, _rtn3(), calibration=[x]).model
    assert output_error(model, per_layer.model, x) < output_error(model, rtn, x)


def test_clipping_is_never_worse_than_none_and_separate_ends_never_worse_than_one_ratio():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(48, 64, generator=g)
    w[:, 3] *= 6  # a few large weights make clipping worth something
    x = torch.randn(512, 64, generator=g)
    h = 2 * x.t() @ x / 512

    def err(config, clipped):
        d = rtn(clipped, config) - w
        return float(((d @ h) * d).sum())

    shared = AWQConfig(bits=3, group_size=32, clip_separate=False)
    separate = AWQConfig(bits=3, group_size=32, clip_separate=True)
    none = err(shared, w)
    one = err(shared, clip_rtn(w, h, shared))
    two = err(separate, clip_rtn(w, h, separate))
    assert one < none and two <= one * (1 + 1e-6)


def test_duo_weight_magnitude_is_relative_to_each_group_max():
    w = torch.tensor([[1.0, -2.0, 4.0, 0.0], [2.0, 2.0, 1.0, -1.0]])
    s_w = weight_magnitude([w], group_size=2)
    torch.testing.assert_close(s_w, torch.tensor([0.75, 1.0, 1.0, 0.5]), rtol=1e-5, atol=1e-5)


def test_the_layers_objective_and_no_duo_still_run_and_beat_rtn(stdlib_bytes):
    model = tiny_gpt(n_layer=1)
    calib = windows(stdlib_bytes, 32, 32, seed=4)
    held_out = windows(stdlib_bytes, 16, 32, seed=5)
    rtn = apply(model, _rtn3(), calibration=[calib]).model
    for config in (
        AWQConfig(bits=3, group_size=32, grid=8, objective="layers"),
        AWQConfig(bits=3, group_size=32, grid=8, duo=False),
    ):
        result = apply(model, config, calibration=[calib])
        assert all(r["awq_error_ratio"] <= 1.0 for r in result.record.layers)
        assert output_error(model, result.model, held_out) < output_error(model, rtn, held_out)


@pytest.mark.parametrize("field,value", [("clip_range", 0.99), ("clip_grid", 0), ("grid", 0)])
def test_bad_search_fields_are_one_line_errors(field, value):
    with pytest.raises(ModelscaleError, match=field):
        AWQConfig(**{field: value}).validate()


def test_gptq_after_the_scales_runs_on_the_scaled_hessian_and_beats_rtn(stdlib_bytes):
    model = tiny_gpt(n_layer=1)
    calib = windows(stdlib_bytes, 32, 32, seed=6)
    held_out = windows(stdlib_bytes, 16, 32, seed=7)
    rtn = apply(model, _rtn3(), calibration=[calib]).model
    result = apply(model, AWQConfig(bits=3, group_size=32, grid=8, quantizer="gptq"), calibration=[calib])
    assert all("obs_loss" in r and "awq_alpha" in r for r in result.record.layers)
    assert output_error(model, result.model, held_out) < output_error(model, rtn, held_out)


def test_large_groups_clip_once_after_alpha_and_still_beat_rtn(gpt_awq, stdlib_bytes):
    """clip_joint_limit=0 sends every group to the staged search (AutoAWQ's order), recorded per layer."""
    model, joint = gpt_awq
    assert {r["awq_clip_search"] for r in joint.record.layers} == {"joint"}
    calib = windows(stdlib_bytes, 32, 32, seed=1)
    staged = apply(model, AWQConfig(bits=3, group_size=32, grid=10, clip_joint_limit=0), calibration=[calib])
    assert {r["awq_clip_search"] for r in staged.record.layers} == {"after"}
    held_out = windows(stdlib_bytes, 16, 32, seed=7)
    plain = apply(model, _rtn3(), calibration=[calib]).model
    assert output_error(model, staged.model, held_out) < 0.8 * output_error(model, plain, held_out)
