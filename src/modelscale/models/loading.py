"""A model with what rebuilds it: the zoo spec and the records of the techniques applied on top.

`ModelBundle(model, spec, records)` is what every front door passes around; this module builds one for
a data source (`build_for`), saves one as a folder (`save_model_dir`: model.safetensors +
modelscale.json) and loads one back (`load_model_dir`, or `load_compressed` for the bare module), with
the zoo rebuilding the base architecture from the stored spec. No pickle runs unless the caller's own
`allow_pickle=True` says so (see `modelscale.core.trust`).

Example::

    from modelscale.models.loading import build_for, load_compressed, save_model_dir
    bundle = build_for("cnn", input_shape=(1, 8, 8), num_classes=10)
    save_model_dir("runs/cnn", bundle)
    model = load_compressed("runs/cnn")
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from modelscale.core.errors import ModelscaleError
from modelscale.core.saving import load_into, read_manifest, save_compressed, stored_spec

TOKEN_FAMILIES = ("gpt", "hf:")


@dataclass
class ModelBundle:
    model: nn.Module
    spec: dict[str, Any]  # kwargs that rebuild the base model via build_model(**spec)
    records: list[Any]  # ChangeRecords applied on top of the base model


def is_token_model(model_name: str) -> bool:
    """Does the zoo family take token ids (gpt, hf:) rather than float tensors?"""
    return model_name == "gpt" or model_name.startswith("hf:")


def synthetic_inputs(
    model_name: str, batch_shape: tuple[int, ...], *, vocab: int = 256, seed: int = 0
) -> torch.Tensor:
    """A batch of synthetic inputs of `batch_shape` (for shapes, MACs and latency only)."""
    g = torch.Generator().manual_seed(seed)
    if is_token_model(model_name):
        return torch.randint(0, vocab, batch_shape, generator=g)
    return torch.rand(batch_shape, generator=g)


def build_for(
    model_name: str,
    *,
    data: Any = None,
    input_shape: tuple[int, ...] | None = None,
    num_classes: int | None = None,
    weights: str | None = None,
    allow_pickle: bool = False,
    **kwargs: Any,
) -> ModelBundle:
    """Build `model_name` sized for `data` (a DataBundle) or for an explicit per-example input shape."""
    from modelscale.models import build_model, model_spec

    if data is not None:
        input_shape = input_shape or tuple(data.input_shape)
        num_classes = num_classes or data.num_classes
        if data.task == "lm":
            kwargs.setdefault("block_size", data.input_shape[0])
            kwargs.setdefault("vocab_size", data.num_classes)
    if num_classes is None:
        num_classes = 1000 if model_name.startswith("torchvision:") else 10
    spec_kwargs: dict[str, Any] = {"num_classes": num_classes, **kwargs}
    if input_shape is not None:
        spec_kwargs["input_shape"] = tuple(input_shape)
    model = build_model(model_name, weights=weights, allow_pickle=allow_pickle, **spec_kwargs)
    return ModelBundle(model, model_spec(model_name, **spec_kwargs), [])


def is_model_dir(path: str | Path) -> bool:
    return (Path(path) / "modelscale.json").is_file()


def save_model_dir(
    path: str | Path, bundle: ModelBundle, *, meta: dict[str, Any] | None = None, storage: str = "dense"
) -> Path:
    """Write `bundle` as a folder (`save_compressed`); `storage` is "dense" or "sparse" (core/weights_file.py)."""
    return save_compressed(
        path, bundle.model, bundle.records, model_spec=bundle.spec, meta=meta, storage=storage
    )


def load_compressed(
    path: str | Path, base_model: nn.Module | None = None, *, allow_pickle: bool = False
) -> nn.Module:
    """Rebuild a model saved with `save_compressed`.

    `base_model` is a freshly built, uncompressed model of the same architecture; when omitted the
    stored model spec is built through the model zoo. `allow_pickle=True` is the caller's own opt-in to
    pickled weights the folder names; nothing in the folder can turn it on.
    """
    if base_model is None:
        from modelscale.models import build_model

        spec = stored_spec(path, read_manifest(path), allow_pickle=allow_pickle)
        base_model = build_model(**spec, allow_pickle=allow_pickle)
    return load_into(path, base_model)


def load_model_dir(path: str | Path, *, allow_pickle: bool = False) -> ModelBundle:
    """A saved folder as a bundle. `allow_pickle` is the caller's own opt-in (see `core.trust`).

    The bundle's spec carries neither trust keys nor external weights (the folder's own
    model.safetensors holds them), so re-saving it never passes a file's request on."""
    from modelscale.core.apply import ChangeRecord

    manifest = read_manifest(path)
    model = load_compressed(path, allow_pickle=allow_pickle)
    spec = stored_spec(path, manifest, allow_pickle=allow_pickle)
    spec.pop("weights", None)
    return ModelBundle(model, spec, [ChangeRecord.from_dict(r) for r in manifest["records"]])


def load_model(
    source: Any,
    *,
    data: Any = None,
    input_shape: tuple[int, ...] | None = None,
    num_classes: int | None = None,
    weights: str | None = None,
    allow_pickle: bool = False,
    seed: int | None = None,
    **kwargs: Any,
) -> ModelBundle:
    """The one model loader: a ModelBundle from a zoo name, a saved folder, a module or a bundle.

    `input_shape` is per example (no batch dimension). `seed` seeds a fresh model's initialisation."""
    if isinstance(source, ModelBundle):
        return source
    if isinstance(source, nn.Module):
        return ModelBundle(source, dict(getattr(source, "modelscale_spec", None) or {}), [])
    if not isinstance(source, str | Path):
        raise ModelscaleError(
            f"a model is a zoo name, a saved folder or an nn.Module; got {type(source).__name__}"
        )
    source = str(source)
    if is_model_dir(source):
        return load_model_dir(source, allow_pickle=allow_pickle)
    if Path(source).is_dir():
        raise ModelscaleError(f"{source} is a folder but not a saved modelscale model (no modelscale.json)")
    if seed is not None:
        torch.manual_seed(seed)  # a seed reproduces a fresh model's initialisation
    return build_for(
        source,
        data=data,
        input_shape=input_shape if input_shape and not is_token_model(source) else None,
        num_classes=num_classes,
        weights=weights,
        allow_pickle=allow_pickle,
        **kwargs,
    )


def example_inputs(
    bundle: ModelBundle | None,
    data: Any = None,
    batch_size: int | None = None,
    *,
    input_shape: tuple[int, ...] | None = None,
) -> torch.Tensor:
    """A batch of inputs for `bundle`'s model: real test inputs of `data` when given (cycled if the split
    is smaller), else synthetic inputs of `input_shape` (a batch shape) or of the model's stored shape."""
    if batch_size is not None and batch_size < 1:
        raise ModelscaleError(f"batch size must be >= 1, got {batch_size}")
    if input_shape is not None:
        batch = input_shape[0] if batch_size is None else batch_size
        return _synthetic(bundle, (batch, *input_shape[1:]))
    batch_size = batch_size or 1
    if data is not None:
        n = len(data.test)
        if n == 0:
            raise ModelscaleError(
                f"data {data.name!r} has an empty test split; lower val/test fractions or add data"
            )
        return torch.stack([data.test[i % n][0] for i in range(batch_size)])
    if bundle is None:
        raise ModelscaleError("example inputs need data or a model; pass data (e.g. digits) or --input-shape")
    return _synthetic(bundle, (batch_size, *_per_example_shape(bundle)))


def _per_example_shape(bundle: ModelBundle) -> tuple[int, ...]:
    spec, model = bundle.spec or {}, bundle.model
    name = spec.get("name", "")
    block = spec.get("block_size") or getattr(model, "block_size", None)
    if is_token_model(name) or (not name and block and getattr(model, "vocab_size", None)):
        return (int(block or 128),)
    if "input_shape" in spec:
        return tuple(spec["input_shape"])
    return (3, 224, 224) if name.startswith("torchvision:") else (1, 8, 8)


def _synthetic(bundle: ModelBundle | None, shape: tuple[int, ...]) -> torch.Tensor:
    spec = (bundle.spec if bundle is not None else None) or {}
    model = bundle.model if bundle is not None else None
    vocab = spec.get("vocab_size") or getattr(model, "vocab_size", None) or 256
    name = spec.get("name", "") or ("gpt" if getattr(model, "vocab_size", None) else "")
    return synthetic_inputs(name, shape, vocab=int(vocab))
