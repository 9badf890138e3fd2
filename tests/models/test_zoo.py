"""The built-in mlp, cnn and gpt families: shapes, size multipliers, causality, prunable heads."""

from __future__ import annotations

import pytest
import torch

from modelscale.core.errors import ModelscaleError
from modelscale.models import build_model
from modelscale.models.gpt import CausalSelfAttention


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    ("name", "input_shape", "num_classes"),
    [("mlp", (1, 8, 8), 10), ("mlp", (20,), 3), ("cnn", (1, 8, 8), 10), ("cnn", (3, 32, 32), 100)],
)
def test_classifiers_map_batches_to_logits(name, input_shape, num_classes):
    model = build_model(name, num_classes=num_classes, input_shape=input_shape, dropout=0.1)
    out = model(torch.rand(3, *input_shape))
    assert out.shape == (3, num_classes)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", ["mlp", "cnn", "gpt"])
@pytest.mark.parametrize("knob", ["width", "depth"])
def test_width_and_depth_grow_parameter_count(name, knob):
    kwargs = {"block_size": 16} if name == "gpt" else {}
    multipliers = (0.5, 1.0, 2.0, 3.0) if knob == "width" or name != "cnn" else (1.0, 2.0, 3.0)
    counts = [n_params(build_model(name, **{knob: m}, **kwargs)) for m in multipliers]
    assert counts == sorted(counts) and len(set(counts)) == len(counts), counts


def test_mlp_default_and_multiplied_sizes():
    linears = [m for m in build_model("mlp").modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(64, 128), (128, 128), (128, 10)]
    linears = [
        m for m in build_model("mlp", width=0.5, depth=0.1).modules() if isinstance(m, torch.nn.Linear)
    ]
    assert [(m.in_features, m.out_features) for m in linears] == [(64, 64), (64, 10)]


def test_cnn_depth_adds_convs_per_stage_and_needs_an_image_shape():
    convs = lambda m: sum(isinstance(x, torch.nn.Conv2d) for x in m.modules())  # noqa: E731
    assert convs(build_model("cnn")) == 3
    assert convs(build_model("cnn", depth=2)) == 6
    assert convs(build_model("cnn", depth=0.1)) == 3  # at least one conv per stage
    assert convs(build_model("cnn", depth=1.5, convs=1)) == 6  # rounds half up
    with pytest.raises(ModelscaleError, match="channels, height, width"):
        build_model("cnn", input_shape=(64,))


def test_gpt_shapes_and_scaled_sizes():
    model = build_model("gpt", block_size=16, width=0.75, depth=2.0, n_head=4)
    assert (model.n_embd, model.n_layer, model.n_head) == (96, 4, 4)
    assert all(b.attn.head_dim == 24 for b in model.blocks)
    logits = model(torch.randint(0, 256, (2, 16)))
    assert logits.shape == (2, 16, 256) and logits.dtype == torch.float32
    # width rounds n_embd to a multiple of n_head
    assert build_model("gpt", n_embd=128, n_head=6, width=1.0).n_embd % 6 == 0


def test_gpt_takes_vocab_from_num_classes_and_block_size_from_1d_input():
    model = build_model("gpt", num_classes=300, input_shape=(24,))
    assert (model.vocab_size, model.block_size) == (300, 24)
    with pytest.raises(ModelscaleError, match="vocab_size"):
        build_model("gpt", num_classes=300, vocab_size=256)
    with pytest.raises(ModelscaleError, match="block_size"):
        model(torch.zeros(1, 25, dtype=torch.long))


def test_gpt_is_causal_exactly():
    model = build_model("gpt", block_size=32, n_layer=2).eval()
    tokens = torch.randint(0, 256, (2, 32))
    changed = tokens.clone()
    changed[:, 20] = (changed[:, 20] + 1) % 256
    with torch.no_grad():
        a, b = model(tokens), model(changed)
    assert torch.equal(a[:, :20], b[:, :20])
    assert not torch.equal(a[:, 20:], b[:, 20:])


def test_gpt_tied_weights_share_one_tensor():
    model = build_model("gpt", block_size=8, tie_weights=True)
    assert model.lm_head.weight is model.tok_emb.weight
    assert n_params(model) == n_params(build_model("gpt", block_size=8)) - 256 * 128


def test_gpt_attention_heads_are_prunable_with_torch_pruning():
    import torch_pruning as tp

    model = build_model("gpt", block_size=16, n_layer=2, n_head=4, n_embd=64).eval()
    tokens = torch.randint(0, 256, (2, 16))
    attns = [m for m in model.modules() if isinstance(m, CausalSelfAttention)]
    heads = {lin: a.n_head for a in attns for lin in (a.q_proj, a.k_proj, a.v_proj)}
    pruner = tp.pruner.MetaPruner(
        model,
        tokens,
        importance=tp.importance.GroupMagnitudeImportance(p=2),
        pruning_ratio=0.5,
        num_heads=heads,
        prune_num_heads=True,
        prune_head_dims=False,
        head_pruning_ratio=0.5,
        ignored_layers=[model.lm_head, model.tok_emb, model.pos_emb],
    )
    pruner.step()
    for a in attns:
        a.n_head = pruner.num_heads[a.q_proj]
        assert a.n_head == 2 and a.q_proj.out_features == 2 * a.head_dim == a.out_proj.in_features
        assert a.k_proj.out_features == a.v_proj.out_features == a.q_proj.out_features
    assert model(tokens).shape == (2, 16, 256)
