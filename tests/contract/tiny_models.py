"""Tiny MLP, CNN and transformer used by the contract suite (fixed seeds, built fresh each time)."""

from __future__ import annotations

import torch
from torch import nn


class TinyTransformer(nn.Module):
    def __init__(self, vocab: int = 32, dim: int = 32, heads: int = 4, classes: int = 5) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.block = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=64, dropout=0.0, batch_first=True)
        self.head = nn.Linear(dim, classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(self.embed(tokens)).mean(dim=1))


def tiny_mlp() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(
        nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 10)
    )


def tiny_cnn() -> nn.Module:
    torch.manual_seed(2)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 10),
    )


def tiny_transformer() -> nn.Module:
    torch.manual_seed(3)
    return TinyTransformer()


def inputs_for(kind: str, batch: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets) matching the tiny model `kind`."""
    g = torch.Generator().manual_seed(4)
    if kind == "transformer":
        return torch.randint(0, 32, (batch, 12), generator=g), torch.randint(0, 5, (batch,), generator=g)
    x = torch.rand(batch, 1, 8, 8, generator=g)
    return x, torch.randint(0, 10, (batch,), generator=g)


BUILDERS = {"mlp": tiny_mlp, "cnn": tiny_cnn, "transformer": tiny_transformer}
