"""Structured pruning (Torch-Pruning): shapes, exactness on dead units, options, and pickle-free reload."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from modelscale import load_compressed, save_compressed
from modelscale.core.apply import apply
from modelscale.core.errors import ModelscaleError
from modelscale.core.select import Target
from modelscale.techniques.prune.masks import attach_mask
from modelscale.techniques.prune.structured import StructuredPruneConfig, count_macs
from tests.contract.tiny_models import inputs_for, tiny_cnn, tiny_transformer

tvm = pytest.importorskip("torchvision.models")


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _mlp(widths=(64, 48, 48, 10), seed=0) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(widths) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


# ---- torchvision models ---------------------------------------------------------------------------

TORCHVISION = [
    ("resnet18", 32, {}),
    ("resnet50", 32, {}),
    ("mobilenet_v2", 32, {}),
    ("mobilenet_v3_small", 32, {}),
    ("efficientnet_b0", 32, {}),
    ("convnext_tiny", 32, {}),
    ("densenet121", 32, {}),  # concatenations
    ("vit_b_16", 224, {"prune_heads": True}),  # nn.MultiheadAttention heads; needs 224×224
]


@pytest.mark.parametrize(("name", "size", "extra"), TORCHVISION, ids=[t[0] for t in TORCHVISION])
def test_torchvision_models_shrink_keep_output_shape_and_reload(name, size, extra, tmp_path):
    torch.manual_seed(0)
    model = getattr(tvm, name)(num_classes=10).eval()
    x = torch.randn(1, 3, size, size)
    result = apply(model, StructuredPruneConfig(ratio=0.3, **extra), example_inputs=x, inplace=True)
    pruned = result.model
    with torch.no_grad():
        out = pruned(x)
    assert out.shape == (1, 10) and torch.isfinite(out).all()
    summary = result.record.summary
    assert _params(pruned) == summary["params_after"] < summary["params_before"]
    assert summary["macs_after"] < summary["macs_before"]
    assert summary["macs_after"] == count_macs(pruned, x)[0]
    assert result.record.layers and all(r["params_after"] <= r["params_before"] for r in result.record.layers)
    if name == "vit_b_16":
        attn = pruned.encoder.layers[0].self_attention
        assert (attn.num_heads, attn.head_dim) == (12 - 4, 64)  # ceil(0.3·12) heads gone, heads keep width
        assert pruned.hidden_dim == attn.embed_dim == 8 * 64
    # Reload without pickle onto a fresh, unpruned model of the same architecture.
    save_compressed(tmp_path / "m", pruned, [result.record])
    del model, pruned
    fresh = getattr(tvm, name)(num_classes=10)
    with torch.no_grad():
        torch.testing.assert_close(load_compressed(tmp_path / "m", fresh).eval()(x), out)


def test_round_to_and_keep_head_on_resnet18():
    model = tvm.resnet18(num_classes=10).eval()
    x = torch.randn(1, 3, 32, 32)
    pruned = apply(model, StructuredPruneConfig(ratio=0.3, round_to=8), example_inputs=x).model
    convs = [m for m in pruned.modules() if isinstance(m, nn.Conv2d)]
    assert all(c.out_channels % 8 == 0 for c in convs)
    assert any(c.out_channels not in (64, 128, 256, 512) for c in convs)  # something was pruned
    assert pruned.fc.out_features == 10  # keep_head
    assert pruned(x).shape == (1, 10)


def test_keep_head_false_prunes_the_classifier_outputs():
    model = _mlp()
    x = torch.randn(4, 64)
    kept = apply(model, StructuredPruneConfig(ratio=0.3), example_inputs=x).model
    cut = apply(model, StructuredPruneConfig(ratio=0.3, keep_head=False), example_inputs=x).model
    assert kept(x).shape == (4, 10)
    assert cut(x).shape == (4, 7)


# ---- exactness ------------------------------------------------------------------------------------


def test_ratio_zero_is_the_identity():
    model = tiny_cnn().eval()
    x, _ = inputs_for("cnn")
    result = apply(model, StructuredPruneConfig(ratio=0.0), example_inputs=x)
    assert torch.equal(result.model(x), model(x))
    assert all(
        torch.equal(a, b) for a, b in zip(result.model.state_dict().values(), model.state_dict().values())
    )
    assert result.record.summary["params_after"] == result.record.summary["params_before"]


def test_dead_units_are_removed_and_outputs_do_not_change():
    model = _mlp((16, 32, 8))
    dead = torch.arange(0, 32, 4)  # 8 of 32 hidden units do nothing
    with torch.no_grad():
        model[0].weight[dead] = 0
        model[0].bias[dead] = 0
        model[2].weight[:, dead] = 0
    x = torch.randn(5, 16)
    pruned = apply(model, StructuredPruneConfig(ratio=0.25, importance="l1"), example_inputs=x).model
    assert pruned[0].out_features == 24
    assert (pruned[0].weight.abs().sum(1) > 0).all()  # exactly the dead ones went
    torch.testing.assert_close(pruned(x), model(x))


def test_dead_heads_are_removed_from_zoo_style_attention_exactly():
    models = pytest.importorskip("modelscale.models")
    model = models.build_model("gpt", num_classes=256, block_size=16, n_layer=2, n_head=4, n_embd=32).eval()
    with torch.no_grad():
        for block in model.blocks:
            for proj in (block.attn.q_proj, block.attn.k_proj, block.attn.v_proj):
                proj.weight[8:16] = 0  # head 1 attends uniformly and contributes nothing
                proj.bias[8:16] = 0
            block.attn.out_proj.weight[:, 8:16] = 0
    x = torch.randint(0, 256, (2, 16))
    config = StructuredPruneConfig(
        ratio=0.25, prune_heads=True, target=Target(types=("Linear",), include=("*.attn.*",))
    )
    pruned = apply(model, config, example_inputs=x).model
    attn = pruned.blocks[0].attn
    assert (attn.n_head, attn.head_dim, attn.q_proj.out_features) == (3, 8, 24)
    torch.testing.assert_close(pruned(x), model(x))


def test_taylor_uses_gradients_and_removes_units_that_do_not_affect_the_loss():
    torch.manual_seed(0)
    model = _mlp((8, 16, 4))
    with torch.no_grad():
        model[0].weight[:4] *= 20  # large but useless: their outgoing weights are zero
        model[2].weight[:, :4] = 0
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(16, 8, generator=g), torch.randint(0, 4, (16,), generator=g)) for _ in range(2)]
    x = batches[0][0]
    taylor = StructuredPruneConfig(ratio=0.25, importance="taylor")
    pruned = apply(
        model, taylor, example_inputs=x, calibration=batches, loss_fn=nn.functional.cross_entropy
    ).model
    torch.testing.assert_close(pruned(x), model(x))  # only the useless units went
    assert model[0].weight.grad is None  # the input model is untouched
    by_norm = apply(model, StructuredPruneConfig(ratio=0.25, importance="l2"), example_inputs=x).model
    assert not torch.allclose(by_norm(x), model(x))  # magnitude keeps the big useless units
    with pytest.raises(ModelscaleError, match="calibration"):
        apply(model, taylor, example_inputs=x)


# ---- options --------------------------------------------------------------------------------------


@pytest.mark.parametrize("goal", [0.5])
def test_ratio_of_params_removes_about_that_share(goal):
    torch.manual_seed(0)
    block = [nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1)]
    model = nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), *block, nn.Flatten(), nn.Linear(64 * 64, 10)
    )
    x = torch.rand(1, 1, 8, 8)
    result = apply(model, StructuredPruneConfig(ratio=goal, ratio_of="params"), example_inputs=x)
    removed = 1 - _params(result.model) / _params(model)
    assert abs(removed - goal) < 0.03
    assert result.record.summary["channel_ratio"] < goal  # channels count twice in a conv chain


def test_iterative_steps_record_each_step():
    model = _mlp((64, 96, 96, 10))
    x = torch.randn(2, 64)
    once = apply(model, StructuredPruneConfig(ratio=0.5), example_inputs=x).model
    result = apply(model, StructuredPruneConfig(ratio=0.5, iterative_steps=3), example_inputs=x)
    steps = result.record.summary["steps"]
    assert [round(s["channel_ratio"], 4) for s in steps] == [0.1667, 0.3333, 0.5]
    assert steps[0]["params"] > steps[1]["params"] > steps[2]["params"] == _params(result.model)
    assert [m.out_features for m in result.model if isinstance(m, nn.Linear)] == [
        m.out_features for m in once if isinstance(m, nn.Linear)
    ]


def test_global_scope_takes_more_from_the_weaker_layer():
    model = _mlp((32, 64, 64, 10))
    with torch.no_grad():
        model[0].weight *= 0.05
        model[0].bias *= 0.05
    x = torch.randn(2, 32)
    pruned = apply(
        model, StructuredPruneConfig(ratio=0.4, scope="global", importance="l1"), example_inputs=x
    ).model
    assert pruned[0].out_features < pruned[2].out_features
    uniform = apply(model, StructuredPruneConfig(ratio=0.4), example_inputs=x).model
    assert uniform[0].out_features == uniform[2].out_features == int(64 * (1 - 0.4))


def test_target_and_overrides_choose_layers():
    model = _mlp()
    x = torch.randn(2, 64)
    excluded = apply(
        model, StructuredPruneConfig(ratio=0.5, target=Target(exclude=("2",))), example_inputs=x
    ).model
    assert (excluded[0].out_features, excluded[2].out_features) == (24, 48)
    over = StructuredPruneConfig(ratio=0.25, target=Target(overrides={"0": {"ratio": 0.5}}))
    pruned = apply(model, over, example_inputs=x).model
    assert (pruned[0].out_features, pruned[2].out_features) == (24, 36)


def test_errors_are_one_line_and_name_the_fix():
    model = _mlp()
    with pytest.raises(ModelscaleError, match="example_inputs"):
        apply(model, StructuredPruneConfig())
    with pytest.raises(ModelscaleError, match="overrides only 'ratio'"):
        StructuredPruneConfig(target=Target(overrides={"0": {"scope": "global"}}))
    with pytest.raises(ModelscaleError, match="bake_masks"):
        masked = _mlp()
        attach_mask(masked[0], torch.ones_like(masked[0].weight, dtype=torch.bool))
        apply(masked, StructuredPruneConfig(), example_inputs=torch.randn(1, 64))
    with pytest.raises(ModelscaleError, match="BatchNorm"):
        apply(model, StructuredPruneConfig(importance="bn_scale"), example_inputs=torch.randn(1, 64))


def test_frozen_layers_stay_frozen():
    model = _mlp()
    model[0].requires_grad_(False)
    pruned = apply(model, StructuredPruneConfig(ratio=0.3), example_inputs=torch.randn(2, 64)).model
    assert pruned[0].out_features < 48
    assert not pruned[0].weight.requires_grad and pruned[2].weight.requires_grad


def test_bn_scale_importance_prunes_small_gammas():
    model = tiny_cnn().eval()
    with torch.no_grad():
        model[1].weight[:4] = 1e-3
    x, _ = inputs_for("cnn")
    pruned = apply(model, StructuredPruneConfig(ratio=0.5, importance="bn_scale"), example_inputs=x).model
    assert pruned[1].num_features == 4 and (pruned[1].weight.abs() > 1e-2).all()


# ---- save / reload without pickle -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("build", "x", "config"),
    [
        (
            lambda: tvm.mobilenet_v3_small(num_classes=10),
            torch.randn(1, 3, 32, 32),
            StructuredPruneConfig(round_to=4),
        ),
        (
            lambda: tvm.resnet18(num_classes=10),
            torch.randn(1, 3, 32, 32),
            StructuredPruneConfig(scope="global"),
        ),
        (
            tiny_transformer,
            inputs_for("transformer")[0],
            StructuredPruneConfig(prune_heads=True, iterative_steps=2),
        ),
    ],
    ids=["mobilenet_v3_small_round_to", "resnet18_global", "transformer_heads_2_steps"],
)
def test_reload_round_trip_onto_a_fresh_model(build, x, config, tmp_path):
    torch.manual_seed(0)
    result = apply(build().eval(), config, example_inputs=x, inplace=True)
    with torch.no_grad():
        expected = result.model(x)
    save_compressed(tmp_path / "m", result.model, [result.record])
    assert not list(tmp_path.glob("m/*.pt")) and not list(tmp_path.glob("m/*.pkl"))
    reloaded = load_compressed(tmp_path / "m", build()).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x), expected)
    assert _params(reloaded) == result.record.summary["params_after"]


def test_zoo_models_prune_with_working_forward(tmp_path):
    models = pytest.importorskip("modelscale.models")
    gpt_kwargs = dict(num_classes=256, block_size=16, n_layer=2, n_head=4, n_embd=32, tie_weights=True)
    gpt = models.build_model("gpt", **gpt_kwargs).eval()
    tokens = torch.randint(0, 256, (2, 16))
    result = apply(gpt, StructuredPruneConfig(ratio=0.3), example_inputs=tokens)
    pruned = result.model
    assert pruned(tokens).shape == (2, 16, 256)
    assert pruned.lm_head.weight is pruned.tok_emb.weight  # tied weights stay tied
    assert pruned.blocks[0].attn.q_proj.out_features == 4 * pruned.blocks[0].attn.head_dim < 32
    save_compressed(tmp_path / "gpt", pruned, [result.record])
    reloaded = load_compressed(tmp_path / "gpt", models.build_model("gpt", **gpt_kwargs)).eval()
    torch.testing.assert_close(reloaded(tokens), pruned(tokens))

    cnn = models.build_model("cnn", num_classes=10, input_shape=(1, 8, 8)).eval()
    x = torch.rand(2, 1, 8, 8)
    result = apply(cnn, StructuredPruneConfig(ratio=0.3), example_inputs=x)
    assert result.model(x).shape == (2, 10)
    assert result.record.summary["params_after"] < result.record.summary["params_before"]


def test_hf_bert_and_gpt2_configs(tmp_path):
    transformers = pytest.importorskip("transformers")
    bert_config = transformers.BertConfig(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        num_labels=3,
    )
    bert = transformers.BertForSequenceClassification(bert_config).eval()
    ids = torch.randint(0, 64, (2, 8))
    result = apply(bert, StructuredPruneConfig(ratio=0.3), example_inputs={"input_ids": ids})
    attn = result.model.bert.encoder.layer[0].attention.self
    assert attn.query.out_features == attn.all_head_size == 4 * attn.attention_head_size < 32
    assert result.model(input_ids=ids).logits.shape == (2, 3)
    assert result.record.summary["params_after"] < result.record.summary["params_before"]

    gpt2_config = transformers.GPT2Config(vocab_size=64, n_positions=16, n_embd=32, n_layer=2, n_head=4)
    gpt2 = transformers.GPT2LMHeadModel(gpt2_config).eval()
    result = apply(gpt2, StructuredPruneConfig(ratio=0.3), example_inputs={"input_ids": ids})
    pruned = result.model
    logits = pruned(input_ids=ids).logits
    assert logits.shape == (2, 8, 64)
    assert pruned.lm_head.weight is pruned.transformer.wte.weight
    assert pruned.transformer.h[0].mlp.c_fc.nf < 128 and pruned.transformer.wte.embedding_dim < 32
    assert any(
        "fused q/k/v" in note for note in result.record.notes
    )  # GPT-2's fused attention keeps its width
    save_compressed(tmp_path / "gpt2", pruned, [result.record])
    reloaded = load_compressed(tmp_path / "gpt2", transformers.GPT2LMHeadModel(gpt2_config)).eval()
    torch.testing.assert_close(reloaded(input_ids=ids).logits, logits)
