"""MACs and FLOPs of one forward pass, in total and per layer, counted by PyTorch itself.

`torch.utils.flop_counter.FlopCounterMode` intercepts every aten op of a real forward and counts the
FLOPs of matrix products and convolutions (mm, addmm, bmm, conv, scaled-dot-product attention): a
multiply-accumulate is 2 FLOPs, so `macs = flops / 2`. Elementwise ops (activations, normalization,
additions, pooling) are not counted — the usual convention, and the one behind torchvision's
`_ops` (GMACs) metadata, which this matches within 2 % on every torchvision classification model
(tests/measure/test_macs_torchvision.py), e.g. resnet50 4.09 G, vit_b_16 17.56 G.

Attention is counted whichever kernel runs: the fused fast path of `nn.MultiheadAttention` /
`nn.TransformerEncoderLayer` (taken in eval mode without gradients, and invisible to the counter) is
switched off while counting, and the attention products QK^T and AV (``2·B·H·Lq·Lk·d`` MACs) have
formulas for every scaled-dot-product kernel, the CPU flash kernel included. This is the one MAC counter:
profiles, technique records (structured pruning), reports and the search all call `count_macs`. The
model may sit on the ``meta`` device (shapes only, no arithmetic: counts a 600 M-parameter model in a
second).

Per-layer rows come from forward hooks: a module's *own* count is what ran inside it minus what ran
inside its children, so leaf layers carry their convolutions and a parent that calls an op directly
(e.g. attention via `F.scaled_dot_product_attention`) carries that op. A masked layer is counted
densely: its zeros are still multiplied unless a sparse kernel runs it.

Example::

    from modelscale.measure.macs import count_macs
    report = count_macs(model, torch.randn(1, 3, 224, 224))
    print(report.macs / 1e9, "GMACs;", report.layers[0].name, report.layers[0].macs)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from modelscale.measure._common import as_tuple, batch_size, frozen_eval, input_shapes
from modelscale.measure._report import Report


@dataclass
class LayerMacs(Report):
    """One module's own multiply-accumulates in one forward (its children excluded)."""

    name: str
    type: str
    macs: int
    flops: int
    calls: int


@dataclass
class MacsReport(Report):
    """Multiply-accumulates (MACs) and FLOPs (= 2 x MACs for counted ops) of one forward."""

    macs: int
    flops: int
    batch_size: int
    input_shapes: list[list[int]]
    by_op: dict[str, int] = field(default_factory=dict)  # aten op -> FLOPs
    layers: list[LayerMacs] = field(default_factory=list)  # modules with a non-zero own count

    @property
    def macs_per_example(self) -> float:
        return self.macs / max(self.batch_size, 1)


def count_macs(model: nn.Module, example_inputs: Any) -> MacsReport:
    """Run one forward of `model` (in eval mode, no grad) on `example_inputs` and count its MACs.

    `example_inputs` is a tensor, a tuple of positional inputs, or a dict of keyword inputs (Hugging
    Face models). The inputs must already be on the model's device; the model is left as it was.
    """
    from torch.utils.flop_counter import FlopCounterMode

    kwargs = example_inputs if isinstance(example_inputs, dict) else {}
    args = () if kwargs else as_tuple(example_inputs)
    shown = tuple(kwargs.values()) if kwargs else args
    counter = FlopCounterMode(display=False, depth=None, custom_mapping=_extra_formulas())
    own: dict[str, list[Any]] = {}  # name -> [type, own flops, calls]
    stack: list[list[int]] = []  # per active module: [flops at entry, flops in children]
    names = {id(m): n for n, m in model.named_modules(remove_duplicate=False)}

    def pre_hook(module: nn.Module, _inputs: Any) -> None:
        stack.append([counter.get_total_flops(), 0])

    def post_hook(module: nn.Module, _inputs: Any, _output: Any) -> None:
        if not stack:
            return
        start, children = stack.pop()
        inclusive = counter.get_total_flops() - start
        if stack:
            stack[-1][1] += inclusive
        row = own.setdefault(names.get(id(module), "") or "(model)", [type(module).__name__, 0, 0])
        row[1] += inclusive - children
        row[2] += 1

    handles = []
    for module in dict.fromkeys(m for _, m in model.named_modules()):
        handles.append(module.register_forward_pre_hook(pre_hook))
        handles.append(module.register_forward_hook(post_hook, always_call=True))
    try:
        with frozen_eval(model), torch.no_grad(), _unfused_attention(), counter:
            model(*args, **kwargs)
    finally:
        for h in handles:
            h.remove()

    total = int(counter.get_total_flops())
    by_op: dict[str, int] = {}
    for op, flops in counter.get_flop_counts().get("Global", {}).items():
        key = str(getattr(op, "__name__", op))
        by_op[key] = by_op.get(key, 0) + int(flops)
    order = {n: i for i, (n, _) in enumerate(model.named_modules())}
    layers = [
        LayerMacs(name=name, type=kind, macs=int(flops) // 2, flops=int(flops), calls=calls)
        for name, (kind, flops, calls) in own.items()
        if flops > 0
    ]
    layers.sort(key=lambda r: order.get(r.name, -1))
    return MacsReport(
        macs=total // 2,
        flops=total,
        batch_size=batch_size(shown),
        input_shapes=input_shapes(shown),
        by_op=by_op,
        layers=layers,
    )


@contextlib.contextmanager
def _unfused_attention() -> Iterator[None]:
    """Switch off the fused MultiheadAttention/TransformerEncoderLayer fast path for the duration.

    That path runs one native kernel whose projections and attention products the counter cannot see;
    the unfused path computes the same function with ops it counts."""
    mha = getattr(torch.backends, "mha", None)
    if mha is None or not hasattr(mha, "set_fastpath_enabled"):
        yield
        return
    was = mha.get_fastpath_enabled()
    mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        mha.set_fastpath_enabled(was)


def _sdpa_flops(
    q_shape: Any, k_shape: Any, v_shape: Any, *args: Any, out_shape: Any = None, **kwargs: Any
) -> int:
    """FLOPs of attention (B, H, Lq, d) x (B, H, Lk, d): QK^T and AV, 2 · 2·B·H·Lq·Lk·d."""
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(q_shape, k_shape, v_shape)


def _native_mha_flops(
    q_shape: Any,
    k_shape: Any,
    v_shape: Any,
    embed_dim: int,
    num_heads: int,
    *args: Any,
    out_shape: Any = None,
    **kwargs: Any,
) -> int:
    """FLOPs of the fused MultiheadAttention kernel: q/k/v and output projections plus QK^T and AV.

    Inputs are (B, L, E) (batch first, as the fast path requires)."""
    b, lq, e = q_shape
    lk = k_shape[1]
    projections = 2 * b * e * embed_dim * (lq + 2 * lk) + 2 * b * lq * embed_dim * embed_dim
    return projections + 2 * 2 * b * lq * lk * embed_dim


def _int8_mm_flops(a_shape: Any, b_shape: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    """FLOPs of an int8 matrix product (m×k @ k×n): 2·m·k·n, like a float one."""
    m, k = a_shape
    return 2 * m * k * b_shape[1]


def _int8_conv_flops(
    x_shape: Any, x_scale: Any, x_zp: Any, w_shape: Any, *args: Any, out_shape: Any = None, **kwargs: Any
) -> int:
    """FLOPs of oneDNN's int8 convolution: 2 · output elements · (C_in/groups · k_h · k_w)."""
    per_output = 1
    for d in w_shape[1:]:
        per_output *= d
    total = 1
    for d in out_shape:
        total *= d
    return 2 * total * per_output


def _int8_linear_flops(x_shape: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    """FLOPs of oneDNN's int8 Linear (qlinear_pointwise): 2 · output elements · in_features."""
    total = 1
    for d in out_shape:
        total *= d
    return 2 * total * x_shape[-1]


def _extra_formulas() -> dict[Any, Any]:
    """Ops FlopCounterMode does not know: CPU flash attention, fused attention, int8 products and convs."""
    import torch

    ops = {}
    aten = torch.ops.aten
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):
        ops[aten._scaled_dot_product_flash_attention_for_cpu] = _sdpa_flops  # no stock formula
    if hasattr(aten, "_native_multi_head_attention"):
        ops[aten._native_multi_head_attention] = _native_mha_flops  # if a caller runs it directly
    if hasattr(torch.ops.aten, "_int_mm"):
        ops[torch.ops.aten._int_mm] = _int8_mm_flops  # FlopCounterMode wraps it to receive shapes
    onednn = getattr(torch.ops, "onednn", None)
    if onednn is not None and hasattr(onednn, "qconv2d_pointwise"):
        ops[onednn.qconv2d_pointwise] = _int8_conv_flops
    if onednn is not None and hasattr(onednn, "qlinear_pointwise"):
        ops[onednn.qlinear_pointwise] = _int8_linear_flops
    return ops
