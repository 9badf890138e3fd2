"""Per-layer input statistics for one-shot calibration, counted over real tokens only.

A calibration batch of padded sentences can be half padding; padded positions are not data. When a
dict batch carries a 2-D `attention_mask`, `token_mask` gives the real tokens and `real_rows` keeps
only their rows of a layer input shaped (batch, tokens, …). `stats_hooks` feeds those rows of every
targeted layer's input to its `HessianStats` (X Xᵀ, Σ x², Σ |x|) during a forward pass.

Example::

    stats = new_stats(layers, hessian=True, device="cpu")
    with stats_hooks(layers, stats, first_inputs={}, record_first=[False], mask=[token_mask(batch)]):
        model(**batch)
    kept = layer_ran(layers, stats, notes)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from modelscale.techniques.oneshot.obs import HessianStats
from modelscale.techniques.oneshot.packed import layer_features


def token_mask(inputs: Any) -> torch.Tensor | None:
    """(batch, tokens) bool of the real tokens of a dict batch whose 2-D attention_mask pads some; else None."""
    mask = inputs.get("attention_mask") if isinstance(inputs, dict) else None
    if not isinstance(mask, torch.Tensor) or mask.dim() != 2 or bool(mask.bool().all()):
        return None
    return mask.bool()


def real_rows(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """The rows of a layer input that belong to real tokens: x[mask] when x is (batch, tokens, …) of the mask."""
    if mask is None or x.dim() < 3 or tuple(x.shape[:2]) != tuple(mask.shape):
        return x
    return x[mask.to(x.device)]


@contextlib.contextmanager
def stats_hooks(layers, stats, first_inputs, record_first: list[bool], mask: list) -> Iterator[None]:
    def make(name):
        def hook(_module, args):
            x = args[0]
            stats[name].add(real_rows(x, mask[0]))
            if record_first[0] and name not in first_inputs:
                first_inputs[name] = x  # a strong reference: identities stay unique during the chunk

        return hook

    handles = [module.register_forward_pre_hook(make(name)) for name, module in layers]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def new_stats(layers, hessian: bool, device) -> dict[str, HessianStats]:
    return {name: HessianStats(layer_features(m)[1], hessian=hessian, device=device) for name, m in layers}


def layer_ran(layers, stats, notes) -> list[tuple[str, nn.Module]]:
    kept = []
    for name, module in layers:
        if stats[name].rows:
            kept.append((name, module))
        else:
            notes.append(
                f"{name}: never ran during calibration (its parent may read .weight directly), left as is"
            )
    return kept
