"""`hf:` models: built-in tiny configs, local directories and config files; logits come back as tensors.

transformers is a dev dependency (optional extra `hf` for users), so these tests require it.
"""

from __future__ import annotations

import json

import pytest
import torch

from modelscale.core.errors import ModelscaleError
from modelscale.models import build_model
from modelscale.models.hf import HFLogits


@pytest.mark.parametrize("name", ["hf:tiny-gpt2", "hf:tiny-bert", "hf:tiny-llama"])
def test_tiny_configs_build_and_forward_for_both_tasks(name):
    tokens = torch.randint(0, 256, (2, 16))
    clf = build_model(name, num_classes=3, block_size=16).eval()
    lm = build_model(name, task="lm", block_size=16).eval()
    assert isinstance(clf, HFLogits) and isinstance(clf.hf, torch.nn.Module)
    with torch.no_grad():
        assert clf(tokens).shape == (2, 3)
        assert lm(tokens).shape == (2, 16, 256)
        mask = torch.ones_like(tokens)
        assert torch.equal(lm(tokens, attention_mask=mask), lm(tokens))


def test_tiny_width_and_depth_grow_the_model():
    sizes = [
        sum(p.numel() for p in build_model("hf:tiny-llama", task="lm", width=w, depth=d).parameters())
        for w, d in ((0.5, 1.0), (1.0, 1.0), (1.0, 2.0), (2.0, 2.0))
    ]
    assert sizes == sorted(sizes) and len(set(sizes)) == 4


def test_local_directory_and_config_file(tmp_path):
    source = build_model("hf:tiny-gpt2", task="lm", block_size=16).eval()
    source.hf.save_pretrained(tmp_path / "gpt2")
    loaded = build_model(f"hf:{tmp_path / 'gpt2'}", task="lm").eval()
    tokens = torch.randint(0, 256, (2, 16))
    with torch.no_grad():
        assert torch.equal(source(tokens), loaded(tokens))
    fresh = build_model(f"hf:{tmp_path / 'gpt2' / 'config.json'}", task="lm", n_layer=1)
    assert fresh.hf.config.n_layer == 1
    clf = build_model(f"hf:{tmp_path / 'gpt2'}", num_classes=4).eval()
    assert clf(tokens).shape == (2, 4)
    assert any("newly initialised" in note for note in clf.modelscale_notes)


def test_hf_weights_round_trip_with_tied_embeddings(tmp_path):
    from safetensors.torch import save_model

    model = build_model("hf:tiny-gpt2", task="lm", block_size=16).eval()
    save_model(model, str(tmp_path / "m.safetensors"))
    loaded = build_model("hf:tiny-gpt2", task="lm", block_size=16, weights=str(tmp_path / "m.safetensors"))
    tokens = torch.randint(0, 256, (1, 16))
    with torch.no_grad():
        assert torch.equal(model(tokens), loaded.eval()(tokens))


def test_hf_errors_are_one_line(tmp_path):
    with pytest.raises(ModelscaleError, match="nothing is downloaded"):
        build_model("hf:gpt2")
    with pytest.raises(ModelscaleError, match="task must be one of"):
        build_model("hf:tiny-bert", task="seq2seq")
    with pytest.raises(ModelscaleError, match="no config option 'not_a_field'"):
        build_model("hf:tiny-bert", not_a_field=1)
    with pytest.raises(ModelscaleError, match="no config.json"):
        build_model(f"hf:{tmp_path}")
    (tmp_path / "cfg.json").write_text(json.dumps({"hidden_size": 8}))
    with pytest.raises(ModelscaleError, match="model_type"):
        build_model(f"hf:{tmp_path / 'cfg.json'}")
    with pytest.raises(ModelscaleError, match="only to the built-in"):
        build_model(f"hf:{tmp_path / 'cfg.json'}", width=2.0)
