"""The one MAC counter against torchvision's published `_ops` (GMACs) and `num_params`, per model.

Counted on the ``meta`` device (shapes only), so even vit_h_14 takes about a second. A cross-section
of every family runs in CI; every classification model torchvision ships runs with MODELSCALE_ZOO=1
(benchmarks/torchvision_zoo.py also counts them all and runs every technique).
"""

from __future__ import annotations

import os

import pytest
import torch
import torchvision
from torch import nn

from modelscale.measure import count_macs
from modelscale.models import build_model
from modelscale.models.torchvision_zoo import published

CROSS_SECTION = [
    "resnet18",  # residual
    "resnext50_32x4d",  # grouped
    "vit_b_16",  # attention (nn.MultiheadAttention)
    "swin_t",  # windowed attention
    "maxvit_t",  # attention + depthwise + squeeze-excite
    "convnext_tiny",  # depthwise 7x7
    "efficientnet_b0",  # squeeze-excite
    "regnet_y_400mf",  # grouped + squeeze-excite
    "mobilenet_v3_small",  # depthwise + squeeze-excite
    "densenet121",  # concatenation
    "inception_v3",  # concatenation, 299 pixels, aux head left out
    "googlenet",  # aux heads left out
    "shufflenet_v2_x1_0",  # channel shuffle
    "squeezenet1_1",  # no Linear
    "mnasnet0_5",
    "vgg11",
]
ZOO = torchvision.models.list_models(module=torchvision.models)


def build_on_meta(name: str, resolution: int) -> nn.Module:
    """`torchvision:name` with its parameters on the meta device (regnet's builder needs real tensors)."""
    shape = (3, resolution, resolution)
    try:
        with torch.device("meta"):
            return build_model(f"torchvision:{name}", num_classes=1000, input_shape=shape)
    except NotImplementedError:
        return build_model(f"torchvision:{name}", num_classes=1000, input_shape=shape).to("meta")


def aux_head_params(name: str) -> int:
    """Parameters of the auxiliary heads torchvision's checkpoint carries and our build leaves out."""
    with torch.device("meta"):
        full = torchvision.models.get_model(name, weights=None, aux_logits=True, init_weights=False)
    heads = [m for n, m in full.named_children() if n in ("aux1", "aux2", "AuxLogits") and m is not None]
    return sum(p.numel() for m in heads for p in m.parameters())


def check_against_published(name: str) -> None:
    ref = published(name)
    model = build_on_meta(name, ref["resolution"])
    x = torch.empty(1, 3, ref["resolution"], ref["resolution"], device="meta")
    gmacs = count_macs(model, x).macs / 1e9
    assert abs(gmacs - ref["gmacs"]) / ref["gmacs"] < 0.02, (name, gmacs, ref)
    params = sum(p.numel() for p in model.parameters())
    if name == "inception_v3":  # its published checkpoint keeps the aux head; googlenet's does not
        params += aux_head_params(name)
    assert params == ref["params"], (name, params, ref)


def test_cross_section_covers_every_family():
    families = {n.split("_")[0].rstrip("0123456789") for n in ZOO}
    covered = {n.split("_")[0].rstrip("0123456789") for n in CROSS_SECTION}
    assert families - covered <= {"alexnet", "wide"}, families - covered  # plain conv stacks / resnets


@pytest.mark.parametrize("name", CROSS_SECTION)
def test_macs_and_params_match_torchvision_published(name):
    check_against_published(name)


@pytest.mark.skipif(
    os.environ.get("MODELSCALE_ZOO") != "1", reason="every torchvision model: MODELSCALE_ZOO=1"
)
@pytest.mark.parametrize("name", [n for n in ZOO if n not in CROSS_SECTION])
def test_every_torchvision_model_matches_published(name):
    check_against_published(name)


def test_vit_on_real_tensors_counts_attention_on_the_cpu_kernel():
    """Eval mode without gradients (the fused-attention fast path) on real tensors: same count, and the
    attention products are in it (the CPU flash kernel)."""
    model = torchvision.models.vit_b_32().eval()
    report = count_macs(model, torch.randn(1, 3, 224, 224))
    assert abs(report.macs / 1e9 - published("vit_b_32")["gmacs"]) / published("vit_b_32")["gmacs"] < 0.02
    tokens, width, layers = 50, 768, 12
    attention = layers * 2 * tokens * tokens * width  # QK^T and AV MACs, all heads together
    sdpa = sum(f for op, f in report.by_op.items() if "attention" in op) // 2
    assert sdpa == attention


@pytest.mark.parametrize("module", ["mha", "encoder_layer"])
def test_fused_attention_fast_path_is_counted_exactly(module):
    torch.manual_seed(0)
    b, length, e, ff = 2, 10, 64, 128
    x = torch.randn(b, length, e)
    attention = 4 * b * length * e * e + 2 * b * length * length * e  # q, k, v, out projections + QK^T, AV
    if module == "mha":
        layer = nn.MultiheadAttention(e, 4, batch_first=True).eval()
        inputs, expected = (x, x, x), attention
    else:
        layer = nn.TransformerEncoderLayer(e, 4, ff, batch_first=True).eval()
        inputs, expected = x, attention + 2 * b * length * e * ff
    assert count_macs(layer, inputs).macs == expected
    assert torch.backends.mha.get_fastpath_enabled()  # restored after counting


def test_keyword_inputs_are_counted():
    class Keywords(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = nn.Linear(8, 3)

        def forward(self, input_ids: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
            return self.proj(input_ids) * scale

    report = count_macs(Keywords(), {"input_ids": torch.randn(5, 8), "scale": torch.ones(1)})
    assert report.macs == 5 * 8 * 3 and report.batch_size == 5 and report.input_shapes == [[5, 8], [1]]
