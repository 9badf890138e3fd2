"""Shared helpers for measuring: inputs as tuples, calling a model, and leaving it exactly as found.

Measuring never changes the model: `frozen_eval(model)` switches it to eval mode for the duration and
restores every submodule's own train/eval flag afterwards; `prepared(model, device, dtype)` runs on
the model itself when it already sits on that device and dtype, and on a converted copy otherwise.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from modelscale.core.errors import ModelscaleError

DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float64": torch.float64,
}


def as_tuple(inputs: Any) -> tuple[Any, ...]:
    """Model inputs as a tuple of positional arguments (a tensor or a tuple/list of tensors)."""
    if isinstance(inputs, tuple | list):
        return tuple(inputs)
    return (inputs,)


def batch_size(inputs: Any) -> int:
    """Leading dimension of the first tensor input (1 when there is none)."""
    for item in as_tuple(inputs):
        if isinstance(item, torch.Tensor) and item.dim() > 0:
            return int(item.shape[0])
    return 1


def input_shapes(inputs: Any) -> list[list[int]]:
    return [list(t.shape) for t in as_tuple(inputs) if isinstance(t, torch.Tensor)]


def resolve_device(device: str | torch.device) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ModelscaleError(f"unknown device {device!r}; use 'cpu', 'cuda' or 'cuda:N'") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelscaleError("device 'cuda' requested but no CUDA device is present; use device='cpu'")
    if dev.type not in ("cpu", "cuda"):
        raise ModelscaleError(f"device {device!r} is not supported for measuring; use 'cpu' or 'cuda'")
    return dev


def resolve_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype in DTYPES:
        return DTYPES[dtype]
    raise ModelscaleError(f"unknown dtype {dtype!r}; valid: {', '.join(DTYPES)}")


def model_device(model: nn.Module) -> torch.device:
    for t in list(model.parameters()) + list(model.buffers()):
        return t.device
    return torch.device("cpu")


def model_dtype(model: nn.Module) -> torch.dtype:
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def move_inputs(inputs: Any, device: torch.device, dtype: torch.dtype | None = None) -> tuple[Any, ...]:
    """Inputs on `device`; floating tensors also cast to `dtype` (integer token ids are left alone)."""
    out = []
    for item in as_tuple(inputs):
        if isinstance(item, torch.Tensor):
            item = item.to(device)
            if dtype is not None and item.is_floating_point():
                item = item.to(dtype)
        out.append(item)
    return tuple(out)


def inputs_for(
    model: nn.Module, inputs: Any, device: torch.device, dtype: torch.dtype | None
) -> tuple[Any, ...]:
    """Inputs ready for `model`: on `device`, floating ones cast to `dtype` or else to the model's dtype."""
    if dtype is None:
        dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), None)
    return move_inputs(inputs, device, dtype)


def logits_of(output: Any) -> torch.Tensor:
    """The prediction tensor of a model output (a tensor, a tuple/list's first item, or `.logits`)."""
    if isinstance(output, torch.Tensor):
        return output
    if hasattr(output, "logits"):
        return output.logits
    if isinstance(output, tuple | list) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    if isinstance(output, dict) and isinstance(output.get("logits"), torch.Tensor):
        return output["logits"]
    raise ModelscaleError(
        f"cannot find predictions in a model output of type {type(output).__name__}; "
        "return a tensor, a tuple whose first item is the logits, or an object with .logits"
    )


@contextlib.contextmanager
def frozen_eval(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode for the duration; every submodule's train/eval flag is restored afterwards."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, mode in modes:
            m.training = mode


@contextlib.contextmanager
def prepared(model: nn.Module, device: torch.device, dtype: torch.dtype | None) -> Iterator[nn.Module]:
    """The model in eval mode on `device`/`dtype`: itself if already there, otherwise a converted copy."""
    same_device = all(t.device == device for t in list(model.parameters()) + list(model.buffers()))
    same_dtype = dtype is None or all(p.dtype == dtype for p in model.parameters() if p.is_floating_point())
    if same_device and same_dtype:
        with frozen_eval(model) as m:
            yield m
        return
    clone = copy.deepcopy(model).to(device)
    if dtype is not None:
        clone = clone.to(dtype)
    yield clone.eval()


@contextlib.contextmanager
def num_threads(threads: int | None) -> Iterator[int]:
    """Run with `threads` intra-op CPU threads (unchanged when None); yields the count in effect."""
    before = torch.get_num_threads()
    if threads is not None:
        if not isinstance(threads, int) or threads < 1:
            raise ModelscaleError(f"threads must be a positive integer, got {threads!r}")
        torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (q in [0, 100]) of a non-empty list."""
    s = sorted(values)
    if len(s) == 1:
        return s[0]
    pos = (len(s) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)
