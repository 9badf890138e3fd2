"""Names, specs and argument validation of the model zoo registry."""

from __future__ import annotations

import json

import pytest
import torch

from modelscale.core.errors import ModelscaleError
from modelscale.models import build_model, list_models, model_spec


def test_list_models_names_every_family_and_form():
    names = list_models()
    for expected in ("mlp", "cnn", "gpt", "torchvision:<name>", "hf:<dir|config.json>", "hf:tiny-gpt2"):
        assert expected in names
    assert names == sorted(names)


@pytest.mark.parametrize("name", ["resnet", "mlpp", "", "mlp:x", "gpt2"])
def test_unknown_name_lists_valid_names(name):
    with pytest.raises(ModelscaleError) as info:
        build_model(name)
    message = str(info.value)
    assert "\n" not in message
    for valid in ("mlp", "cnn", "gpt", "torchvision:<name>", "hf:<dir|config.json>", "hf:tiny-llama"):
        assert valid in message


@pytest.mark.parametrize(
    ("name", "usage"), [("hf", "hf:<dir|config.json>"), ("torchvision:", "torchvision:<name>")]
)
def test_prefix_family_without_argument_shows_its_form(name, usage):
    with pytest.raises(ModelscaleError, match="needs an argument") as info:
        build_model(name)
    assert usage in str(info.value)


def test_unknown_kwarg_lists_the_builders_options():
    with pytest.raises(ModelscaleError, match=r"does not take n_head.*hidden, layers"):
        build_model("mlp", n_head=2)


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"num_classes": 0}, "num_classes"),
        ({"num_classes": True}, "num_classes"),
        ({"input_shape": (1, 0, 8)}, "input_shape"),
        ({"input_shape": "1x8x8"}, "input_shape"),
        ({"width": 0}, "width"),
        ({"depth": -1.0}, "depth"),
        ({"width": float("nan")}, "width"),
        ({"dropout": 1.0}, "dropout"),
    ],
)
def test_bad_shared_arguments_are_one_line_errors(kwargs, pattern):
    with pytest.raises(ModelscaleError, match=pattern) as info:
        build_model("mlp", **kwargs)
    assert "\n" not in str(info.value)


def test_spec_is_json_and_rebuilds_the_same_architecture():
    kwargs = {"num_classes": 7, "input_shape": (3, 16, 16), "width": 0.5, "depth": 2.0, "channels": (8, 16)}
    spec = model_spec("cnn", **kwargs)
    restored = json.loads(json.dumps(spec))
    assert restored == spec
    assert spec["name"] == "cnn" and spec["input_shape"] == [3, 16, 16] and spec["channels"] == [8, 16]
    a, b = build_model("cnn", **kwargs), build_model(**restored)
    assert [(k, v.shape) for k, v in a.state_dict().items()] == [
        (k, v.shape) for k, v in b.state_dict().items()
    ]
    assert a.modelscale_spec == spec
    assert b(torch.rand(2, 3, 16, 16)).shape == (2, 7)


def test_spec_never_stores_allow_pickle_and_keeps_weights_only_when_given():
    assert "weights" not in model_spec("mlp")
    spec = model_spec("mlp", weights="w.pt", allow_pickle=True)
    assert spec["weights"] == "w.pt" and "allow_pickle" not in spec


def test_spec_rejects_non_json_options_and_unknown_names():
    with pytest.raises(ModelscaleError, match="not JSON data"):
        model_spec("gpt", n_head=object())
    with pytest.raises(ModelscaleError, match="unknown model"):
        model_spec("nope")


def test_built_model_spec_lets_load_compressed_rebuild_it(tmp_path):
    from modelscale import load_compressed, save_compressed

    model = build_model("gpt", block_size=8, n_layer=1, n_embd=32).eval()
    save_compressed(tmp_path / "saved", model, model_spec=model.modelscale_spec)
    loaded = load_compressed(tmp_path / "saved").eval()
    tokens = torch.randint(0, 256, (2, 8))
    with torch.no_grad():
        assert torch.equal(model(tokens), loaded(tokens))
