import pytest
import torch
import torchvision
from torch import nn

from modelscale.measure import count_macs


@pytest.mark.parametrize("name", ["resnet50", "mobilenet_v2"])
def test_macs_match_torchvision_meta_ops(name):
    reference_gmacs = torchvision.models.get_model_weights(name).DEFAULT.meta["_ops"]  # GMACs, no download
    model = torchvision.models.get_model(name, weights=None)
    report = count_macs(model, torch.randn(1, 3, 224, 224))
    assert abs(report.macs / 1e9 - reference_gmacs) / reference_gmacs < 0.02
    assert report.flops == 2 * report.macs
    assert sum(row.macs for row in report.layers) == report.macs  # per-layer rows cover everything
    assert report.layers[0].name == ("conv1" if name == "resnet50" else "features.0.0")


def test_conv_and_linear_match_hand_formulas():
    conv = nn.Conv2d(6, 12, kernel_size=(3, 5), stride=2, padding=1, groups=3)
    x = torch.randn(2, 6, 17, 19)
    h_out = (17 + 2 - 3) // 2 + 1
    w_out = (19 + 2 - 5) // 2 + 1
    expected = 2 * 12 * h_out * w_out * (6 // 3) * 3 * 5  # B * Cout * H * W * Cin/groups * kh * kw
    assert count_macs(conv, x).macs == expected

    linear = nn.Linear(33, 7)
    assert count_macs(linear, torch.randn(5, 33)).macs == 5 * 33 * 7
    assert count_macs(linear, torch.randn(4, 3, 33)).macs == 4 * 3 * 33 * 7  # batched sequence


class TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(8, 4)
        self.b = nn.Linear(6, 4)
        self.w = nn.Parameter(torch.randn(4, 4))

    def forward(self, x, y):
        return (self.a(x) + self.b(y)) @ self.w  # the matmul belongs to the root itself


def test_per_layer_breakdown_with_tuple_inputs_and_own_ops():
    model = TwoInputs()
    report = count_macs(model, (torch.randn(3, 8), torch.randn(3, 6)))
    rows = {r.name: r.macs for r in report.layers}
    assert rows == {"a": 3 * 8 * 4, "b": 3 * 6 * 4, "(model)": 3 * 4 * 4}
    assert report.input_shapes == [[3, 8], [3, 6]]
    assert report.batch_size == 3


def test_counting_leaves_model_untouched(tiny_cnn):
    tiny_cnn.train()
    before = {k: v.clone() for k, v in tiny_cnn.state_dict().items()}
    count_macs(tiny_cnn, torch.randn(4, 1, 8, 8))
    assert tiny_cnn.training and tiny_cnn.bn.training
    for k, v in tiny_cnn.state_dict().items():
        assert torch.equal(v, before[k]), k  # BatchNorm running stats not updated
    assert not tiny_cnn._forward_hooks and not tiny_cnn.conv._forward_pre_hooks
