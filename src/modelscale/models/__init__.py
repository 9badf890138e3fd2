"""Model zoo: build a model by name, at a size set by `width` and `depth` multipliers.

Families (each registers itself in its own file, see `registry.py`):

- `mlp`   — flattens the input; hidden layers of 128·width units, 2·depth of them.
- `cnn`   — small conv net for small images (digits 1×8×8, CIFAR 3×32×32).
- `gpt`   — byte-level decoder-only transformer; (B, T) int64 → (B, T, vocab) logits.
- `torchvision:<name>` — any torchvision classification model, adapted to small inputs.
- `hf:<dir | config.json | tiny-gpt2 | tiny-bert | tiny-llama>` — a transformers model (optional extra).

`model_spec` returns the JSON-safe keyword arguments that rebuild the same architecture with
`build_model(**spec)`; a built model also carries it as `model.modelscale_spec`, and any adaptation the
zoo made (e.g. a ResNet's stem shrunk for 32×32 images) as the list `model.modelscale_notes`.

Example::

    from modelscale.models import build_model, model_spec
    model = build_model("cnn", num_classes=10, input_shape=(1, 8, 8), width=0.5)
    spec = model_spec("cnn", num_classes=10, input_shape=(1, 8, 8), width=0.5)
    same_shape = build_model(**spec)
"""

from __future__ import annotations

import math
from typing import Any

from torch import nn

from modelscale.core.errors import ModelscaleError
from modelscale.models.registry import ModelArgs, build, check_args, list_models, register_model, resolve

__all__ = ["ModelArgs", "build_model", "list_models", "model_spec", "register_model"]


def build_model(
    name: str,
    *,
    num_classes: int = 10,
    input_shape: tuple[int, ...] = (1, 8, 8),
    width: float = 1.0,
    depth: float = 1.0,
    dropout: float = 0.0,
    weights: str | None = None,
    allow_pickle: bool = False,
    **kwargs: Any,
) -> nn.Module:
    """Build zoo model `name`; load `weights` (a .safetensors file or torch state dict) when given.

    `allow_pickle=True` lets `weights` be a pickled file (which can run code); only for trusted files.
    Extra keyword arguments go to the family's builder (e.g. `n_head=8` for `gpt`, `task="lm"` for `hf:`).
    """
    spec = model_spec(
        name,
        num_classes=num_classes,
        input_shape=input_shape,
        width=width,
        depth=depth,
        dropout=dropout,
        weights=weights,
        **kwargs,
    )
    args = check_args(num_classes, input_shape, width, depth, dropout)
    model = build(name, args, kwargs, allow_pickle=allow_pickle)
    if weights is not None:
        from modelscale.models.weights import load_weights

        load_weights(model, weights, allow_pickle=allow_pickle)
    model.modelscale_spec = spec
    if not isinstance(getattr(model, "modelscale_notes", None), list):
        model.modelscale_notes = []
    return model


def model_spec(
    name: str,
    *,
    num_classes: int = 10,
    input_shape: tuple[int, ...] = (1, 8, 8),
    width: float = 1.0,
    depth: float = 1.0,
    dropout: float = 0.0,
    weights: str | None = None,
    allow_pickle: bool = False,
    **kwargs: Any,
) -> dict[str, Any]:
    """JSON-safe keyword arguments that rebuild this architecture with `build_model(**spec)`.

    The spec never stores `allow_pickle`: rebuilding from stored data must not run pickled code. It
    stores `weights` only when given (omit it when the weights are saved elsewhere, e.g. by
    `save_compressed`).
    """
    del allow_pickle  # deliberately not stored
    resolve(name)
    args = check_args(num_classes, input_shape, width, depth, dropout)
    spec: dict[str, Any] = {
        "name": name,
        "num_classes": args.num_classes,
        "input_shape": list(args.input_shape),
        "width": args.width,
        "depth": args.depth,
        "dropout": args.dropout,
    }
    if weights is not None:
        spec["weights"] = str(weights)
    for key, value in kwargs.items():
        spec[key] = _json_safe(key, value)
    return spec


def _json_safe(key: str, value: Any) -> Any:
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ModelscaleError(f"model option {key}={value!r} is not a finite number")
        return value
    if isinstance(value, tuple | list):
        return [_json_safe(key, v) for v in value]
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {k: _json_safe(key, v) for k, v in value.items()}
    raise ModelscaleError(
        f"model option {key}={value!r} is not JSON data ({type(value).__name__}); "
        "pass numbers, strings, booleans, lists or dicts"
    )
