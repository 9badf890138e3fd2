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
