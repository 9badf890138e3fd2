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
    """Torch-Pruning's pruner (it traces the model); every failure becomes a one-line ModelscaleError.

    The dependency graph is built and checked first (`check_traceable`), so a model Torch-Pruning cannot
    map channels through is refused in seconds instead of failing deep inside it or running for minutes."""
    check_traceable(tp, model, inputs, kwargs)
    try:
        return tp.pruner.BasePruner(model, inputs, **kwargs)
    except Exception as exc:
        raise _trace_error(exc) from exc


def check_traceable(tp, model: nn.Module, inputs: Any, kwargs: dict[str, Any]) -> None:
    """Refuse models whose channels Torch-Pruning cannot follow, naming the reason and the place.

    - a reshape that splits channels into groups (ShuffleNet's channel shuffle) breaks its index mapping;
    - reshapes that fold channels together with spatial or window dimensions inside the network (window
      attention: Swin, MaxViT) make each channel stand for many flattened indices, and grouping them
      blows up (minutes to hours) or fails. One such reshape right before a classifier (VGG's flatten)
      is fine."""
    from torch_pruning.dependency.index_mapping import _FlattenIndexMapping

    try:
        graph = tp.DependencyGraph().build_dependency(
            model,
            example_inputs=inputs,
            forward_fn=kwargs.get("forward_fn"),
            output_transform=kwargs.get("output_transform"),
            customized_pruners=kwargs.get("customized_pruners"),
        )
    except Exception as exc:
        raise _trace_error(exc, model) from exc
    folds = [
        node
        for node in graph.module2node.values()
        if any(isinstance(m, _FlattenIndexMapping) for d in node.dependencies for m in d.index_mapping)
        and type(node.module).__module__.startswith("torch_pruning")
    ]
    if len(folds) > 1:
        where = _nearest_layer(model, folds[0])
        raise ModelscaleError(
            f"structured_prune cannot follow channels through this model: {len(folds)} reshapes fold channels "
            f"together with other dimensions inside the network (the first after {where}; window attention "
            "as in Swin/MaxViT), which Torch-Pruning cannot map; no target exclusion avoids it (the whole "
            f"graph is traced): {_ALTERNATIVES}"
        )


def _nearest_layer(model: nn.Module, node: Any) -> str:
    """Name of the closest real layer feeding a Torch-Pruning graph node (for messages)."""
    names = {id(m): n for n, m in model.named_modules()}
    stack, seen = [node], set()
    while stack:
        current = stack.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        if id(current.module) in names and names[id(current.module)]:
            return names[id(current.module)]
        stack.extend(current.inputs)
    return "the input"


_GRAPH_STEPS = {
    "update_reshape_index_mapping": "a reshape that splits channels into groups (a channel shuffle, as in ShuffleNet)",
    "update_concat_index_mapping": "a concatenation whose input widths it could not infer (Swin's patch merging)",
    "update_split_index_mapping": "a split whose widths it could not infer",
}
_ALTERNATIVES = "use magnitude_prune, lowrank_svd or a quantizer for this model"


def _trace_error(exc: BaseException, model: nn.Module | None = None) -> ModelscaleError:
    """A one-line error naming the step of Torch-Pruning that failed and, where known, the place."""
    frames = []
    tb = exc.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    names = [f.f_code.co_name for f in frames]
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
    for step, what in _GRAPH_STEPS.items():
        if step in names:
            frame = frames[names.index(step)]
            node = next(
                (
                    frame.f_locals.get(k)
                    for k in ("reshape_node", "cat_node", "split_node", "node")
                    if frame.f_locals.get(k) is not None
                ),
                None,
            )
            where = f" after {_nearest_layer(model, node)}" if model is not None and node is not None else ""
            return ModelscaleError(
                f"structured_prune cannot follow channels through {what}{where} ({type(exc).__name__}: {first}); "
                f"no target exclusion avoids it (Torch-Pruning traces the whole graph): {_ALTERNATIVES}"
            )
    if "build_dependency" in names:
        return ModelscaleError(
            f"Torch-Pruning could not build this model's dependency graph ({type(exc).__name__}: {first}); "
            f"check example_inputs (no target exclusion avoids it: the whole graph is traced), or {_ALTERNATIVES}"
        )
    return ModelscaleError(
        f"Torch-Pruning could not trace this model ({type(exc).__name__}: {first}); "
        "check example_inputs, or narrow config.target to the layers it can handle"
    )
