"""Every registered technique passes the same checks (DESIGN.md, testing ladder step 5)."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from modelscale.core.apply import apply
from modelscale.core.checkpoint import load_compressed, save_compressed
from modelscale.core.registry import config_from_dict, get_technique, list_techniques
from tests.contract.tiny_models import BUILDERS, inputs_for

TECHNIQUES = list_techniques()


def test_registry_is_not_empty():
    assert "magnitude_prune" in TECHNIQUES


@pytest.mark.parametrize("name", TECHNIQUES)
def test_defaults_construct_and_round_trip(name):
    cls = get_technique(name).config_cls
    config = cls()
    assert config.type == name
    as_dict = config.to_dict()
    assert as_dict["type"] == name and as_dict["version"] == cls.version
    assert config_from_dict(json.loads(json.dumps(as_dict))) == config
    assert config_from_dict(yaml.safe_load(config.to_yaml())) == config
    assert config_from_dict(json.loads(config.to_json())) == config


@pytest.mark.parametrize("name", TECHNIQUES)
def test_unknown_field_rejected(name):
    from modelscale.core.errors import ModelscaleError

    with pytest.raises(ModelscaleError, match="unknown field"):
        config_from_dict({"type": name, "no_such_field": 1})


@pytest.mark.parametrize("kind", sorted(BUILDERS))
@pytest.mark.parametrize("name", TECHNIQUES)
def test_applies_saves_and_reloads(name, kind, tmp_path):
    if getattr(get_technique(name).config_cls, "applies_to", "any") == "hf":
        pytest.skip(
            f"{name} applies only to hf: transformers models; checked on hf:tiny-gpt2 in test_contract_hf.py"
        )
    model = BUILDERS[kind]().eval()
    x, y = inputs_for(kind)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    reference = model(x)
    config = get_technique(name).config_cls()
    calibration = [inputs_for(kind, batch=8) for _ in range(2)]
    result = apply(
        model, config, calibration=calibration, example_inputs=x, loss_fn=torch.nn.functional.cross_entropy
    )

    # The input model is untouched.
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)

    out = result.model.eval()(x)
    assert out.shape == reference.shape
    assert torch.isfinite(out).all()
    assert result.record.technique == name
    assert config_from_dict(result.record.config) == config
    json.dumps(result.record.to_dict())  # the record is plain data

    save_compressed(tmp_path / "saved", result.model, [result.record])
    reloaded = load_compressed(tmp_path / "saved", BUILDERS[kind]()).eval()
    torch.testing.assert_close(reloaded(x), out, rtol=1e-5, atol=1e-6)
