"""Real data and small models for the trainer tests (shared with the DDP worker script)."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import Subset, TensorDataset

from modelscale.data.bundle import DataBundle


def digits_bundle(n_train: int = 1100, n_val: int = 300, seed: int = 0) -> DataBundle:
    """sklearn's 1,797 real 8x8 digits, pixels / 16, shuffled once and split train / val / test."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(d.target, dtype=torch.int64)
    full = TensorDataset(x, y)
    perm = torch.randperm(len(full), generator=torch.Generator().manual_seed(seed)).tolist()
    train, val, test = perm[:n_train], perm[n_train : n_train + n_val], perm[n_train + n_val :]
    return DataBundle(
        name="digits",
        task="classification",
        train=Subset(full, train),
        val=Subset(full, val),
        test=Subset(full, test),
        num_classes=10,
        input_shape=(1, 8, 8),
        meta={"seed": seed, "sizes": [len(train), len(val), len(test)]},
    )


def mlp(seed: int = 0, dropout: float = 0.0, hidden: int = 64) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, 10)
    )


def cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 4 * 4, 10),
    )
