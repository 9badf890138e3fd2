"""AWQ's clipping search: per (row, group), the clipping range whose rounding has the least output error.

For a weight W (already scaled by AWQ's s) and its inputs' Hessian H, each (row, group) is clipped to
[r_lo·min, r_hi·max] and rounded; the ratio pair with the least output error d H_g dᵀ (d the rounding
error of the group, H_g the group's diagonal block of H) is kept — AWQ's "auto clip" (Lin et al., MLSys
2024), scored on the output through H rather than on a batch of activations.

Example::

    clipped = clip_rtn(w * s, h / (s[:, None] * s[None, :]), AWQConfig(bits=3))
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from modelscale.techniques.quantize.common import (
    SCALE_DTYPES,
    dequantize_groups,
    group_layout,
    quantize_groups,
)

if TYPE_CHECKING:
    from modelscale.techniques.oneshot.awq import AWQConfig


def rtn(w: torch.Tensor, config: AWQConfig) -> torch.Tensor:
    q, s, z = quantize_groups(
        w, bits=config.bits, group_size=config.group_size, symmetric=config.symmetric,
        scale_dtype=SCALE_DTYPES[config.scale_dtype],
    )  # fmt: skip
    return dequantize_groups(q, s, z, group_size=group_layout(w.shape[1], config.group_size)[0])


def output_error(d: torch.Tensor, h: torch.Tensor) -> float:
    """Σ_rows d H dᵀ: the layer output error ‖d X‖² up to the constant n/2."""
    return float(((d @ h) * d).sum())


def clip_rtn(w: torch.Tensor, h: torch.Tensor, config: AWQConfig) -> torch.Tensor:
    """Clip each (row, group) to [r_lo·min, r_hi·max], r from 1 down to 1 − clip_range, chosen by its output error.

    One ratio r_lo = r_hi first (`clip_grid` values); with `clip_separate` (asymmetric codes) the low end,
    then the high end, is searched again with the other end held at its best: never worse than one ratio."""
    rows, cols = w.shape
    group, groups = group_layout(cols, config.group_size)
    if groups * group != cols:
        return w
    wg = w.view(rows, groups, group)
    hg = torch.stack([h[g * group : (g + 1) * group, g * group : (g + 1) * group] for g in range(groups)])
    lo = wg.amin(-1, keepdim=True).clamp(max=0)
    hi = wg.amax(-1, keepdim=True).clamp(min=0)
    if config.symmetric:
        hi = torch.maximum(hi, -lo)
        lo = -hi
    ratios = [1.0 - config.clip_range * k / max(config.clip_grid - 1, 1) for k in range(config.clip_grid)]
    best_err = torch.full((rows, groups, 1), float("inf"))
    best = wg.clone()
    best_lo, best_hi = torch.ones_like(lo), torch.ones_like(hi)

    def trial(r_lo, r_hi) -> torch.Tensor:
        nonlocal best_err, best
        clipped = torch.maximum(torch.minimum(wg, hi * r_hi), lo * r_lo)
        d = rtn(clipped.reshape(rows, cols), config).view(rows, groups, group) - wg
        err = torch.einsum("rgi,gij,rgj->rg", d, hg, d)[..., None]
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best = torch.where(better, clipped, best)
        return better

    for r in ratios:
        better = trial(r, r)
        best_lo, best_hi = torch.where(better, r, best_lo), torch.where(better, r, best_hi)
    if config.clip_separate and not config.symmetric:
        for r in ratios:
            best_lo = torch.where(trial(r, best_hi), r, best_lo)
        for r in ratios:
            best_hi = torch.where(trial(best_lo, r), r, best_hi)
    return best.reshape(rows, cols)
