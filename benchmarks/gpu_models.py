"""Models of benchmarks/gpu.py: a width-scalable ResNet-50 (torchvision's shapes) and a GPT-style block stack."""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn


class _Bottleneck(nn.Module):
    def __init__(self, cin: int, mid: int, cout: int, stride: int):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid)
        self.conv2, self.bn2 = nn.Conv2d(mid, mid, 3, stride, 1, bias=False), nn.BatchNorm2d(mid)
        self.conv3, self.bn3 = nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        idt = x if self.down is None else self.down(x)
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        return F.relu(self.bn3(self.conv3(y)) + idt)


def resnet50_width(mult: float = 1.0, num_classes: int = 1000) -> nn.Module:
    """ResNet-50 (v1.5 layout) with every channel count times `mult`; mult=1 matches torchvision's."""

    def c(k: int) -> int:
        return max(8, int(round(k * mult)))

    layers: list[nn.Module] = [
        nn.Conv2d(3, c(64), 7, 2, 3, bias=False),
        nn.BatchNorm2d(c(64)),
        nn.ReLU(),
        nn.MaxPool2d(3, 2, 1),
    ]
    cin = c(64)
    for planes, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
        for i in range(blocks):
            layers.append(_Bottleneck(cin, c(planes), c(planes) * 4, stride if i == 0 else 1))
            cin = c(planes) * 4
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes)]
    return nn.Sequential(*layers)


def resnet50() -> tuple[nn.Module, str]:
    try:
        import torchvision

        return torchvision.models.resnet50(weights=None), "torchvision resnet50"
    except Exception:  # noqa: BLE001 - torchvision missing or broken: same network, built here
        return resnet50_width(1.0), "resnet50 (built here, torchvision missing)"


class _Block(nn.Module):
    def __init__(self, d: int, heads: int):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.fc, self.out = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, d))
        return x + self.out(F.gelu(self.fc(self.ln2(x)), approximate="tanh"))


class GPTStack(nn.Module):
    def __init__(self, layers: int, d: int, heads: int):
        super().__init__()
        self.blocks = nn.ModuleList(_Block(d, heads) for _ in range(layers))
        self.ln = nn.LayerNorm(d)

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return self.ln(x)
