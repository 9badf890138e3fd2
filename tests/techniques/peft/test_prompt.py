"""Prompt tuning and prefix tuning on hf: models: exact shapes and parameter counts, training, adapters."""

from __future__ import annotations

import copy

import pytest
import torch

from modelscale.core.apply import apply
from modelscale.core.errors import ModelscaleError
from modelscale.techniques.peft.prompt import (
    PrefixTuningConfig,
    PromptTuningConfig,
    load_peft_adapter,
    save_peft_adapter,
)

pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

N = 6  # virtual tokens
D = 64  # hidden size of the tiny configs


def _build(name: str = "tiny-gpt2", task: str = "lm", block_size: int = 32, classes: int = 3):
    from modelscale.models import build_model

    torch.manual_seed(7)
    return build_model(
        f"hf:{name}", task=task, block_size=block_size, num_classes=256 if task == "lm" else classes
    )


def _tokens(batch: int = 2, length: int = 10) -> torch.Tensor:
    return torch.randint(0, 256, (batch, length), generator=torch.Generator().manual_seed(1))


def test_prompt_tuning_lm_matches_prepended_embeddings_and_keeps_length():
    base = _build().eval()
    x = _tokens()
    result = apply(base, PromptTuningConfig(num_virtual_tokens=N))
    model = result.model.eval()
    out = model(x)
    assert out.shape == (2, 10, 256)
    # Independent computation: the frozen transformer on [P ; E(x)], positions of the prompt dropped.
    prompt = model.hf.prompt_encoder["default"].embedding.weight
    embeds = torch.cat([prompt.expand(2, -1, -1), base.hf.transformer.wte(x)], dim=1)
    expected = base.hf(inputs_embeds=embeds).logits[:, N:]
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(out, base(x))
    trainable = {n: p.numel() for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"hf.prompt_encoder.default.embedding.weight": N * D}
    assert result.record.summary["trainable_params"] == N * D
    assert result.record.summary["peft_task_type"] == "CAUSAL_LM"


def test_prefix_tuning_trains_one_key_and_value_per_layer_and_changes_attention():
    base = _build("tiny-llama").eval()
    x = _tokens()
    result = apply(base, PrefixTuningConfig(num_virtual_tokens=N))
    model = result.model.eval()
    out = model(x)
    assert out.shape == base(x).shape and torch.isfinite(out).all()
    layers, kv_width = 2, D // 2  # tiny-llama: 2 layers, 4 heads sharing 2 key/value heads of 16
    assert result.record.summary["trainable_params"] == N * 2 * layers * kv_width
    out.sum().backward()
    grads = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert grads == {"hf.prompt_encoder.default.embedding.weight"}
    with torch.no_grad():
        model.hf.prompt_encoder["default"].embedding.weight.zero_()
    assert not torch.allclose(model(x), out)  # the prefix reaches the output


def test_prefix_projection_adds_the_mlp():
    result = apply(_build(), PrefixTuningConfig(num_virtual_tokens=N, projection=True, projection_hidden=16))
    # table n·d, then Linear(d, 16) and Linear(16, 2·L·d)
    expected = N * D + (D * 16 + 16) + (16 * 2 * 2 * D + 2 * 2 * D)
    assert result.record.summary["trainable_params"] == expected


@pytest.mark.parametrize(
    "config", [PromptTuningConfig(num_virtual_tokens=N), PrefixTuningConfig(num_virtual_tokens=N)]
)
def test_classification_trains_the_head_too(config):
    base = _build("tiny-bert", task="classification").eval()
    result = apply(base, config)
    out = result.model.eval()(_tokens())
    assert out.shape == (2, 3) and torch.isfinite(out).all()
    head = D * 3 + 3
    prompt = N * D if isinstance(config, PromptTuningConfig) else N * 2 * 2 * D
    assert result.record.summary["trainable_params"] == prompt + head


@pytest.mark.parametrize(
    ("config", "lr"),
    [(PromptTuningConfig(num_virtual_tokens=8), 0.03), (PrefixTuningConfig(num_virtual_tokens=8), 0.1)],
)
def test_training_lowers_loss_and_leaves_the_model_frozen(config, lr):
    from modelscale.data import load_data
    from modelscale.train import TrainConfig, evaluate, fit

    data = load_data("pystdlib", block_size=24, max_bytes=60_000)
    model = apply(_build(block_size=32), config).model
    frozen = {n: p.clone() for n, p in model.named_parameters() if not p.requires_grad}
    before = evaluate(model, data.val, task="lm")["loss"]
    fit(model, data, TrainConfig(epochs=1, max_steps=25, lr=lr, batch_size=16, progress=False, device="cpu"))
    after = evaluate(model, data.val, task="lm")["loss"]
    # the frozen model is random, so a prompt can only shift its predictions a little (measured: −0.05 / −0.18)
    assert after < before - 0.03
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)


def test_too_long_input_is_a_one_line_error():
    model = apply(_build(block_size=32), PromptTuningConfig(num_virtual_tokens=N)).model
    model(_tokens(length=32 - N))  # fits exactly
    with pytest.raises(ModelscaleError, match="exceed the model's 32 positions; feed at most 26"):
        model(_tokens(length=32 - N + 1))


@pytest.mark.parametrize(
    "config", [PromptTuningConfig(num_virtual_tokens=N), PrefixTuningConfig(num_virtual_tokens=N)]
)
@pytest.mark.parametrize("task", ["lm", "classification"])
def test_peft_format_round_trip(config, task, tmp_path):
    base = _build(task=task).eval()
    model = apply(base, config).model.eval()
    with torch.no_grad():  # trained-looking values, so a load that does nothing cannot pass
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.1)
    x = _tokens()
    expected = model(x)
    save_peft_adapter(model, tmp_path / "adapter")
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {
        p.name for p in (tmp_path / "adapter").iterdir()
    }
    # into the plain base model (peft's from_pretrained), frozen unless asked
    loaded = load_peft_adapter(copy.deepcopy(base), tmp_path / "adapter").eval()
    assert isinstance(loaded.hf, peft.PeftModel)
    assert not any(p.requires_grad for p in loaded.parameters())
    torch.testing.assert_close(loaded(x), expected, rtol=0, atol=0)
    # into a model that already carries a fresh adapter of the same kind
    fresh = apply(base, config).model.eval()
    assert not torch.equal(fresh(x), expected)
    torch.testing.assert_close(load_peft_adapter(fresh, tmp_path / "adapter")(x), expected, rtol=0, atol=0)


def test_adapter_errors_are_one_line(tmp_path):
    model = apply(_build(), PromptTuningConfig(num_virtual_tokens=N)).model
    save_peft_adapter(model, tmp_path / "a")
    other = apply(_build(), PromptTuningConfig(num_virtual_tokens=N + 1)).model
    with pytest.raises(ModelscaleError, match="with 6 tokens"):
        load_peft_adapter(other, tmp_path / "a")
    with pytest.raises(ModelscaleError, match="no adapter_config.json"):
        load_peft_adapter(other, tmp_path)
    with pytest.raises(ModelscaleError, match="carries no peft adapter"):
        save_peft_adapter(_build(), tmp_path / "b")
    with pytest.raises(ModelscaleError, match="already carries a peft PROMPT_TUNING adapter"):
        apply(model, PrefixTuningConfig())


def test_config_validation():
    with pytest.raises(ModelscaleError, match="num_virtual_tokens must be >= 1"):
        PromptTuningConfig(num_virtual_tokens=0)
    with pytest.raises(ModelscaleError, match="selects no layers"):
        PrefixTuningConfig(target={"types": ["Linear"]})
    with pytest.raises(ModelscaleError, match="init must be one of"):
        PromptTuningConfig(init="text")
