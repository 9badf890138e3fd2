"""`DataBundle`: what every data source returns — three disjoint splits plus what a model needs to know."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch.utils.data import Dataset


@dataclass
class DataBundle:
    name: str  # the spec it was loaded from, e.g. "digits" or "text:notes.txt"
    task: str  # "classification" or "lm"
    train: Dataset
    val: Dataset
    test: Dataset
    num_classes: int  # number of classes; for "lm" the vocabulary size (256 bytes)
    input_shape: tuple[int, ...]  # one example's shape: (1, 8, 8) for digits, (block_size,) for lm
    meta: dict[str, Any] = field(default_factory=dict)  # seed, split sizes, source, class names
