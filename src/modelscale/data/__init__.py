"""Named data sources behind one interface, with seeded stratified disjoint train/val/test splits.

`load_data(spec)` returns a `DataBundle` (train/val/test datasets of `(x, y)` tensors, num_classes,
input_shape, meta). `list_sources()` names the sources; `make_loader` wraps a split in a seeded
DataLoader; `AugmentConfig` configures train-only crop/flip augmentation. scikit-learn and PIL load
only when a source needs them.

Example::

    from modelscale.data import AugmentConfig, load_data, make_loader
    data = load_data("digits", seed=0, augment=AugmentConfig(crop_padding=1))
    loader = make_loader(data.train, batch_size=64, shuffle=True, seed=0)
    xb, yb = next(iter(loader))          # (64, 1, 8, 8) float32 in [0, 1], (64,) int64
    data.meta["split_sizes"]             # {"train": ..., "val": ..., "test": ...}
"""

from __future__ import annotations

from modelscale.data.api import list_sources, load_data, make_loader
from modelscale.data.augment import AugmentConfig
from modelscale.data.bundle import DataBundle
from modelscale.data.datasets import ArrayDataset, ByteWindows

__all__ = [
    "ArrayDataset",
    "AugmentConfig",
    "ByteWindows",
    "DataBundle",
    "list_sources",
    "load_data",
    "make_loader",
]
