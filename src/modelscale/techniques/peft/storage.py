"""Save and load only the trainable tensors of a PEFT model (adapters, LoRA factors, biases, head).

A fine-tuned adapter is tiny next to its base model, so it is stored on its own: `save_adapter`
writes every parameter with `requires_grad=True` to one safetensors file; `load_adapter` copies
them into a model that already has the same structure (the base model with the same PEFT config
applied). Nothing else in the model changes.

Example::

    result = apply(base, LoRAConfig(rank=4)); fit(result.model, data, cfg)
    save_adapter(result.model, "task_a.safetensors")                 # kilobytes, not the whole model
    fresh = apply(build_model("cnn"), LoRAConfig(rank=4)).model
    load_adapter(fresh, "task_a.safetensors")                        # now equals result.model
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from modelscale.core.errors import ModelscaleError
from modelscale.core.io import atomic_path

FORMAT = "modelscale-adapter"


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The parameters with requires_grad=True, by qualified name (shared tensors under their first name)."""
    return {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}


def save_adapter(model: nn.Module, path: str | Path) -> Path:
    """Write only the trainable tensors of `model` to the safetensors file `path`."""
    from safetensors.torch import save_file

    state = {n: t.contiguous().clone().cpu() for n, t in trainable_state(model).items()}
    if not state:
        raise ModelscaleError("the model has no trainable parameters to save; apply a PEFT technique first")
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={"format": FORMAT, "version": "1"})
    return Path(path)


def load_adapter(model: nn.Module, path: str | Path, *, strict: bool = True) -> list[str]:
    """Copy the tensors saved by `save_adapter` into `model` in place; return their names.

    With `strict`, the file must hold exactly the model's trainable parameters (same names and shapes).
    """
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise ModelscaleError(f"adapter file not found: {path}; check the path")
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
        state = load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types for corrupt files
        raise ModelscaleError(f"{path} is corrupt or not a safetensors file ({type(exc).__name__})") from None
    if meta.get("format") != FORMAT:
        raise ModelscaleError(f"{path} was not written by save_adapter; save it with save_adapter")
    params = dict(model.named_parameters())
    missing = sorted(set(state) - set(params))
    if missing:
        raise ModelscaleError(
            f"{path} holds {missing[0]!r} (and {len(missing) - 1} more) that this model lacks; "
            "apply the same PEFT config to the base model before load_adapter"
        )
    if strict:
        expected = set(trainable_state(model))
        absent = sorted(expected - set(state))
        if absent:
            raise ModelscaleError(
                f"{path} lacks trainable tensor {absent[0]!r}; use the same PEFT config, or strict=False"
            )
    with torch.no_grad():
        for name, tensor in state.items():
            target = params[name]
            if target.shape != tensor.shape:
                raise ModelscaleError(
                    f"{name}: saved shape {tuple(tensor.shape)} != model shape {tuple(target.shape)}; "
                    "use the same PEFT config (rank, bottleneck, head size)"
                )
            target.copy_(tensor.to(device=target.device, dtype=target.dtype))
    return sorted(state)
