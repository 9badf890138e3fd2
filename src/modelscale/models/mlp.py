"""`mlp`: a multilayer perceptron on the flattened input.

Hidden layers: `layers · depth` of them (rounded, at least 1), each `hidden · width` units (rounded,
at least 1), Linear → ReLU → Dropout; then a Linear classifier. Input (B, *input_shape) float,
output (B, num_classes) logits.

Example::

    from modelscale.models import build_model
    model = build_model("mlp", num_classes=10, input_shape=(1, 8, 8), width=0.5, depth=2)
    logits = model(torch.rand(4, 1, 8, 8))      # (4, 10)
"""

from __future__ import annotations

import math

import torch
from torch import nn

from modelscale.core.errors import ModelscaleError
from modelscale.models.registry import ModelArgs, register_model


class MLP(nn.Module):
    """Flatten → [Linear → ReLU → Dropout] × n → Linear classifier."""

    def __init__(self, in_features: int, hidden: int, layers: int, num_classes: int, dropout: float) -> None:
        super().__init__()
        blocks: list[nn.Module] = [nn.Flatten()]
        width_in = in_features
        for _ in range(layers):
            blocks += [nn.Linear(width_in, hidden), nn.ReLU()]
            if dropout > 0:
                blocks.append(nn.Dropout(dropout))
            width_in = hidden
        self.features = nn.Sequential(*blocks)
        self.classifier = nn.Linear(width_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


@register_model("mlp", summary="multilayer perceptron on flattened inputs (hidden 128·width, 2·depth layers)")
def build_mlp(args: ModelArgs, *, hidden: int = 128, layers: int = 2) -> nn.Module:
    for label, value in (("hidden", hidden), ("layers", layers)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ModelscaleError(f"mlp option {label} must be an integer >= 1, got {value!r}")
    return MLP(
        math.prod(args.input_shape),
        args.scaled(hidden),
        args.repeats(layers),
        args.num_classes,
        args.dropout,
    )
