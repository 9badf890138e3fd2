"""Loading weights: safetensors and torch state dicts, pickle refused unless allowed, clear mismatches."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file, save_model

from modelscale.core.errors import ModelscaleError
from modelscale.models import build_model


def assert_same_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def trained_cnn() -> torch.nn.Module:
    model = build_model("cnn", width=0.25)
    model(torch.rand(8, 1, 8, 8))  # moves BatchNorm running stats away from their defaults
    return model


def test_safetensors_round_trip(tmp_path):
    model = trained_cnn()
    save_file(model.state_dict(), tmp_path / "w.safetensors")
    torch.manual_seed(123)
    loaded = build_model("cnn", width=0.25, weights=str(tmp_path / "w.safetensors"))
    assert_same_state(model, loaded)
    assert loaded.modelscale_spec["weights"] == str(tmp_path / "w.safetensors")


def test_torch_state_dict_round_trip_including_common_wrappers(tmp_path):
    model = trained_cnn()
    torch.save(model.state_dict(), tmp_path / "plain.pt")
    torch.save({"state_dict": model.state_dict(), "epoch": 3}, tmp_path / "wrapped.pt")
    torch.save({f"module.{k}": v for k, v in model.state_dict().items()}, tmp_path / "ddp.pt")
    for name in ("plain.pt", "wrapped.pt", "ddp.pt"):
        torch.manual_seed(7)
        assert_same_state(model, build_model("cnn", width=0.25, weights=str(tmp_path / name)))


def test_pickled_whole_model_needs_allow_pickle(tmp_path):
    model = trained_cnn()
    torch.save(model, tmp_path / "whole.pt")
    with pytest.raises(ModelscaleError, match="allow_pickle") as info:
        build_model("cnn", width=0.25, weights=str(tmp_path / "whole.pt"))
    assert "\n" not in str(info.value)
    loaded = build_model("cnn", width=0.25, weights=str(tmp_path / "whole.pt"), allow_pickle=True)
    assert_same_state(model, loaded)


def test_mismatched_keys_name_the_first_few(tmp_path):
    save_file(build_model("mlp").state_dict(), tmp_path / "mlp.safetensors")
    with pytest.raises(ModelscaleError) as info:
        build_model("cnn", weights=str(tmp_path / "mlp.safetensors"))
    message = str(info.value)
    assert "\n" not in message
    assert "missing classifier.weight" in message or "missing features.0.0.bn.bias" in message
    assert "unexpected features.1.bias" in message and "more)" in message


def test_shape_mismatch_is_one_line(tmp_path):
    torch.save(build_model("mlp").state_dict(), tmp_path / "wide.pt")
    with pytest.raises(ModelscaleError, match="size mismatch") as info:
        build_model("mlp", width=0.5, weights=str(tmp_path / "wide.pt"))
    assert "\n" not in str(info.value)


def test_missing_file_and_folder_are_clear(tmp_path):
    with pytest.raises(ModelscaleError, match="not found"):
        build_model("mlp", weights=str(tmp_path / "nope.safetensors"))
    with pytest.raises(ModelscaleError, match="load_compressed"):
        build_model("mlp", weights=str(tmp_path))


def test_gpt_with_tied_weights_round_trips_through_safetensors(tmp_path):
    model = build_model("gpt", block_size=8, n_layer=1, n_embd=32, tie_weights=True).eval()
    save_model(model, str(tmp_path / "gpt.safetensors"))  # stores the shared tensor once
    loaded = build_model(
        "gpt", block_size=8, n_layer=1, n_embd=32, tie_weights=True, weights=str(tmp_path / "gpt.safetensors")
    ).eval()
    assert loaded.lm_head.weight is loaded.tok_emb.weight
    tokens = torch.randint(0, 256, (2, 8))
    with torch.no_grad():
        assert torch.equal(model(tokens), loaded(tokens))
