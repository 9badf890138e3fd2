"""Load weights into a freshly built zoo model from a `.safetensors` file or a torch checkpoint.

Torch files are read with `weights_only=True` (no code runs) unless the caller passes
`allow_pickle=True`, which also admits a pickled whole `nn.Module` (its state dict is loaded into the
built model, so the architecture is still the one named). Common wrappers are unwrapped: a dict with a
`state_dict` or `model` entry, and the `module.` prefix that DistributedDataParallel adds.

Example::

    from modelscale.models import build_model
    model = build_model("cnn", weights="runs/cnn.safetensors")
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from modelscale.core.errors import ModelscaleError
from modelscale.core.io import load_torch

_SHOWN = 4  # keys named in a mismatch error


def _state_dict_from(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, nn.Module):
        return obj.state_dict()
    if isinstance(obj, dict):
        for key in ("state_dict", "model"):
            inner = obj.get(key)
            if isinstance(inner, nn.Module):
                return inner.state_dict()
            if isinstance(inner, dict) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
                return inner
        if all(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj
    raise ModelscaleError(
        f"{path} holds a {type(obj).__name__}, not a state dict; save weights with "
        "torch.save(model.state_dict(), path) or safetensors"
    )


def _strip_prefix(state: dict[str, torch.Tensor], prefix: str = "module.") -> dict[str, torch.Tensor]:
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix) :]: v for k, v in state.items()}
    return state


def _keys(keys: list[str]) -> str:
    extra = f" (+{len(keys) - _SHOWN} more)" if len(keys) > _SHOWN else ""
    return ", ".join(keys[:_SHOWN]) + extra


def _mismatch(path: Path, missing: list[str], unexpected: list[str]) -> ModelscaleError:
    parts = []
    if missing:
        parts.append(f"missing {_keys(missing)}")
    if unexpected:
        parts.append(f"unexpected {_keys(unexpected)}")
    return ModelscaleError(
        f"weights in {path} do not fit the model: {'; '.join(parts)}; build the same architecture "
        "(name, width, depth, kwargs) the weights were saved from"
    )


def load_weights(model: nn.Module, weights: str | Path, *, allow_pickle: bool = False) -> nn.Module:
    """Load `weights` into `model` strictly (every key must match); returns `model`."""
    path = Path(weights)
    if path.is_dir():
        raise ModelscaleError(
            f"weights must be a file (.safetensors, .pt, .pth), got the folder {path}; "
            "for a folder written by save_compressed use modelscale.load_compressed(folder)"
        )
    if not path.is_file():
        raise ModelscaleError(f"weights file not found: {path}; check the path")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_model

        try:
            missing, unexpected = load_model(model, str(path), strict=False)
        except RuntimeError as exc:  # shape mismatch
            first = str(exc).strip().splitlines()
            detail = next(
                (line.strip() for line in first if "size mismatch" in line), first[0] if first else ""
            )
            raise ModelscaleError(f"weights in {path} do not fit the model: {detail}") from None
        except Exception as exc:  # safetensors raises its own types for corrupt files
            raise ModelscaleError(
                f"{path} is not a readable safetensors file ({type(exc).__name__})"
            ) from None
    else:
        state = _strip_prefix(_state_dict_from(load_torch(path, allow_pickle=allow_pickle), path))
        try:
            result = model.load_state_dict(state, strict=False)
        except RuntimeError as exc:  # shape mismatch
            lines = str(exc).strip().splitlines()
            detail = next(
                (line.strip() for line in lines if "size mismatch" in line), lines[0] if lines else ""
            )
            raise ModelscaleError(f"weights in {path} do not fit the model: {detail}") from None
        missing, unexpected = list(result.missing_keys), list(result.unexpected_keys)
    if missing or unexpected:
        raise _mismatch(path, sorted(missing), sorted(unexpected))
    return model
