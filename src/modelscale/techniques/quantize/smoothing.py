"""SmoothQuant's scale migration: move activation outliers into the weights, one factor per input channel.

Xiao et al., "SmoothQuant: Accurate and Efficient Post-Training Quantization for Large Language Models"
(ICML 2023). A few input channels of a transformer's Linear layers carry activations far larger than the
rest, so one scale per token wastes most int8 codes on them. For a Linear y = x Wᵀ and calibration
inputs X, with α in [0, 1] the migration strength,

    s_j = max|X_{:,j}|^α / max|W_{:,j}|^(1−α),      y = (x · diag(s)⁻¹) (W · diag(s))ᵀ

which is exact in float and leaves both factors easier to quantize (α = 0.5 balances them). The int8
layers that take `smooth` (dynamic_int8) quantize W · diag(s) and multiply x by 1/s before quantizing it.

Example::

    from modelscale.techniques.quantize.smoothing import input_channel_absmax, smoothing_scales
    absmax = input_channel_absmax(model, [("fc", model.fc)], batches)
    s = smoothing_scales(model.fc.weight, absmax["fc"], alpha=0.5)
    # (x / s) @ (W * s).T == x @ W.T
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from modelscale.core.errors import ModelscaleError

_FLOOR = 1e-5


def run_inputs(model: nn.Module, batch: Any) -> None:
    """Call `model` on one calibration batch: a tensor, (inputs, targets), or a dict of keyword inputs."""
    if isinstance(batch, dict):
        model(**batch)
    elif isinstance(batch, tuple | list) and batch and isinstance(batch[0], torch.Tensor):
        model(batch[0])
    elif isinstance(batch, torch.Tensor):
        model(batch)
    else:
        raise ModelscaleError(
            "calibration batches must be tensors, (inputs, targets) pairs or dicts of keyword inputs; "
            f"got {type(batch).__name__}"
        )


@torch.no_grad()
def input_channel_absmax(
    model: nn.Module, layers: Sequence[tuple[str, nn.Module]], batches: Sequence[Any]
) -> dict[str, torch.Tensor]:
    """max |x_j| per input channel j of each layer over every calibration batch (float32, on CPU)."""
    found: dict[str, torch.Tensor] = {}

    def observe(name: str, x: torch.Tensor) -> None:
        here = x.detach().reshape(-1, x.shape[-1]).abs().amax(0).float().cpu()
        found[name] = here if name not in found else torch.maximum(found[name], here)

    hooks = [
        module.register_forward_pre_hook(lambda _m, args, n=name: observe(n, args[0]))
        for name, module in layers
    ]
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            run_inputs(model, batch)
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    missing = [name for name, _ in layers if name not in found]
    if missing:
        raise ModelscaleError(
            f"smoothing: layers never ran on the calibration batches: {', '.join(missing[:5])}"
        )
    return found


def smoothing_scales(weight: torch.Tensor, x_absmax: torch.Tensor, alpha: float) -> torch.Tensor:
    """s_j = max|X_j|^α / max|W_{:,j}|^(1−α), float32 (in_features,), finite and positive."""
    w_absmax = weight.detach().abs().amax(0).float().cpu().clamp(min=_FLOOR)
    s = x_absmax.float().clamp(min=_FLOOR).pow(alpha) / w_absmax.pow(1.0 - alpha)
    return torch.where(torch.isfinite(s) & (s > 0), s, torch.ones_like(s))
