"""Sources read from user files: cifar10 (real python-batch format), imagefolder (PNGs), npz."""

import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from modelscale.core.errors import ModelscaleError
from modelscale.data import load_data

NAMES = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]


def _write_cifar(folder, per_batch=20, test_size=30):
    """A tiny CIFAR-10 in the official python format: pickled dicts of uint8 (N, 3072) rows and labels."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    batches = {f"data_batch_{i}": per_batch for i in range(1, 6)} | {"test_batch": test_size}
    written = {}
    for name, n in batches.items():
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        labels = [int(i % 10) for i in range(n)]
        with open(folder / name, "wb") as fh:
            pickle.dump({b"batch_label": name.encode(), b"labels": labels, b"data": data}, fh, protocol=2)
        written[name] = (data, labels)
    with open(folder / "batches.meta", "wb") as fh:
        pickle.dump({b"label_names": NAMES, b"num_vis": 3072}, fh, protocol=2)
    return written


def test_cifar10_from_python_batches(tmp_path):
    written = _write_cifar(tmp_path / "cifar-10-batches-py")
    data = load_data(f"cifar10:{tmp_path}", seed=0, val_fraction=0.2)
    assert data.num_classes == 10 and data.input_shape == (3, 32, 32)
    assert data.meta["class_names"][0] == "airplane" and data.meta["class_names"][9] == "truck"
    sizes = data.meta["split_sizes"]
    assert sizes == {"train": 80, "val": 20, "test": 30}  # official test kept; val split off the 100 train
    # test items are exactly the official test_batch, in order, scaled to [0, 1]
    test_data, test_labels = written["test_batch"]
    x0, y0 = data.test[0]
    assert x0.dtype == torch.float32 and x0.shape == (3, 32, 32)
    expected = torch.from_numpy(test_data[0].reshape(3, 32, 32)).float() / 255
    torch.testing.assert_close(x0, expected)
    assert data.test.targets.tolist() == test_labels
    assert not set(data.train.indices.tolist()) & set(data.val.indices.tolist())
    assert np.bincount(data.val.targets.numpy(), minlength=10).tolist() == [2] * 10  # stratified


def test_cifar10_missing_files_error(tmp_path):
    with pytest.raises(
        ModelscaleError, match=r"CIFAR-10 files missing in .*data_batch_1.*test_batch.*cifar-10-batches-py"
    ):
        load_data(f"cifar10:{tmp_path / 'nowhere'}")
    folder = tmp_path / "partial"
    _write_cifar(folder)
    (folder / "data_batch_3").unlink()
    with pytest.raises(ModelscaleError, match=r"missing in .*partial: data_batch_3;"):
        load_data(f"cifar10:{folder}")


def test_cifar10_refuses_foreign_pickles(tmp_path):
    _write_cifar(tmp_path)
    with open(tmp_path / "data_batch_2", "wb") as fh:
        pickle.dump({b"data": np.zeros((1, 3072), np.uint8), b"labels": [0], b"x": ModelscaleError("x")}, fh)
    with pytest.raises(ModelscaleError, match="not a CIFAR-10 python batch"):
        load_data(f"cifar10:{tmp_path}")


def test_imagefolder_from_pngs(tmp_path):
    colors = {"red": (255, 0, 0), "blue": (0, 0, 255)}
    for name, rgb in colors.items():
        (tmp_path / name).mkdir()
        for i in range(6):
            Image.new("RGB", (20 + i, 12), rgb).save(tmp_path / name / f"{i}.png")
    data = load_data(f"imagefolder:{tmp_path}", image_size=16, val_fraction=0.2, test_fraction=0.2)
    assert data.num_classes == 2 and data.input_shape == (3, 16, 16)
    assert data.meta["class_names"] == ["blue", "red"]
    assert sum(data.meta["split_sizes"].values()) == 12
    for split in (data.train, data.val, data.test):
        for i in range(len(split)):
            x, y = split[i]
            channel = 2 if y == 0 else 0  # blue images are label 0 (sorted class names)
            assert x.shape == (3, 16, 16) and torch.allclose(x[channel], torch.ones(16, 16))
            assert x.sum() == pytest.approx(256.0)


def test_imagefolder_missing_or_empty(tmp_path):
    with pytest.raises(ModelscaleError, match="image folder not found: .*one subfolder of images per class"):
        load_data(f"imagefolder:{tmp_path / 'absent'}")
    (tmp_path / "cats").mkdir()
    with pytest.raises(ModelscaleError, match="has no images"):
        load_data(f"imagefolder:{tmp_path}")
    with pytest.raises(ModelscaleError, match="needs a folder"):
        load_data("imagefolder:")


def test_npz_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(60, 5)).astype(np.float32)
    y = np.arange(60) % 3
    np.savez(tmp_path / "d.npz", x=x, y=y)
    data = load_data(f"npz:{tmp_path / 'd.npz'}", seed=2)
    assert data.num_classes == 3 and data.input_shape == (5,)
    rows = torch.cat([data.train.indices, data.val.indices, data.test.indices])
    assert sorted(rows.tolist()) == list(range(60))
    for split in (data.train, data.test):
        xs, ys = split.tensors()
        assert torch.equal(xs, torch.from_numpy(x[split.indices.numpy()]))
        assert torch.equal(ys, torch.from_numpy(y[split.indices.numpy()]).long())


def test_npz_errors(tmp_path):
    np.savez(tmp_path / "bad.npz", inputs=np.zeros((4, 2)), y=np.zeros(4, int))
    with pytest.raises(ModelscaleError, match=r"lacks array\(s\) x .*np.savez"):
        load_data(f"npz:{tmp_path / 'bad.npz'}")
    with pytest.raises(ModelscaleError, match="npz file not found"):
        load_data(f"npz:{tmp_path / 'none.npz'}")
    np.savez(tmp_path / "flat.npz", x=np.zeros((30, 4), np.float32), y=np.arange(30) % 2)
    from modelscale.data import AugmentConfig

    with pytest.raises(ModelscaleError, match="augment needs image inputs"):
        load_data(f"npz:{tmp_path / 'flat.npz'}", augment=AugmentConfig())
