"""Glue shared by the CLI and the demo: build a model for a data source, make example inputs, save/load.

These are thin, typed functions over the library (data, models, train, measure, core); the CLI only
parses arguments and calls them, so Python users get exactly the same behaviour.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from modelscale.core.errors import ModelscaleError

TOKEN_MODELS = ("gpt", "hf:")


def is_token_model(model_name: str) -> bool:
    return model_name == "gpt" or model_name.startswith("hf:")


def parse_shape(text: str | None) -> tuple[int, ...] | None:
    """'1,3,224,224' -> (1, 3, 224, 224), with a one-line error for anything else."""
    if text is None:
        return None
    try:
        shape = tuple(int(part) for part in str(text).split(",") if part.strip())
    except ValueError:
        raise ModelscaleError(
            f"--input-shape {text!r} must be comma-separated integers, e.g. 1,3,224,224"
        ) from None
    if not shape or any(d <= 0 for d in shape):
        raise ModelscaleError(f"--input-shape {text!r} must be positive integers, e.g. 1,3,224,224")
    return shape


def example_inputs(
    model_name: str, batch_shape: tuple[int, ...], *, vocab: int = 256, seed: int = 0
) -> torch.Tensor:
    """A batch of synthetic inputs of `batch_shape` (for shapes, MACs and latency only)."""
    g = torch.Generator().manual_seed(seed)
    if is_token_model(model_name):
        return torch.randint(0, vocab, batch_shape, generator=g)
    return torch.rand(batch_shape, generator=g)


@dataclass
class ModelBundle:
    model: nn.Module
    spec: dict[str, Any]  # kwargs that rebuild the base model via build_model(**spec)
    records: list[Any]  # ChangeRecords applied on top of the base model


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


def save_model_dir(path: str | Path, bundle: ModelBundle, *, meta: dict[str, Any] | None = None) -> Path:
    from modelscale.core.checkpoint import save_compressed

    return save_compressed(path, bundle.model, bundle.records, model_spec=bundle.spec, meta=meta)


def load_model_dir(path: str | Path, *, allow_pickle: bool = False) -> ModelBundle:
    """A saved folder as a bundle. `allow_pickle` is the caller's own opt-in (see `core.trust`).

    The bundle's spec carries neither trust keys nor external weights (the folder's own
    model.safetensors holds them), so re-saving it never passes a file's request on."""
    from modelscale.core.apply import ChangeRecord
    from modelscale.core.checkpoint import load_compressed, read_manifest, stored_spec

    manifest = read_manifest(path)
    model = load_compressed(path, allow_pickle=allow_pickle)
    spec = stored_spec(path, manifest, allow_pickle=allow_pickle)
    spec.pop("weights", None)
    return ModelBundle(model, spec, [ChangeRecord.from_dict(r) for r in manifest["records"]])


def is_model_dir(path: str) -> bool:
    return (Path(path) / "modelscale.json").is_file()


def loss_for(data: Any):
    """The training loss for a data bundle's task (cross-entropy; per token for language models)."""
    import torch.nn.functional as F

    if data is not None and data.task == "lm":
        return lambda logits, targets: F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)
        )
    return F.cross_entropy
