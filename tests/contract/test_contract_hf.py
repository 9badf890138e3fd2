"""The contract checks for techniques that apply only to `hf:` transformers models (`applies_to = "hf"`).

`test_contract.py` skips these techniques on the plain tiny MLP/CNN/transformer; here they run the
same checks on `hf:tiny-gpt2` (causal LM and sequence classification), and the plain models must be
refused with a one-line error that names the supported models.
"""

from __future__ import annotations

import json

import pytest
import torch

from modelscale import load_compressed, save_compressed
from modelscale.core.apply import apply
from modelscale.core.errors import ModelscaleError
from modelscale.core.registry import config_from_dict, get_technique, list_techniques
from tests.contract.tiny_models import BUILDERS, inputs_for

pytest.importorskip("transformers")
pytest.importorskip("peft")

HF_ONLY = [n for n in list_techniques() if get_technique(n).applies_to == "hf"]


def test_prompt_and_prefix_tuning_are_hf_only():
    assert {"prefix_tuning", "prompt_tuning"} <= set(HF_ONLY)


def _tiny_gpt2(task: str):
    from modelscale.models import build_model

    torch.manual_seed(5)
    return build_model("hf:tiny-gpt2", task=task, block_size=32, num_classes=256 if task == "lm" else 5)


@pytest.mark.parametrize("task", ["lm", "classification"])
@pytest.mark.parametrize("name", HF_ONLY)
def test_applies_saves_and_reloads_on_tiny_gpt2(name, task, tmp_path):
    model = _tiny_gpt2(task).eval()
    x = torch.randint(0, 256, (3, 12), generator=torch.Generator().manual_seed(4))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    reference = model(x)
    config = get_technique(name).config_cls()
    result = apply(model, config, example_inputs=x, loss_fn=torch.nn.functional.cross_entropy)

    after = model.state_dict()  # the input model is untouched
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)

    out = result.model.eval()(x)
    assert out.shape == reference.shape
    assert torch.isfinite(out).all()
    assert result.record.technique == name
    assert config_from_dict(result.record.config) == config
    json.dumps(result.record.to_dict())

    save_compressed(tmp_path / "saved", result.model, [result.record])
    reloaded = load_compressed(tmp_path / "saved", _tiny_gpt2(task)).eval()
    torch.testing.assert_close(reloaded(x), out, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", sorted(BUILDERS))
@pytest.mark.parametrize("name", HF_ONLY)
def test_plain_models_are_refused_in_one_line(name, kind):
    x, _ = inputs_for(kind)
    with pytest.raises(ModelscaleError, match="applies only to transformers models: hf:tiny-gpt2") as info:
        apply(BUILDERS[kind](), get_technique(name).config_cls(), example_inputs=x)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("name", HF_ONLY)
def test_hf_only_technique_passes_check_technique(name):
    from modelscale.testing import check_technique

    report = check_technique(get_technique(name).config_cls())
    assert report.passed == ["registered", "round-trip", "hf:tiny-gpt2: apply, save, reload"]
