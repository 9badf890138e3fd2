"""Readers for the classification sources: digits, cifar10:<dir>, imagefolder:<dir>, npz:<file>, synthetic.

Each reader returns `Arrays`: every example of the source in one tensor (uint8 images stay uint8 and
are scaled per item), labels, class names, and — when the source ships one — the official test rows.
Splitting happens in `modelscale.data.api`. Nothing is downloaded.

Example::

    arrays = read_digits()
    arrays.x.shape, arrays.scale          # (1797, 1, 8, 8), 1 / 16
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from modelscale.core.errors import ModelscaleError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".ppm", ".pgm", ".tif", ".tiff")
CIFAR10_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR10_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)


@dataclass
class Arrays:
    x: torch.Tensor  # (N, *input_shape), uint8 or float32
    y: torch.Tensor  # (N,) int64 labels in [0, num_classes)
    class_names: list[str]
    scale: float | None = None  # multiply x by this per item (e.g. 1/255 for uint8 images)
    test_rows: np.ndarray | None = None  # the source's official test set, if it has one
    meta: dict[str, Any] = field(default_factory=dict)


def read_digits() -> Arrays:
    """scikit-learn's bundled 1,797 real 8x8 handwritten digits, pixels 0..16 scaled to [0, 1]."""
    from sklearn.datasets import load_digits

    raw = load_digits()
    x = torch.as_tensor(raw.data, dtype=torch.float32).reshape(-1, 1, 8, 8)
    y = torch.as_tensor(raw.target, dtype=torch.int64)
    return Arrays(
        x, y, [str(i) for i in range(10)], scale=1.0 / 16.0, meta={"source": "sklearn.datasets.load_digits"}
    )


# --- CIFAR-10 (python pickle format) ---------------------------------------------------------------
class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles only dicts, lists, strings, numbers and numpy arrays (what CIFAR-10 batches hold)."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _load_batch(path: Path) -> dict:
    try:
        with open(path, "rb") as fh:
            batch = _ArrayUnpickler(fh, encoding="bytes").load()
    except Exception as exc:  # noqa: BLE001 - reported as one line
        raise ModelscaleError(
            f"{path} is not a CIFAR-10 python batch ({type(exc).__name__}: {exc}); "
            "use the files from cifar-10-python.tar.gz"
        ) from None
    if not isinstance(batch, dict):
        raise ModelscaleError(
            f"{path} is not a CIFAR-10 python batch (expected a dict); use cifar-10-python.tar.gz"
        )
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}


def read_cifar10(folder: str) -> Arrays:
    """CIFAR-10 from its python-format batches in `folder` or `folder/cifar-10-batches-py`."""
    root = Path(folder).expanduser()
    candidates = [root, root / "cifar-10-batches-py"]
    found = next((c for c in candidates if all((c / f).is_file() for f in CIFAR10_FILES)), None)
    if found is None:
        best = max(candidates, key=lambda c: sum((c / f).is_file() for f in CIFAR10_FILES))
        missing = [f for f in CIFAR10_FILES if not (best / f).is_file()]
        raise ModelscaleError(
            f"CIFAR-10 files missing in {best}: {', '.join(missing)}; extract cifar-10-python.tar.gz "
            f"(data_batch_1..5, test_batch, batches.meta) into {root} or {root / 'cifar-10-batches-py'}"
        )
    xs, ys = [], []
    for name in CIFAR10_FILES:
        batch = _load_batch(found / name)
        if "data" not in batch or "labels" not in batch:
            raise ModelscaleError(
                f"{found / name} lacks 'data' or 'labels'; use the files from cifar-10-python.tar.gz"
            )
        data = np.asarray(batch["data"], dtype=np.uint8)
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise ModelscaleError(f"{found / name}: data has shape {data.shape}, expected (N, 3072)")
        xs.append(data.reshape(-1, 3, 32, 32))
        ys.append(np.asarray(batch["labels"], dtype=np.int64))
    names = list(CIFAR10_NAMES)
    if (found / "batches.meta").is_file():
        labels = _load_batch(found / "batches.meta").get("label_names")
        if labels:
            names = [v.decode() if isinstance(v, bytes) else str(v) for v in labels]
    x = torch.from_numpy(np.concatenate(xs))
    y = torch.from_numpy(np.concatenate(ys))
    n_test = len(ys[-1])
    test_rows = np.arange(len(y) - n_test, len(y))
    return Arrays(x, y, names, scale=1.0 / 255.0, test_rows=test_rows, meta={"source": str(found)})


# --- image folders ---------------------------------------------------------------------------------
def read_imagefolder(folder: str, *, image_size: int = 32, grayscale: bool = False) -> Arrays:
    """Images in class subfolders (`folder/<class>/<image>`), resized to image_size x image_size."""
    from PIL import Image

    root = Path(folder).expanduser()
    if not root.is_dir():
        raise ModelscaleError(
            f"image folder not found: {root}; it should hold one subfolder of images per class"
        )
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise ModelscaleError(f"no class subfolders in {root}; put images in {root}/<class name>/")
    if not isinstance(image_size, int) or image_size < 1:
        raise ModelscaleError(f"image_size must be a positive int, got {image_size!r}")
    mode = "L" if grayscale else "RGB"
    images, labels = [], []
    for label, name in enumerate(classes):
        files = sorted(
            p for p in (root / name).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
        )
        if not files:
            raise ModelscaleError(
                f"class folder {root / name} has no images ({', '.join(IMAGE_SUFFIXES)}); add some or remove it"
            )
        for path in files:
            try:
                with Image.open(path) as img:
                    img = img.convert(mode).resize((image_size, image_size), Image.BILINEAR)
                    arr = np.asarray(img, dtype=np.uint8)
            except OSError as exc:
                raise ModelscaleError(f"cannot read image {path}: {exc}; fix or remove the file") from None
            images.append(arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1))
            labels.append(label)
    x = torch.from_numpy(np.stack(images))
    y = torch.tensor(labels, dtype=torch.int64)
    return Arrays(x, y, classes, scale=1.0 / 255.0, meta={"source": str(root), "image_size": image_size})


# --- npz -------------------------------------------------------------------------------------------
def read_npz(file: str) -> Arrays:
    """Arrays `x` (N, ...) and integer labels `y` (N,) from a .npz file (no pickled objects)."""
    path = Path(file).expanduser()
    if not path.is_file():
        raise ModelscaleError(f"npz file not found: {path}; it should hold arrays 'x' (N, ...) and 'y' (N,)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in ("x", "y") if k not in npz.files]
            if missing:
                raise ModelscaleError(
                    f"{path} lacks array(s) {', '.join(missing)} (has {', '.join(npz.files) or 'none'}); "
                    "save with np.savez(path, x=inputs, y=labels)"
                )
            x, y = npz["x"], npz["y"]
    except ModelscaleError:
        raise
    except Exception as exc:  # noqa: BLE001 - reported as one line
        raise ModelscaleError(
            f"cannot read {path} as npz ({exc}); save it with np.savez(path, x=..., y=...)"
        ) from None
    if y.ndim != 1 or len(y) != len(x):
        raise ModelscaleError(f"{path}: y must have shape ({len(x)},) to match x, got {y.shape}")
    if len(y) == 0:
        raise ModelscaleError(f"{path} holds no examples (x and y are empty); save at least a few per class")
    if not np.issubdtype(y.dtype, np.integer):
        whole = np.issubdtype(y.dtype, np.floating) and bool(np.all(np.isfinite(y) & (y == np.round(y))))
        hint = "; save y.astype(int)" if whole else " (regression targets are not supported)"
        raise ModelscaleError(f"{path}: y must hold integer class labels 0..K-1, got dtype {y.dtype}{hint}")
    if y.min() < 0:
        rows = np.flatnonzero(y < 0)
        raise ModelscaleError(
            f"{path}: y holds {len(rows)} negative label(s) (e.g. {int(y[rows[0]])} at row {int(rows[0])}); "
            "class labels must be 0..K-1, so relabel them (e.g. y - y.min())"
        )
    present = np.unique(y)
    if len(present) < 2:
        raise ModelscaleError(
            f"{path}: y has only one class ({int(present[0])}); a classifier needs examples of at least two"
        )
    if len(present) != int(present[-1]) + 1:
        shown = ", ".join(str(int(v)) for v in present[:8]) + (", ..." if len(present) > 8 else "")
        raise ModelscaleError(
            f"{path}: labels {{{shown}}} are not 0..K-1 ({int(present[-1]) + 1 - len(present)} unused class "
            "id(s) would become output classes); relabel with np.unique(y, return_inverse=True)[1]"
        )
    if x.dtype == np.uint8:
        xt, scale = torch.from_numpy(np.ascontiguousarray(x)), 1.0 / 255.0
    elif np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_:
        if np.iscomplexobj(x):
            raise ModelscaleError(f"{path}: x must be real numbers, got dtype {x.dtype}")
        xt, scale = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), None
        check_finite(xt, str(path))
    else:
        raise ModelscaleError(f"{path}: x must be numeric, got dtype {x.dtype}")
    num_classes = int(y.max()) + 1 if len(y) else 0
    names = [str(i) for i in range(num_classes)]
    return Arrays(xt, torch.from_numpy(y.astype(np.int64)), names, scale=scale, meta={"source": str(path)})


def check_finite(x: torch.Tensor, where: str) -> None:
    """One line naming how many inputs are NaN or infinite, and the first row holding one."""
    bad = ~torch.isfinite(x)
    if not bool(bad.any()):
        return
    rows = bad.reshape(len(x), -1).any(dim=1).nonzero().flatten()
    n_nan, n_inf = int(torch.isnan(x).sum()), int(torch.isinf(x).sum())
    what = " and ".join(f"{n} {k}" for n, k in ((n_nan, "NaN"), (n_inf, "infinite (inf)")) if n)
    raise ModelscaleError(
        f"{where}: x holds {what} value(s), first in row {int(rows[0])} ({len(rows)} row(s) in all); "
        "drop or impute those rows before training"
    )


# --- synthetic -------------------------------------------------------------------------------------
def read_synthetic(arg: str, *, seed: int, num_examples: int = 1024) -> Arrays:
    """Random normal inputs with random labels: for speed measurement only, never for accuracy."""
    shape_text, _, classes_text = (arg or "3x32x32:10").partition(":")
    try:
        shape = tuple(int(d) for d in shape_text.lower().split("x")) if shape_text else (3, 32, 32)
        num_classes = int(classes_text) if classes_text else 10
    except ValueError:
        raise ModelscaleError(
            f"cannot read synthetic spec {arg!r}; use synthetic:<shape>:<classes>, e.g. synthetic:3x32x32:10"
        ) from None
    if not shape or min(shape) < 1 or num_classes < 2:
        raise ModelscaleError(
            f"synthetic spec {arg!r} needs positive dims and >= 2 classes, e.g. synthetic:1x8x8:10"
        )
    if not isinstance(num_examples, int) or num_examples < num_classes:
        raise ModelscaleError(
            f"num_examples must be an int >= the number of classes ({num_classes}), got {num_examples!r}"
        )
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((num_examples, *shape), generator=g)
    y = torch.arange(num_examples) % num_classes  # balanced classes
    y = y[torch.randperm(num_examples, generator=g)]
    note = "random tensors with random labels: for speed measurement only, accuracy on it means nothing"
    return Arrays(x, y, [str(i) for i in range(num_classes)], meta={"source": "synthetic", "note": note})
