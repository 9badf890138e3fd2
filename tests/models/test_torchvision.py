"""`torchvision:<name>`: published parameter counts, small-input adaptation, channel adaptation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from modelscale.core.errors import ModelscaleError
from modelscale.models import build_model


def test_resnet50_matches_torchvision_published_parameter_count():
    model = build_model("torchvision:resnet50", num_classes=1000, input_shape=(3, 224, 224))
    assert sum(p.numel() for p in model.parameters()) == 25_557_032  # ResNet50_Weights meta num_params
    assert model.modelscale_notes == []
    assert model.conv1.kernel_size == (7, 7) and isinstance(model.maxpool, nn.MaxPool2d)


def test_resnet18_gets_the_cifar_stem_for_32x32():
    model = build_model("torchvision:resnet18", num_classes=10, input_shape=(3, 32, 32)).eval()
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1) and model.conv1.in_channels == 3
    assert isinstance(model.maxpool, nn.Identity)
    assert any("conv1 3x3 stride 1, no maxpool" in note for note in model.modelscale_notes)
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)


def test_resnet18_for_one_channel_8x8_digits():
    model = build_model("torchvision:resnet18", num_classes=10, input_shape=(1, 8, 8)).eval()
    assert model.conv1.in_channels == 1 and model.conv1.kernel_size == (3, 3)
    assert len(model.modelscale_notes) == 2
    assert model(torch.rand(2, 1, 8, 8)).shape == (2, 10)


def test_non_resnet_first_conv_takes_other_channel_counts():
    model = build_model("torchvision:mobilenet_v3_small", num_classes=5, input_shape=(1, 32, 32)).eval()
    first = model.features[0][0]
    assert first.in_channels == 1 and first.stride == (2, 2)
    assert model.modelscale_notes == ["first conv (features.0.0) reads 1 input channels instead of 3"]
    assert model(torch.rand(2, 1, 32, 32)).shape == (2, 5)


def test_unknown_torchvision_name_lists_valid_ones():
    with pytest.raises(ModelscaleError, match=r"unknown torchvision model 'resnet19'.*resnet18") as info:
        build_model("torchvision:resnet19")
    assert "\n" not in str(info.value)


def test_torchvision_refuses_size_multipliers_and_bad_options():
    with pytest.raises(ModelscaleError, match="width and depth"):
        build_model("torchvision:resnet18", width=2.0)
    with pytest.raises(ModelscaleError, match="no dropout option"):
        build_model("torchvision:resnet18", dropout=0.2)
    with pytest.raises(ModelscaleError, match="rejected its options"):
        build_model("torchvision:resnet18", not_an_option=1)


@pytest.mark.parametrize("name", ["googlenet", "inception_v3"])
def test_aux_heads_are_left_out_and_published_checkpoints_still_load(name, tmp_path):
    import torchvision
    from safetensors.torch import save_file

    from modelscale.models.torchvision_zoo import published

    side = published(name)["resolution"]
    model = build_model(f"torchvision:{name}", num_classes=10, input_shape=(3, side, side))
    assert not model.aux_logits
    assert model.train()(torch.rand(2, 3, side, side)).shape == (2, 10)  # a tensor in train mode too
    with_heads = torchvision.models.get_model(
        name, weights=None, num_classes=10, aux_logits=True, init_weights=True
    )
    state = with_heads.state_dict()
    assert any(k.startswith(("aux1.", "AuxLogits.")) for k in state)  # what a torchvision checkpoint holds
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "w.safetensors"))
    loaded = build_model(
        f"torchvision:{name}",
        num_classes=10,
        input_shape=(3, side, side),
        weights=str(tmp_path / "w.safetensors"),
    )
    x = torch.rand(1, 3, side, side)
    torch.testing.assert_close(loaded.eval()(x), with_heads.eval()(x))


def test_mnasnet_saves_and_reloads_through_safetensors(tmp_path):
    """torchvision's MNASNet needs version metadata a safetensors file does not keep."""
    import torchvision

    from modelscale.models.loading import build_for, load_compressed, save_model_dir

    bundle = build_for("torchvision:mnasnet0_5", input_shape=(3, 64, 64), num_classes=10)
    assert isinstance(bundle.model, torchvision.models.MNASNet)
    save_model_dir(tmp_path / "m", bundle)
    x = torch.rand(2, 3, 64, 64)
    assert torch.equal(load_compressed(tmp_path / "m").eval()(x), bundle.model.eval()(x))
    # A state dict that does carry torchvision's version is treated as torchvision treats it.
    state = bundle.model.state_dict()
    state._metadata[""]["version"] = 3
    with pytest.raises(ValueError, match="version should be set to 1 or 2"):
        build_model("torchvision:mnasnet0_5", num_classes=10).load_state_dict(state)


def test_a_load_error_names_its_real_cause(tmp_path):
    """Only a damaged file is called corrupt; the model's own refusal is reported as such."""
    import torchvision

    from modelscale.models.loading import build_for, load_compressed, save_model_dir

    bundle = build_for("torchvision:mnasnet0_5", input_shape=(3, 64, 64), num_classes=10)
    save_model_dir(tmp_path / "m", bundle)
    plain = torchvision.models.mnasnet0_5(num_classes=10)  # the stock class: needs version metadata
    with pytest.raises(ModelscaleError, match=r"failed \(ValueError: version should be set") as info:
        load_compressed(tmp_path / "m", plain)
    assert "corrupt" not in str(info.value)
    weights = tmp_path / "m" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ModelscaleError, match=r"is corrupt \(Error while deserializing header"):
        load_compressed(tmp_path / "m")
