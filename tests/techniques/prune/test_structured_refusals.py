"""Structured pruning refuses, in seconds and in one line naming the cause, what Torch-Pruning cannot follow."""

from __future__ import annotations

import pytest
import torch

from modelscale.core.apply import apply
from modelscale.core.errors import ModelscaleError
from modelscale.models import build_model
from modelscale.techniques.prune.structured import StructuredPruneConfig


@pytest.mark.parametrize(
    ("name", "side", "cause"),
    [
        ("shufflenet_v2_x0_5", 32, "a reshape that splits channels into groups (a channel shuffle"),
        ("swin_t", 64, "reshapes fold channels together with other dimensions"),  # ran for minutes before
        ("swin_s", 64, "a concatenation whose input widths it could not infer"),  # bare TypeError before
    ],
)
def test_untraceable_models_are_refused_with_the_reason(name, side, cause):
    model = build_model(f"torchvision:{name}", num_classes=10, input_shape=(3, side, side))
    with pytest.raises(ModelscaleError) as info:
        apply(model, StructuredPruneConfig(ratio=0.3), example_inputs=torch.rand(1, 3, side, side))
    message = str(info.value)
    assert cause in message and "no target exclusion avoids it" in message and "\n" not in message
    assert "magnitude_prune" in message  # what to use instead


def test_record_macs_are_the_profile_macs_with_attention():
    """The record counts attention like `profile` does (the fused fast path and the attention products)."""
    from torchvision.models.vision_transformer import VisionTransformer

    from modelscale.measure import count_macs

    torch.manual_seed(0)
    model = VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64
    )
    x = torch.rand(2, 3, 32, 32)
    result = apply(model, StructuredPruneConfig(ratio=0.5), example_inputs=x)
    summary = result.record.summary
    assert summary["macs_before"] == count_macs(model, x).macs
    assert summary["macs_after"] == count_macs(result.model, x).macs < summary["macs_before"]
    tokens = 17  # 16 patches + class token
    attention = 2 * 2 * 2 * tokens * tokens * 32  # layers x (QK^T + AV) x batch x L^2 x width
    assert summary["macs_before"] > attention  # the attention products are in the count
    profile = count_macs(model, x)
    assert sum(f for op, f in profile.by_op.items() if "attention" in op) // 2 == attention
