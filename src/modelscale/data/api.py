"""`load_data(spec)`: one call from a source name to three seeded, disjoint splits in a `DataBundle`.

Sources (spec strings): `digits`, `cifar10:<dir>`, `imagefolder:<dir>`, `npz:<file>`,
`text:<file-or-dir>`, `pystdlib`, `synthetic[:<C>x<H>x<W>[:<classes>]]`. Classification sources get a
seeded stratified split (cifar10 keeps its official test set and splits val off its train set); text
sources are split contiguously (train, val, test in file order) and served as byte windows.

Example::

    from modelscale.data import load_data, make_loader
    data = load_data("digits", seed=0)                 # 1797 real digits -> train/val/test
    loader = make_loader(data.train, batch_size=64, shuffle=True, seed=0)
    lm = load_data("pystdlib", block_size=64, max_bytes=1_000_000)
    x, y = lm.train[0]                                  # y is x shifted by one byte
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from modelscale.core.errors import ModelscaleError
from modelscale.data.augment import AugmentConfig
from modelscale.data.bundle import DataBundle
from modelscale.data.datasets import ArrayDataset, ByteWindows, random_offsets, strided_offsets
from modelscale.data.splits import check_fractions, split_indices, subsample_count

# name -> (usage, extra keyword options the source accepts)
_SOURCES: dict[str, tuple[str, dict[str, Any]]] = {
    "digits": ("digits", {}),
    "cifar10": ("cifar10:<dir>", {}),
    "imagefolder": ("imagefolder:<dir>", {"image_size": 32, "grayscale": False}),
    "npz": ("npz:<file>", {"standardize": False}),
    "text": ("text:<file-or-dir>", {}),
    "pystdlib": ("pystdlib", {}),
    "synthetic": ("synthetic[:<C>x<H>x<W>[:<classes>]]", {"num_examples": 1024}),
}
_NEEDS_ARG = {"cifar10": "a folder", "imagefolder": "a folder", "npz": "a file", "text": "a file or folder"}
_LM_SOURCES = {"text", "pystdlib"}


def list_sources() -> list[str]:
    """Names of the data sources `load_data` understands."""
    return sorted(_SOURCES)


def load_data(
    spec: str,
    *,
    seed: int = 0,
    val_fraction: float = 0.15,
    test_fraction: float = 0.2,
    augment: AugmentConfig | None = None,
    block_size: int = 128,
    data_fraction: float = 1.0,
    max_bytes: int | None = None,
    **options: Any,
) -> DataBundle:
    """Load `spec` and split it into train/val/test (see the module docstring for the sources).

    `data_fraction` < 1 keeps a seeded stratified subset of the train split only (val and test are
    unchanged, so results at different data budgets are comparable). `max_bytes` caps text sources
    (pystdlib defaults to 8 MB). `options` are source-specific: imagefolder takes `image_size` (32)
    and `grayscale` (False); synthetic takes `num_examples` (1024); npz takes `standardize` (False:
    True shifts and scales every feature — every channel of image-shaped inputs — to mean 0 and
    standard deviation 1 with statistics of the train split only, applied to all three splits).
    """
    name, arg = _parse(spec)
    _check_common(seed, block_size, max_bytes, augment, val_fraction, test_fraction, data_fraction)
    seed = int(seed)
    allowed = _SOURCES[name][1]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        valid = ", ".join(allowed) or "none"
        raise ModelscaleError(f"source {name!r} does not take option(s) {', '.join(unknown)}; valid: {valid}")
    opts = {**allowed, **options}
    if name in _LM_SOURCES:
        if augment is not None:
            raise ModelscaleError(f"augment applies to image data; {name!r} is a text source, drop augment")
        return _load_lm(
            spec, name, arg, seed, val_fraction, test_fraction, block_size, data_fraction, max_bytes
        )
    from modelscale.data import images

    if name == "digits":
        arrays = images.read_digits()
    elif name == "cifar10":
        arrays = images.read_cifar10(arg)
    elif name == "imagefolder":
        arrays = images.read_imagefolder(arg, image_size=opts["image_size"], grayscale=opts["grayscale"])
    elif name == "npz":
        if not isinstance(opts["standardize"], bool):
            raise ModelscaleError(f"standardize must be true or false, got {opts['standardize']!r}")
        arrays = images.read_npz(arg)
    else:
        arrays = images.read_synthetic(arg, seed=seed, num_examples=opts["num_examples"])
    return _split_classification(
        spec,
        arrays,
        seed,
        val_fraction,
        test_fraction,
        data_fraction,
        augment,
        opts.get("standardize", False),
    )


def as_data_bundle(data: Any, *, seed: int = 0, **options: Any) -> DataBundle | None:
    """A DataBundle from a spec string (`digits`, `npz:FILE` ...), a DataBundle, or None."""
    if data is None or isinstance(data, DataBundle):
        return data
    if not isinstance(data, str):
        raise ModelscaleError(
            f"data must be a data spec string (e.g. 'digits') or a DataBundle, got {type(data).__name__}"
        )
    return load_data(data, seed=seed, **options)


def make_loader(
    dataset: Dataset,
    *,
    batch_size: int,
    shuffle: bool,
    seed: int = 0,
    drop_last: bool = False,
    num_workers: int = 0,
) -> DataLoader:
    """A DataLoader whose shuffling (and worker seeds) come from its own generator seeded with `seed`."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ModelscaleError(f"batch_size must be a positive int, got {batch_size!r}")
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise ModelscaleError(f"num_workers must be an int >= 0, got {num_workers!r}")
    generator = torch.Generator().manual_seed(int(seed))
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        drop_last=drop_last,
        num_workers=num_workers,
        generator=generator,
    )


# --- internals -------------------------------------------------------------------------------------
def _parse(spec: str) -> tuple[str, str]:
    if not isinstance(spec, str) or not spec.strip():
        raise ModelscaleError(
            f"data spec must be a non-empty string, got {spec!r}; valid sources: {_usages()}"
        )
    name, _, arg = spec.strip().partition(":")
    name = name.strip().lower()
    if name not in _SOURCES:
        raise ModelscaleError(f"unknown data source {name!r}; valid sources: {_usages()}")
    if name in _NEEDS_ARG and not arg.strip():
        raise ModelscaleError(f"source {name!r} needs {_NEEDS_ARG[name]}: use {_SOURCES[name][0]}")
    if name in ("digits", "pystdlib") and arg:
        raise ModelscaleError(f"source {name!r} takes no argument; use plain {name!r}")
    return name, arg.strip()


def _usages() -> str:
    return ", ".join(usage for usage, _ in _SOURCES.values())


def _check_common(seed, block_size, max_bytes, augment, val_fraction, test_fraction, data_fraction) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ModelscaleError(f"seed must be an int >= 0, got {seed!r}")
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ModelscaleError(f"block_size must be a positive int, got {block_size!r}")
    if max_bytes is not None and (
        isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1
    ):
        raise ModelscaleError(f"max_bytes must be a positive int or None, got {max_bytes!r}")
    if augment is not None and not isinstance(augment, AugmentConfig):
        raise ModelscaleError(f"augment must be an AugmentConfig or None, got {type(augment).__name__}")
    check_fractions(val_fraction, test_fraction, data_fraction)


def _split_classification(
    spec, arrays, seed, val_fraction, test_fraction, data_fraction, augment, standardize=False
) -> DataBundle:
    labels = arrays.y.numpy()
    num_classes = len(arrays.class_names)
    if arrays.test_rows is not None:  # official test set: keep it, split val off the rest
        pool = np.setdiff1d(np.arange(len(labels)), arrays.test_rows)
        parts = split_indices(
            labels, seed=seed, val_fraction=val_fraction, test_fraction=0.0, data_fraction=1.0, pool=pool
        )
        parts["test"] = np.sort(arrays.test_rows)
        test_note = "official test set"
    else:
        parts = split_indices(labels, seed=seed, val_fraction=val_fraction, test_fraction=test_fraction)
        test_note = f"stratified {test_fraction:g} of all examples"
    full_train = len(parts["train"])
    parts["train"] = _subsample(parts["train"], labels, seed, data_fraction)
    _warn_missing_classes(spec, labels, parts, arrays.class_names)
    image_like = arrays.x.ndim == 4
    if augment is not None and augment.active and not image_like:
        raise ModelscaleError(
            f"augment needs image inputs (C, H, W); {spec!r} has inputs of shape {tuple(arrays.x.shape[1:])}"
        )

    shift = divide = None
    standardized = None
    if standardize:
        shift, divide, standardized = _train_statistics(arrays, parts["train"], spec)

    def make(split: str, aug: AugmentConfig | None) -> ArrayDataset:
        return ArrayDataset(
            arrays.x,
            arrays.y,
            parts[split],
            scale=arrays.scale,
            augment=aug,
            seed=seed,
            shift=shift,
            divide=divide,
        )

    meta = {
        **arrays.meta,
        "spec": spec,
        "seed": seed,
        "split_sizes": {k: int(len(v)) for k, v in parts.items()},
        "val_fraction": val_fraction,
        "test_fraction": test_fraction if arrays.test_rows is None else None,
        "test_split": test_note,
        "data_fraction": data_fraction,
        "train_size_before_data_fraction": full_train,
        "class_names": list(arrays.class_names),
        "class_counts": {k: np.bincount(labels[v], minlength=num_classes).tolist() for k, v in parts.items()},
        "augment": augment.to_dict() if augment is not None else None,
        "standardize": standardized,
    }
    return DataBundle(
        name=spec,
        task="classification",
        train=make("train", augment),
        val=make("val", None),
        test=make("test", None),
        num_classes=num_classes,
        input_shape=tuple(int(d) for d in arrays.x.shape[1:]),
        meta=meta,
    )


def _train_statistics(
    arrays: Any, train: np.ndarray, spec: str
) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """Per-feature (per-channel for N×C×H×W inputs) mean and standard deviation of the train rows."""
    if len(train) < 2:
        raise ModelscaleError(f"{spec}: standardize needs at least 2 training examples, got {len(train)}")
    x = arrays.x[torch.as_tensor(train, dtype=torch.int64)].to(torch.float64)
    if arrays.scale is not None:
        x = x * arrays.scale
    dims = (0, 2, 3) if x.ndim == 4 else (0,)
    mean = x.mean(dim=dims, keepdim=True)[0]
    std = x.std(dim=dims, unbiased=False, keepdim=True)[0]
    constant = int((std <= 1e-12).sum())
    std = torch.where(std <= 1e-12, torch.ones_like(std), std)  # a constant feature is only shifted
    flat_mean, flat_std = mean.flatten().tolist(), std.flatten().tolist()
    info: dict[str, Any] = {
        "fitted_on": f"train split ({len(train)} examples)",
        "per": "channel" if x.ndim == 4 else "feature",
        "count": len(flat_mean),
        "constant_features": constant,
    }
    if len(flat_mean) <= 64:
        info["mean"] = [round(v, 6) for v in flat_mean]
        info["std"] = [round(v, 6) for v in flat_std]
    return mean.to(torch.float32), std.to(torch.float32), info


def _warn_missing_classes(
    spec: str, labels: np.ndarray, parts: dict[str, np.ndarray], names: list[str]
) -> None:
    """Warn (once per split) when a class has no example in a split that is not empty."""
    import warnings

    from modelscale.core.errors import ModelscaleWarning

    for split, rows in parts.items():
        if len(rows) == 0:
            continue
        missing = sorted(set(range(len(names))) - set(np.unique(labels[rows]).tolist()))
        if missing:
            shown = ", ".join(f"class {c}" for c in missing[:5]) + (" ..." if len(missing) > 5 else "")
            warnings.warn(
                f"{spec}: the {split} split has no example of {shown}; add examples of it or expect "
                f"{split} metrics that never test it",
                ModelscaleWarning,
                stacklevel=2,
            )


def _subsample(train: np.ndarray, labels: np.ndarray, seed: int, data_fraction: float) -> np.ndarray:
    if data_fraction >= 1.0:
        return train
    from modelscale.data.splits import stratified_order

    # A different seed stream from the split itself, still nested: smaller fractions are prefixes.
    order = train[stratified_order(labels[train], seed + 1_000_003)]
    return np.sort(order[: subsample_count(data_fraction, len(train))])


def _load_lm(
    spec, name, arg, seed, val_fraction, test_fraction, block_size, data_fraction, max_bytes
) -> DataBundle:
    from modelscale.data import text

    if name == "pystdlib":
        data, info = text.read_pystdlib(
            max_bytes=max_bytes if max_bytes is not None else text.PYSTDLIB_MAX_BYTES
        )
    else:
        data, info = text.read_text(arg, max_bytes=max_bytes)
    n = len(data)
    n_test, n_val = int(n * test_fraction), int(n * val_fraction)
    n_train = n - n_val - n_test
    bounds = {"train": (0, n_train), "val": (n_train, n_train + n_val), "test": (n_train + n_val, n)}
    n_train_used = subsample_count(data_fraction, n_train)
    bounds["train"] = (0, n_train_used)
    fractions = {"train": 1.0, "val": val_fraction, "test": test_fraction}
    all_bytes = torch.from_numpy(np.frombuffer(data, dtype=np.uint8).copy())
    splits: dict[str, ByteWindows] = {}
    for split, (lo, hi) in bounds.items():
        size = hi - lo
        if fractions[split] > 0 and size < block_size + 1:
            raise ModelscaleError(
                f"{spec!r}: the {split} split has {size} bytes but needs >= block_size + 1 = {block_size + 1}; "
                "use more text, a smaller block_size or larger fractions"
            )
        chunk = all_bytes[lo:hi]
        if size < block_size + 1:
            offsets = torch.zeros(0, dtype=torch.int64)
        elif split == "train":
            offsets = random_offsets(size, block_size, seed)
        else:
            offsets = strided_offsets(size, block_size)
        splits[split] = ByteWindows(chunk, block_size, offsets)
    meta = {
        **info,
        "spec": spec,
        "seed": seed,
        "block_size": block_size,
        "bytes": {k: hi - lo for k, (lo, hi) in bounds.items()},
        "total_bytes": n,
        "split_sizes": {k: len(v) for k, v in splits.items()},
        "val_fraction": val_fraction,
        "test_fraction": test_fraction,
        "data_fraction": data_fraction,
        "train_bytes_before_data_fraction": n_train,
        "split_method": "contiguous bytes: train, then val, then test",
        "windows": "train: seeded random starts; val/test: non-overlapping strided",
    }
    return DataBundle(
        name=spec,
        task="lm",
        train=splits["train"],
        val=splits["val"],
        test=splits["test"],
        num_classes=256,
        input_shape=(block_size,),
        meta=meta,
    )
