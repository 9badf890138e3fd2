"""`cnn`: a small convolutional network for small images (digits 1×8×8, CIFAR 3×32×32).

Stages of conv3×3 → BatchNorm → ReLU blocks with `channels · width` channels (default 32/64/128);
each stage has `convs · depth` blocks (rounded, at least 1) and every stage after the first starts
with a 2×2 max-pool while the feature map is at least 2×2. Then global average pooling, dropout and a
Linear classifier. Input (B, C, H, W) float, output (B, num_classes) logits.

Example::

    from modelscale.models import build_model
    model = build_model("cnn", num_classes=10, input_shape=(3, 32, 32), width=2.0)
    logits = model(torch.rand(4, 3, 32, 32))    # (4, 10)
"""

from __future__ import annotations

import torch
from torch import nn

from modelscale.core.errors import ModelscaleError
from modelscale.models.registry import ModelArgs, register_model


class ConvBNReLU(nn.Module):
    """3×3 convolution (no bias), batch norm, ReLU."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(c_out)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class SmallCNN(nn.Module):
    """Conv stages → global average pool → dropout → Linear classifier."""

    def __init__(
        self,
        input_shape: tuple[int, int, int],
        channels: list[int],
        convs: int,
        num_classes: int,
        dropout: float,
    ) -> None:
        super().__init__()
        c, h, w = input_shape
        stages: list[nn.Module] = []
        for i, c_out in enumerate(channels):
            blocks: list[nn.Module] = []
            if i > 0 and min(h, w) >= 2:
                blocks.append(nn.MaxPool2d(2))
                h, w = h // 2, w // 2
            for _ in range(convs):
                blocks.append(ConvBNReLU(c, c_out))
                c = c_out
            stages.append(nn.Sequential(*blocks))
        self.features = nn.Sequential(*stages)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.classifier = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.pool(self.features(x))))


@register_model(
    "cnn", summary="small CNN for small images (conv3x3-BN-ReLU stages, 32/64/128·width channels)"
)
def build_cnn(args: ModelArgs, *, channels: tuple[int, ...] = (32, 64, 128), convs: int = 1) -> nn.Module:
    if len(args.input_shape) != 3:
        raise ModelscaleError(
            f"cnn needs input_shape (channels, height, width), got {args.input_shape}; use mlp for flat inputs"
        )
    if (
        not isinstance(channels, tuple | list)
        or not channels
        or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in channels)
    ):
        raise ModelscaleError(f"cnn option channels must be a list of positive integers, got {channels!r}")
    if isinstance(convs, bool) or not isinstance(convs, int) or convs < 1:
        raise ModelscaleError(f"cnn option convs must be an integer >= 1, got {convs!r}")
    return SmallCNN(
        args.input_shape,  # type: ignore[arg-type]
        [args.scaled(c) for c in channels],
        args.repeats(convs),
        args.num_classes,
        args.dropout,
    )
