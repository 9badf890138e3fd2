"""Torch-Pruning adapters for structured pruning: tracing, channel scores, extra layer kinds, outputs.

- `trace(...)` builds Torch-Pruning's pruner (which traces the model) and turns its failures into
  one-line errors; `trace_inputs` turns off Hugging Face caches while tracing.
- `make_importance(name, custom)`: the channel score. Magnitude is Torch-Pruning's group score,
  mean over the group of ``||w_c||_p^p`` normalised by its mean, but computed on the channels in
  question only (the stock version reduces every consumer's whole weight once per group, which takes
  minutes on DenseNet's concatenations).
- `transposed_linear_types(model)`: a pruner for Hugging Face's `Conv1D` (GPT-2), a Linear whose
  weight is stored (in, out).
- `output_producers(dg)`: the layers nearest the model outputs (their outputs are never pruned).

Example::

    custom = transposed_linear_types(model)
    pruner = trace(tp, model, x, importance=make_importance("l2", custom), customized_pruners=custom)
    protected = output_producers(pruner.DG)
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from modelscale.core.errors import ModelscaleError


def forward_any(model: nn.Module, inputs: Any) -> Any:
    if isinstance(inputs, dict):
        return model(**inputs)
    if isinstance(inputs, tuple | list):
        return model(*inputs)
    return model(inputs)


def output_tensors(out: Any) -> list[torch.Tensor]:
    """The tensors in a model's output (tuples, dicts, Hugging Face ModelOutput), for tracing."""
    if isinstance(out, torch.Tensor):
        return [out] if out.grad_fn is not None else []
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, tuple | list):
        return [t for item in out for t in output_tensors(item)]
    return []


def trace_inputs(model: nn.Module, inputs: Any) -> Any:
    """Example inputs for tracing; Hugging Face models get `use_cache=False` (a cache is not the model)."""
    config = getattr(model, "config", None)
    if isinstance(inputs, dict) and "use_cache" not in inputs and getattr(config, "use_cache", False):
        return {**inputs, "use_cache": False}
    return inputs


def make_importance(name: str, custom: dict):
    import torch_pruning as tp

    if name == "bn_scale":
        return tp.importance.BNScaleImportance()
    if name == "taylor":
        return tp.importance.GroupTaylorImportance()
    return _magnitude_importance(1 if name == "l1" else 2, custom)


def transposed_linear_types(model: nn.Module) -> dict[type, Any]:
    """Hugging Face's `Conv1D` (GPT-2): a Linear storing its weight as (in, out); {class: its pruner}."""
    from torch_pruning.pruner.function import BasePruningFunc

    class TransposedLinearPruner(BasePruningFunc):
        TARGET_MODULES = None

        def prune_out_channels(self, layer, idxs):
            keep = sorted(set(range(layer.nf)) - set(idxs))
            layer.weight = self._prune_parameter_and_grad(layer.weight, keep, 1)
            if layer.bias is not None:
                layer.bias = self._prune_parameter_and_grad(layer.bias, keep, 0)
            layer.nf = len(keep)
            return layer

        def prune_in_channels(self, layer, idxs):
            keep = sorted(set(range(layer.nx)) - set(idxs))
            layer.weight = self._prune_parameter_and_grad(layer.weight, keep, 0)
            layer.nx = len(keep)
            return layer

        def get_out_channels(self, layer):
            return layer.nf

        def get_in_channels(self, layer):
            return layer.nx

    found = {
        type(m)
        for m in model.modules()
        if type(m).__name__ == "Conv1D" and isinstance(getattr(m, "nf", None), int) and hasattr(m, "nx")
    }
    return {cls: TransposedLinearPruner() for cls in found}


def _magnitude_importance(p: int, custom: dict):
    """Torch-Pruning's group magnitude score, computed on the channels in question only."""
    from torch_pruning.pruner import function as fn
    from torch_pruning.pruner.importance import GroupMagnitudeImportance

    out_fns = (fn.prune_conv_out_channels, fn.prune_linear_out_channels)
    in_fns = (fn.prune_conv_in_channels, fn.prune_linear_in_channels)
    custom_out = tuple(pr.prune_out_channels for pr in custom.values())  # weight stored (in, out)
    custom_in = tuple(pr.prune_in_channels for pr in custom.values())
    norm_fns = (fn.prune_batchnorm_out_channels, fn.prune_layernorm_out_channels)

    class _Magnitude(GroupMagnitudeImportance):
        @torch.no_grad()
        def __call__(self, group):
            scores, roots = [], []
            for item in group:
                layer, prune_fn = item.dep.layer, item.dep.pruning_fn
                if not isinstance(layer, tuple(self.target_types)):
                    continue
                weight = getattr(layer, "weight", None)
                if weight is None:
                    continue
                index = torch.as_tensor(item.idxs, dtype=torch.long, device=weight.device)
                transposed = getattr(layer, "transposed", False)
                if prune_fn in custom_out:
                    rows = weight.transpose(0, 1)
                elif prune_fn in custom_in:
                    rows = weight
                elif prune_fn in out_fns:
                    rows = weight.transpose(0, 1) if transposed else weight
                elif prune_fn in in_fns:
                    rows = weight if transposed else weight.transpose(0, 1)
                    index = index % rows.shape[0]  # grouped convs repeat their per-group inputs
                elif prune_fn in norm_fns:
                    rows = weight.unsqueeze(1)
                else:
                    continue
                picked = rows.index_select(0, index).flatten(1)
                scores.append(torch.linalg.vector_norm(picked, ord=self.p, dim=1).pow(self.p))
                roots.append(item.root_idxs)
            if not scores:
                return None
            return self._normalize(self._reduce(scores, roots), self.normalizer)

    types = [nn.modules.conv._ConvNd, nn.Linear, nn.modules.batchnorm._BatchNorm, nn.LayerNorm, *custom]
    return _Magnitude(p=p, target_types=types)


def output_producers(dg) -> list[nn.Module]:
    """The layers nearest the model's outputs: pruning their outputs would change the output shape."""
    sinks = [node for node in dg.module2node.values() if not node.outputs]
    found: list[nn.Module] = []
    seen: set[int] = set()
    stack = list(sinks)
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        module = node.module
        if isinstance(module, nn.Module) and not type(module).__module__.startswith("torch_pruning"):
            found.append(module)  # a real layer: stop here
            continue
        stack.extend(node.inputs)
    return found


def trace(tp, model: nn.Module, inputs: Any, **kwargs: Any):
    """Torch-Pruning's pruner (it traces the model); its failures become one-line errors."""
    try:
        return tp.pruner.BasePruner(model, inputs, **kwargs)
    except (RuntimeError, TypeError, ValueError, AssertionError, IndexError, KeyError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise ModelscaleError(
            f"Torch-Pruning could not trace this model ({type(exc).__name__}: {first}); "
            "check example_inputs, or narrow config.target to the layers it can handle"
        ) from exc
