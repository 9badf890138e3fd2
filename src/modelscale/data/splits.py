"""Seeded, stratified, disjoint splits and train subsampling.

`stratified_order` shuffles the examples so that *every prefix* of the order keeps each class's share
(within one example). Splits are then consecutive slices of that one order — test first, then val, then
train — so they are disjoint by construction, stratified, and the same seed gives the same split.
`data_fraction` keeps a prefix of the train slice, so smaller fractions are subsets of larger ones
(nested data budgets for scaling studies).

Key formula: example k of class c (after a seeded shuffle within c) gets key (k + u) / n_c with
u ~ U(0, 1); sorting all keys interleaves classes in proportion to their sizes n_c.

Example::

    order = stratified_order(labels, seed=0)
    parts = split_indices(labels, seed=0, val_fraction=0.15, test_fraction=0.2)
    parts["train"], parts["val"], parts["test"]     # sorted numpy index arrays
"""

from __future__ import annotations

import numpy as np

from modelscale.core.config import check_range
from modelscale.core.errors import ModelscaleError


def check_fractions(val_fraction: float, test_fraction: float, data_fraction: float) -> None:
    """One-line errors for fractions outside their ranges."""
    check_range("val_fraction", val_fraction, 0.0, 1.0, hi_open=True)
    check_range("test_fraction", test_fraction, 0.0, 1.0, hi_open=True)
    check_range("data_fraction", data_fraction, 0.0, 1.0)
    if data_fraction <= 0:
        raise ModelscaleError(f"data_fraction must be > 0, got {data_fraction}; use a value in (0, 1]")
    if val_fraction + test_fraction >= 1.0:
        raise ModelscaleError(
            f"val_fraction + test_fraction must be < 1 (train needs examples), got "
            f"{val_fraction} + {test_fraction}; lower one of them"
        )


def stratified_order(labels: np.ndarray, seed: int) -> np.ndarray:
    """A seeded permutation of range(len(labels)) in which every prefix is stratified by label."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    keys = np.empty(len(labels), dtype=np.float64)
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        n = len(members)
        keys[members] = (np.arange(n) + rng.random(n)) / n
    return np.argsort(keys, kind="stable")


def split_count(fraction: float, n: int) -> int:
    """round(fraction * n), but at least 1 when fraction > 0 so a requested split is never empty."""
    if fraction <= 0:
        return 0
    return max(1, int(round(fraction * n)))


def subsample_count(data_fraction: float, n: int) -> int:
    return n if data_fraction >= 1.0 else max(1, int(round(data_fraction * n)))


def split_indices(
    labels: np.ndarray,
    *,
    seed: int,
    val_fraction: float,
    test_fraction: float,
    data_fraction: float = 1.0,
    pool: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Stratified train/val/test indices (into `labels`, or into `pool`'s values when given)."""
    labels = np.asarray(labels)
    pool = np.arange(len(labels)) if pool is None else np.asarray(pool)
    order = pool[stratified_order(labels[pool], seed)]
    n = len(order)
    n_test = split_count(test_fraction, n)
    n_val = split_count(val_fraction, n)
    if n - n_test - n_val < 1:
        raise ModelscaleError(
            f"only {n} examples: too few for val_fraction={val_fraction}, test_fraction={test_fraction}; "
            "add data or lower the fractions"
        )
    test, val, train = order[:n_test], order[n_test : n_test + n_val], order[n_test + n_val :]
    train = train[: subsample_count(data_fraction, len(train))]
    return {"train": np.sort(train), "val": np.sort(val), "test": np.sort(test)}
