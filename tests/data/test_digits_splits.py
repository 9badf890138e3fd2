"""digits (real data) and the split machinery: sizes, shapes, ranges, disjoint, stratified, seeded."""

import numpy as np
import pytest
import torch

from modelscale.core.errors import ModelscaleError
from modelscale.data import DataBundle, list_sources, load_data, make_loader
from modelscale.data.splits import stratified_order


@pytest.fixture(scope="module")
def digits():
    return load_data("digits", seed=0)


def test_digits_sizes_shapes_dtypes_range(digits):
    assert isinstance(digits, DataBundle)
    assert digits.task == "classification" and digits.num_classes == 10 and digits.input_shape == (1, 8, 8)
    sizes = digits.meta["split_sizes"]
    assert sum(sizes.values()) == 1797
    assert sizes == {"train": len(digits.train), "val": len(digits.val), "test": len(digits.test)}
    assert sizes["test"] == round(0.2 * 1797) and sizes["val"] == round(0.15 * 1797)
    x, y = digits.train[0]
    assert x.shape == (1, 8, 8) and x.dtype == torch.float32
    assert y.dtype == torch.int64 and y.ndim == 0
    xs, ys = digits.test.tensors()
    assert xs.min() >= 0 and xs.max() == 1.0  # pixel / 16, and some pixel is fully on
    assert set(ys.tolist()) == set(range(10))
    assert digits.meta["seed"] == 0 and digits.meta["class_names"] == [str(i) for i in range(10)]


def test_splits_disjoint_and_cover_everything(digits):
    parts = [set(getattr(digits, s).indices.tolist()) for s in ("train", "val", "test")]
    assert not parts[0] & parts[1] and not parts[0] & parts[2] and not parts[1] & parts[2]
    assert len(parts[0] | parts[1] | parts[2]) == 1797


def test_splits_stratified(digits):
    overall = np.bincount(
        torch.cat([digits.train.targets, digits.val.targets, digits.test.targets]), minlength=10
    )
    for split in (digits.train, digits.val, digits.test):
        counts = np.bincount(split.targets.numpy(), minlength=10)
        expected = overall * len(split) / overall.sum()
        assert np.abs(counts - expected).max() <= 2.0  # every prefix keeps class shares within ~1


def test_same_seed_same_split_other_seed_differs(digits):
    again = load_data("digits", seed=0)
    other = load_data("digits", seed=1)
    assert torch.equal(again.test.indices, digits.test.indices)
    assert torch.equal(again.train.indices, digits.train.indices)
    assert not torch.equal(other.test.indices, digits.test.indices)
    assert len(other.test) == len(digits.test)


def test_stratified_order_prefixes():
    labels = np.repeat(np.arange(3), [50, 30, 20])
    order = stratified_order(labels, seed=3)
    assert sorted(order.tolist()) == list(range(100))
    for k in (10, 37, 64):
        counts = np.bincount(labels[order[:k]], minlength=3)
        assert np.abs(counts - k * np.array([0.5, 0.3, 0.2])).max() <= 1.0 + 1e-9


def test_data_fraction_subsamples_train_only(digits):
    half = load_data("digits", seed=0, data_fraction=0.5)
    quarter = load_data("digits", seed=0, data_fraction=0.25)
    assert torch.equal(half.test.indices, digits.test.indices) and torch.equal(
        half.val.indices, digits.val.indices
    )
    assert len(half.train) == round(0.5 * len(digits.train))
    assert set(half.train.indices.tolist()) <= set(digits.train.indices.tolist())
    assert set(quarter.train.indices.tolist()) <= set(half.train.indices.tolist())  # nested budgets
    counts = np.bincount(half.train.targets.numpy(), minlength=10)
    full = np.bincount(digits.train.targets.numpy(), minlength=10)
    assert np.abs(counts - full * len(half.train) / len(digits.train)).max() <= 2.0  # still stratified
    assert half.meta["data_fraction"] == 0.5 and half.meta["train_size_before_data_fraction"] == len(
        digits.train
    )


def test_make_loader_is_seeded(digits):
    first = [yb.tolist() for _, yb in make_loader(digits.train, batch_size=64, shuffle=True, seed=5)]
    second = [yb.tolist() for _, yb in make_loader(digits.train, batch_size=64, shuffle=True, seed=5)]
    other = [yb.tolist() for _, yb in make_loader(digits.train, batch_size=64, shuffle=True, seed=6)]
    assert first == second and first != other
    xb, yb = next(iter(make_loader(digits.train, batch_size=64, shuffle=False)))
    assert xb.shape == (64, 1, 8, 8) and yb.shape == (64,)
    with pytest.raises(ModelscaleError, match="batch_size"):
        make_loader(digits.train, batch_size=0, shuffle=False)


def test_unknown_source_lists_valid():
    with pytest.raises(ModelscaleError, match="unknown data source 'mnist'.*digits.*cifar10:<dir>.*pystdlib"):
        load_data("mnist")
    assert list_sources() == sorted(
        ["digits", "cifar10", "imagefolder", "npz", "text", "pystdlib", "synthetic"]
    )


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"val_fraction": -0.1}, "val_fraction"),
        ({"test_fraction": 1.0}, "test_fraction"),
        ({"val_fraction": 0.5, "test_fraction": 0.5}, "val_fraction \\+ test_fraction"),
        ({"data_fraction": 0.0}, "data_fraction"),
        ({"data_fraction": 1.5}, "data_fraction"),
        ({"image_size": 16}, "does not take option"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ModelscaleError, match=match):
        load_data("synthetic:1x4x4:3", **kwargs)


def test_synthetic_is_marked_speed_only():
    data = load_data("synthetic:3x16x16:5", num_examples=100)
    assert data.input_shape == (3, 16, 16) and data.num_classes == 5
    assert "speed" in data.meta["note"]
    assert data.train[0][0].shape == (3, 16, 16)
    assert sum(data.meta["split_sizes"].values()) == 100


def test_import_is_light():
    import subprocess
    import sys

    code = "import sys, modelscale.data; print('sklearn' in sys.modules, 'PIL' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
