"""Helpers shared by the parameter-efficient fine-tuning techniques: the head, freezing, counting, wrapping.

Every PEFT technique freezes the backbone (`requires_grad=False`), leaves a small set of tensors
trainable and reports `trainable_params` / `total_params` in its record summary. The classifier head
(by default the last `nn.Linear` in module order) is found once, here, for all of them.

Example::

    name, head = find_head(model)                  # ("classifier", Linear(64, 10))
    replace_head(model, 5, seed=0)                 # a fresh Linear(64, 5) in its place
    freeze_except(model, ["classifier.weight", "classifier.bias"])
    param_summary(model)                           # {"trainable_params": 325, "total_params": ...}
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from modelscale.core.errors import ModelscaleError
from modelscale.core.select import set_module  # noqa: F401 - re-exported for the peft techniques

# Parents whose forward reads a child's `.weight` directly (MultiheadAttention always; the transformer
# layers on their inference fast path): a wrapper placed on such a child would be silently bypassed.
_READS_CHILD_WEIGHTS = ("MultiheadAttention", "TransformerEncoderLayer", "TransformerDecoderLayer")


def find_head(model: nn.Module, name: str = "") -> tuple[str, nn.Module]:
    """The classifier head: module `name`, or the last `nn.Linear` in module order when `name` is ''."""
    modules = dict(model.named_modules())
    if name:
        if name not in modules:
            raise ModelscaleError(
                f"head {name!r} is not a module of this model; give a name from named_modules()"
            )
        return name, modules[name]
    linears = [(n, m) for n, m in modules.items() if n and isinstance(m, nn.Linear)]
    if not linears:
        raise ModelscaleError("the model has no nn.Linear to use as head; name the head module with `head`")
    return linears[-1]


def new_linear_head(old: nn.Module, num_classes: int | None, seed: int) -> nn.Linear:
    """A freshly initialised Linear with `old`'s input width (seeded; the global RNG is left alone)."""
    if not isinstance(old, nn.Linear):
        raise ModelscaleError(
            f"only an nn.Linear head can be re-initialised or replaced, got {type(old).__name__}; "
            "select a Linear head or keep it as it is"
        )
    weight = old.weight
    out = old.out_features if num_classes is None else num_classes
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = nn.Linear(old.in_features, out, bias=old.bias is not None)
    return head.to(device=weight.device, dtype=weight.dtype).train(old.training)


def replace_head(model: nn.Module, num_classes: int | None = None, *, name: str = "", seed: int = 0) -> str:
    """Put a new randomly initialised Linear head (optionally with `num_classes` outputs) in place; return its name."""
    head_name, old = find_head(model, name)
    set_module(model, head_name, new_linear_head(old, num_classes, seed))
    return head_name


def freeze_except(model: nn.Module, trainable: Iterable[str]) -> None:
    """requires_grad=True exactly for the named parameters; every other parameter is frozen."""
    keep = set(trainable)
    flags: dict[int, tuple[nn.Parameter, bool]] = {}
    for pname, p in model.named_parameters(remove_duplicate=False):  # tied tensors: any name counts
        flags[id(p)] = (p, flags.get(id(p), (p, False))[1] or pname in keep)
    for p, flag in flags.values():
        p.requires_grad_(flag)


def module_param_names(model: nn.Module, module_name: str) -> list[str]:
    """Qualified names of the parameters of module `module_name` (and its children)."""
    module = model.get_submodule(module_name)
    prefix = f"{module_name}." if module_name else ""
    return [prefix + n for n, _ in module.named_parameters()]


def param_summary(model: nn.Module, total_before: int | None = None) -> dict[str, float | int]:
    """Trainable vs total parameters (tensors shared between modules counted once)."""
    seen: set[int] = set()
    total = trainable = 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    out: dict[str, float | int] = {
        "trainable_params": trainable,
        "total_params": total,
        "trainable_fraction": trainable / total if total else 0.0,
    }
    if total_before is not None:
        out["added_params"] = total - total_before
    return out


def count_params(model: nn.Module) -> int:
    """All parameters of `model` (the one counter, `modelscale.measure.count_params`)."""
    from modelscale.measure import count_params as measure_params

    return measure_params(model).total


def reads_weight_directly(model: nn.Module, name: str) -> str | None:
    """The parent's class name when its forward uses `self.<child>.weight` itself (torchvision's Swin
    attention calls F.linear with it), which a wrapper around the child would never see."""
    import inspect
    import re

    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    try:
        source = inspect.getsource(type(parent).forward)
    except (OSError, TypeError):
        return None
    return type(parent).__name__ if re.search(rf"self\.{re.escape(attr)}\.weight\b", source) else None


def wrap_blocker(model: nn.Module, name: str) -> str | None:
    """Why module `name` must not be wrapped or swapped for a wrapper (None when it is safe)."""
    reader = reads_weight_directly(model, name)
    if reader is not None:
        return f"its parent {reader}'s forward reads its .weight directly, so a wrapper would be bypassed"
    parts = name.split(".")
    for i in range(len(parts) - 1, 0, -1):
        parent = model.get_submodule(".".join(parts[:i]))
        kinds = {cls.__name__ for cls in type(parent).__mro__}
        if "MultiheadAttention" in kinds:
            return "its parent MultiheadAttention reads its .weight directly, so a wrapper would be bypassed"
        if kinds.intersection(_READS_CHILD_WEIGHTS):
            return (
                f"its parent {type(parent).__name__} reads its .weight directly on the inference fast path, "
                "so a wrapper would be bypassed; target the whole layer instead"
            )
    return None


def is_conv1d_transformers(module: nn.Module) -> bool:
    """transformers' `Conv1D` (GPT-2): a Linear with a transposed (in, out) weight and `nf` outputs."""
    return any(cls.__name__ == "Conv1D" for cls in type(module).__mro__) and hasattr(module, "nf")


def common_notes(model: nn.Module, head: str | None) -> list[str]:
    """Caveats every PEFT technique shares: BatchNorm statistics, a head tied to another tensor."""
    notes = []
    if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        notes.append(
            "BatchNorm running statistics still update when the frozen model is trained in train mode"
        )
    if head is not None:
        head_params = {id(p) for p in model.get_submodule(head).parameters()}
        tied = sorted(
            name
            for name, p in model.named_parameters(remove_duplicate=False)
            if id(p) in head_params and not name.startswith(f"{head}.")
        )
        if tied:
            notes.append(
                f"the head {head} shares tensors with {', '.join(tied)}: training the head trains those too"
            )
    return notes
