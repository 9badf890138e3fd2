"""Batch-norm folding: merge each Conv2d → BatchNorm2d pair into the convolution (eval-mode behaviour).

Ioffe & Szegedy, "Batch Normalization" (2015); folding as in Jacob et al. (2018), section 3.2. An
eval-mode BatchNorm2d is a per-channel affine map, so with g = γ / √(σ² + ε) per output channel

    W' = W · g,    b' = (b − μ) · g + β        (b = 0 when the conv has no bias)

and conv(x; W', b') = BN(conv(x; W, b)) exactly (up to float rounding). The BN becomes nn.Identity.
Quantizing after folding quantizes the weights that really run, and removes one op per block.

Pairs are found on any nn.Module by tracing it with torch.fx (`symbolic_trace`): a BatchNorm2d whose
only input is a Conv2d whose output nothing else reads, each module called once. When tracing fails
(data-dependent control flow), consecutive (Conv2d, BatchNorm2d) children of every nn.Sequential are
folded instead; `FoldResult.method` says which search ran. BNs without running statistics are skipped.

Example::

    folded = fold_batchnorm(model.eval())            # in place
    print(folded.pairs)                               # [("features.0.0.conv", "features.0.0.bn"), ...]
    restored = refold(fresh_model, folded.pairs)      # same structure on a fresh model (for reloading)
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

from modelscale.core.errors import ModelscaleError
from modelscale.core.select import set_module


@dataclass
class FoldResult:
    """Which (conv name, bn name) pairs were folded, how they were found, and what was skipped."""

    pairs: list[tuple[str, str]] = field(default_factory=list)
    method: str = "none"  # "fx" | "sequential" | "none" (the model has no BatchNorm2d)
    notes: list[str] = field(default_factory=list)


def foldable_problem(conv: nn.Module, bn: nn.Module) -> str | None:
    """Why this pair cannot be folded (None when it can)."""
    if type(conv) is not nn.Conv2d:  # subclasses (quantized, wrapped) compute something else
        return f"{type(conv).__name__} is not a plain Conv2d"
    if not isinstance(bn, nn.BatchNorm2d):
        return f"{type(bn).__name__} is not a BatchNorm2d"
    if bn.running_mean is None or bn.running_var is None:
        return "the BatchNorm2d keeps no running statistics (track_running_stats=False)"
    if bn.num_features != conv.out_channels:
        return f"BatchNorm2d has {bn.num_features} features, the conv {conv.out_channels} channels"
    return None


@torch.no_grad()
def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """Fold `bn` into `conv` in place (W' = W·g, b' = (b − μ)·g + β, computed in float64)."""
    problem = foldable_problem(conv, bn)
    if problem:
        raise ModelscaleError(f"cannot fold this BatchNorm2d: {problem}")
    var = bn.running_var.double()
    gamma = bn.weight.double() if bn.weight is not None else torch.ones_like(var)
    beta = bn.bias.double() if bn.bias is not None else torch.zeros_like(var)
    g = gamma / torch.sqrt(var + bn.eps)
    w = conv.weight
    bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(var)
    new_bias = (bias - bn.running_mean.double()) * g + beta
    w.copy_((w.double() * g.view(-1, 1, 1, 1)).to(w.dtype))
    if conv.bias is None:
        conv.bias = nn.Parameter(new_bias.to(w.dtype), requires_grad=w.requires_grad)
    else:
        conv.bias.copy_(new_bias.to(conv.bias.dtype))


def _fx_pairs(model: nn.Module) -> list[tuple[str, str]]:
    import torch.fx

    graph = torch.fx.symbolic_trace(model).graph
    modules = dict(model.named_modules())
    calls = Counter(n.target for n in graph.nodes if n.op == "call_module")
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(node.target), nn.BatchNorm2d):
            continue
        prev = node.args[0] if node.args else None
        if (
            isinstance(prev, torch.fx.Node)
            and prev.op == "call_module"
            and isinstance(modules.get(prev.target), nn.Conv2d)
            and len(prev.users) == 1
            and calls[prev.target] == 1
            and calls[node.target] == 1
        ):
            pairs.append((str(prev.target), str(node.target)))
    return pairs


def _sequential_pairs(model: nn.Module) -> list[tuple[str, str]]:
    pairs = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Sequential):
            continue
        children = list(module.named_children())
        for (a_name, a), (b_name, b) in zip(children, children[1:], strict=False):
            if isinstance(a, nn.Conv2d) and isinstance(b, nn.BatchNorm2d):
                prefix = f"{name}." if name else ""
                pairs.append((prefix + a_name, prefix + b_name))
    return pairs


def find_conv_bn_pairs(model: nn.Module) -> tuple[list[tuple[str, str]], str, list[str]]:
    """(pairs, method, notes): Conv2d → BatchNorm2d pairs found by torch.fx, else by Sequential adjacency."""
    if not any(isinstance(m, nn.BatchNorm2d) for m in model.modules()):
        return [], "none", []
    try:
        return _fx_pairs(model), "fx", []
    except Exception as exc:  # any tracing failure (control flow, unsupported ops) falls back
        reason = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else type(exc).__name__
        note = (
            f"torch.fx could not trace the model ({reason}); folded nn.Sequential (Conv2d, BatchNorm2d) pairs"
        )
        return _sequential_pairs(model), "sequential", [note]


def fold_batchnorm(model: nn.Module, *, convs: Iterable[str] | None = None) -> FoldResult:
    """Fold every Conv2d → BatchNorm2d pair of `model` in place (only those whose conv is in `convs`, if given).

    Folding uses the running statistics, i.e. the eval-mode function; a model in training mode is noted.
    """
    pairs, method, notes = find_conv_bn_pairs(model)
    wanted = None if convs is None else set(convs)
    result = FoldResult(method=method, notes=notes)
    in_training = []
    for conv_name, bn_name in pairs:
        if wanted is not None and conv_name not in wanted:
            continue
        conv, bn = model.get_submodule(conv_name), model.get_submodule(bn_name)
        problem = foldable_problem(conv, bn)
        if problem:
            result.notes.append(f"{conv_name} → {bn_name} not folded: {problem}")
            continue
        if bn.training:
            in_training.append(bn_name)
        fold_conv_bn(conv, bn)
        set_module(model, bn_name, nn.Identity())
        result.pairs.append((conv_name, bn_name))
    if in_training:
        result.notes.append(
            f"{len(in_training)} BatchNorm2d (e.g. {in_training[0]}) were in training mode; "
            "folded with their running statistics (the eval-mode function)"
        )
    return result


def refold(model: nn.Module, pairs: Iterable[Iterable[str]]) -> nn.Module:
    """Fold the recorded `pairs` on a fresh model of the same architecture (restore before loading weights)."""
    for conv_name, bn_name in pairs:
        try:
            conv, bn = model.get_submodule(conv_name), model.get_submodule(bn_name)
        except AttributeError:
            raise ModelscaleError(
                f"saved model folded {bn_name!r} into {conv_name!r}, which the base model lacks; "
                "pass the same architecture"
            ) from None
        fold_conv_bn(conv, bn)
        set_module(model, bn_name, nn.Identity())
    return model
