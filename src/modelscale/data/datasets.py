"""The two Dataset types every source returns: indexed arrays (classification) and byte windows (lm).

`ArrayDataset` views rows of shared storage through an index list, so the three splits never copy
data and their `indices` show plainly that they are disjoint. Images may stay uint8 in memory and
are scaled to float32 per item. `ByteWindows` cuts `block_size + 1` bytes from a byte tensor at
fixed offsets and returns `(x, y)` with `y` the next byte after each byte of `x`.

Example::

    ds = ArrayDataset(x_uint8, labels, indices=[0, 5, 9], scale=1 / 255)
    x, y = ds[0]                 # float32 image of row 0, int64 label
    xs, ys = ds.tensors()        # the whole split at once (no augmentation)
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import Dataset, get_worker_info

from modelscale.data.augment import AugmentConfig, augment_image


class ArrayDataset(Dataset):
    """Rows `indices` of `x` and `y`; items are (float32 x, int64 scalar y), optionally augmented."""

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        indices: Any,
        *,
        scale: float | None = None,
        augment: AugmentConfig | None = None,
        seed: int = 0,
        shift: torch.Tensor | None = None,
        divide: torch.Tensor | None = None,
    ) -> None:
        self.x = x
        self.shift = shift  # standardization (train-split mean and std), applied after `scale`
        self.divide = divide
        self.y = y.to(torch.int64)
        self.indices = torch.as_tensor(indices, dtype=torch.int64).reshape(-1)
        self.scale = scale
        self.augment = augment if augment is not None and augment.active else None
        self.seed = seed
        self._generator: torch.Generator | None = None
        self._worker_id: int | None = None

    def __len__(self) -> int:
        return int(self.indices.numel())

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        j = int(self.indices[i])
        x = self._to_float(self.x[j])
        if self.augment is not None:
            x = augment_image(x, self.augment, self._rng())
        return x, self.y[j]

    @property
    def targets(self) -> torch.Tensor:
        """The labels of this split, in item order."""
        return self.y[self.indices]

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole split as (float32 x, int64 y), without augmentation (for fast evaluation)."""
        return self._to_float(self.x[self.indices]), self.targets

    def _to_float(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(torch.float32)
        if self.scale is not None:
            x = x * self.scale
        if self.shift is not None:
            x = (x - self.shift) / self.divide
        return x

    def _rng(self) -> torch.Generator:
        # Main process: a generator seeded from the split seed. DataLoader workers: one seeded from
        # the worker's own seed (derived from the loader's generator), so workers never repeat each other.
        info = get_worker_info()
        worker_id = None if info is None else info.id
        if self._generator is None or worker_id != self._worker_id:
            seed = self.seed if info is None else info.seed
            self._generator = torch.Generator().manual_seed(int(seed) % (2**63))
            self._worker_id = worker_id
        return self._generator

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_generator"] = None  # regenerated where it is used (e.g. in a spawned worker)
        state["_worker_id"] = None
        return state


class ByteWindows(Dataset):
    """Windows of `block_size + 1` bytes at `offsets`; items are (x, y) int64 of length block_size."""

    def __init__(self, data: torch.Tensor, block_size: int, offsets: torch.Tensor) -> None:
        self.data = data
        self.block_size = block_size
        self.offsets = offsets.to(torch.int64)

    def __len__(self) -> int:
        return int(self.offsets.numel())

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        start = int(self.offsets[i])
        chunk = self.data[start : start + self.block_size + 1].to(torch.int64)
        return chunk[:-1], chunk[1:]

    @property
    def num_bytes(self) -> int:
        return int(self.data.numel())


def strided_offsets(num_bytes: int, block_size: int) -> torch.Tensor:
    """Non-overlapping window starts covering the bytes once."""
    return torch.arange(0, num_bytes - block_size, block_size, dtype=torch.int64)


def random_offsets(num_bytes: int, block_size: int, seed: int) -> torch.Tensor:
    """As many seeded random window starts as there are strided windows (about one pass of the bytes)."""
    count = len(strided_offsets(num_bytes, block_size))
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, num_bytes - block_size, (count,), generator=g, dtype=torch.int64)
