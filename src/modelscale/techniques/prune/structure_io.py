"""Record and replay layer shapes as plain JSON, so structurally pruned models reload without pickle.

Structured pruning changes two things on a module: the shapes of its own parameters/buffers and a
few plain attributes (`in_channels`, `out_features`, `num_features`, `normalized_shape`,
`embed_dim`, `num_heads`, `head_dim`, ...). `snapshot` captures both for every module, `structure_diff`
keeps what changed, and `apply_structure` resizes a fresh model to match (values are zeros, to be
filled by `load_state_dict(strict=True)`). Tied parameters stay tied: one new tensor replaces each
shared old one.

Example::

    before = snapshot(model)
    prune_somehow(model)
    changes = structure_diff(before, snapshot(model))   # JSON-safe
    apply_structure(fresh_model, changes)
    fresh_model.load_state_dict(model.state_dict())
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from modelscale.core.errors import ModelscaleError

_SCALARS = (int, float, bool, str, type(None))
_SKIP_ATTRS = frozenset({"training"})


def _plain_attrs(module: nn.Module) -> dict[str, Any]:
    """The module's own attributes that are plain data (numbers, strings, tuples of them)."""
    out: dict[str, Any] = {}
    for key, value in vars(module).items():
        if key in _SKIP_ATTRS or key.startswith("__"):
            continue
        if isinstance(value, _SCALARS):
            out[key] = value
        elif isinstance(value, tuple | list) and all(isinstance(v, _SCALARS) for v in value):
            out[key] = list(value)
    return out


def _tensor_shapes(module: nn.Module) -> dict[str, list[int]]:
    shapes = {}
    for store in (module._parameters, module._buffers):
        for key, tensor in store.items():
            if tensor is not None:
                shapes[key] = list(tensor.shape)
    return shapes


def snapshot(model: nn.Module) -> dict[str, dict[str, Any]]:
    """Per module name: its plain attributes and the shapes of its own parameters and buffers."""
    return {
        name: {"attrs": _plain_attrs(m), "tensors": _tensor_shapes(m)} for name, m in model.named_modules()
    }


def structure_diff(before: dict[str, dict[str, Any]], after: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """What changed between two snapshots of the same model: {name: {"attrs": {...}, "tensors": {...}}}."""
    changes: dict[str, Any] = {}
    for name, now in after.items():
        old = before.get(name, {"attrs": {}, "tensors": {}})
        attrs = {k: v for k, v in now["attrs"].items() if old["attrs"].get(k, _MISSING) != v}
        tensors = {k: v for k, v in now["tensors"].items() if old["tensors"].get(k) != v}
        if attrs or tensors:
            changes[name] = {"attrs": attrs, "tensors": tensors}
    return changes


_MISSING = object()


def apply_structure(model: nn.Module, changes: dict[str, Any]) -> nn.Module:
    """Resize `model` (a fresh copy of the architecture) in place to the recorded shapes and attributes."""
    modules = dict(model.named_modules())
    replaced: dict[int, torch.Tensor] = {}  # id(old tensor) -> its resized replacement, to keep ties
    for name, change in changes.items():
        module = modules.get(name)
        if module is None:
            raise ModelscaleError(
                f"the saved structure names layer {name!r}, which this model lacks; "
                "pass a fresh model of the same architecture the pruned one came from"
            )
        for key, shape in change.get("tensors", {}).items():
            if key in module._parameters and module._parameters[key] is not None:
                store = module._parameters
            elif key in module._buffers and module._buffers[key] is not None:
                store = module._buffers
            else:
                raise ModelscaleError(
                    f"the saved structure resizes {name}.{key}, which this model lacks; "
                    "pass a fresh model of the same architecture"
                )
            old = store[key]
            new = replaced.get(id(old))
            if new is None or list(new.shape) != list(shape):
                data = torch.zeros(shape, dtype=old.dtype, device=old.device)
                new = (
                    nn.Parameter(data, requires_grad=old.requires_grad)
                    if isinstance(old, nn.Parameter)
                    else data
                )
                replaced[id(old)] = new
            store[key] = new
        for key, value in change.get("attrs", {}).items():
            current = getattr(module, key, None)
            if isinstance(value, list) and isinstance(current, tuple):
                value = tuple(value)
            setattr(module, key, value)
    return model


def tied_parameters(model: nn.Module) -> list[list[tuple[str, str]]]:
    """Groups of (module name, parameter name) that share one tensor (e.g. tied embeddings)."""
    owners: dict[int, list[tuple[str, str]]] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        for key, p in module._parameters.items():
            if p is not None:
                entry = (name, key)
                group = owners.setdefault(id(p), [])
                if entry not in group:
                    group.append(entry)
    return [group for group in owners.values() if len(group) > 1]


def retie(model: nn.Module, groups: list[list[tuple[str, str]]]) -> list[str]:
    """Make each group share its first member's tensor again; returns notes for groups that cannot."""
    modules = dict(model.named_modules(remove_duplicate=False))
    notes = []
    for group in groups:
        first_module, first_key = group[0]
        keep = modules[first_module]._parameters[first_key]
        for module_name, key in group[1:]:
            other = modules[module_name]._parameters[key]
            if other is keep:
                continue
            if other.shape != keep.shape:
                notes.append(
                    f"{module_name}.{key} was tied to {first_module}.{first_key}; shapes now differ, left untied"
                )
                continue
            modules[module_name]._parameters[key] = keep
    return notes
