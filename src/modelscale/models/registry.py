"""Model zoo registry: each family registers a builder in its own file; `build_model` resolves names.

A plain family has one name (`mlp`, `cnn`, `gpt`); a prefix family takes an argument after a colon
(`torchvision:resnet18`, `hf:tiny-gpt2`, `hf:/path/to/dir`). Builders receive the shared arguments as a
`ModelArgs` and their own keyword arguments, and return an `nn.Module`:

    @register_model("mlp", summary="multilayer perceptron on flattened inputs")
    def build_mlp(args: ModelArgs, *, hidden: int = 128, layers: int = 2) -> nn.Module: ...

    @register_model("torchvision", prefix=True, usage="torchvision:<name>", examples=("torchvision:resnet18",))
    def build_torchvision(args: ModelArgs, arg: str, **kwargs) -> nn.Module: ...

Built-in families are found by importing every module under `modelscale.models` the first time the
registry is read; other packages add theirs through the `modelscale.models` entry-point group.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from modelscale.core.errors import ModelscaleError
from modelscale.core.registry import discover


@dataclass(frozen=True)
class ModelArgs:
    """The arguments every builder receives (already validated)."""

    num_classes: int
    input_shape: tuple[int, ...]
    width: float
    depth: float
    dropout: float

    def scaled(self, base: int, *, multiple: int = 1) -> int:
        """`base * width`, rounded (half up) to the nearest positive multiple of `multiple`."""
        return max(multiple, math.floor(base * self.width / multiple + 0.5) * multiple)

    def repeats(self, base: int) -> int:
        """`base * depth`, rounded half up, at least 1."""
        return max(1, math.floor(base * self.depth + 0.5))


@dataclass(frozen=True)
class ModelFamily:
    name: str
    builder: Callable[..., nn.Module]
    prefix: bool
    usage: tuple[str, ...]  # how the family is spelled in `list_models()`
    summary: str


# The registry is module-level state by design: filled once by imports, read-only after.
_FAMILIES: dict[str, ModelFamily] = {}
_DISCOVERED = [False]


def register_model(
    name: str,
    *,
    prefix: bool = False,
    usage: str | None = None,
    examples: tuple[str, ...] = (),
    summary: str = "",
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator registering a builder under `name` (or under the prefix `name:` when `prefix`)."""
    if not name or ":" in name:
        raise TypeError(f"model family name must be non-empty and contain no ':'; got {name!r}")

    def decorate(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        existing = _FAMILIES.get(name)
        if existing is not None and existing.builder.__module__ != fn.__module__:
            raise TypeError(f"model family {name!r} is registered twice")
        shown = (usage or (f"{name}:<arg>" if prefix else name), *examples)
        doc = (summary or fn.__doc__ or "").strip().splitlines()
        _FAMILIES[name] = ModelFamily(name, fn, prefix, shown, doc[0] if doc else "")
        return fn

    return decorate


def _discover() -> None:
    if _DISCOVERED[0]:
        return
    _DISCOVERED[0] = True
    discover("modelscale.models", "modelscale.models")


def list_models() -> list[str]:
    """Every name `build_model` accepts, with prefix families shown as `family:<arg>` forms."""
    _discover()
    return sorted(u for fam in _FAMILIES.values() for u in fam.usage)


def families() -> dict[str, ModelFamily]:
    _discover()
    return dict(_FAMILIES)


def resolve(name: str) -> tuple[ModelFamily, str | None]:
    """Find the family of `name`; returns (family, argument after the colon or None)."""
    _discover()
    if not isinstance(name, str) or not name:
        raise ModelscaleError(f"model name must be a non-empty string; valid: {', '.join(list_models())}")
    head, sep, arg = name.partition(":")
    family = _FAMILIES.get(head)
    if family is not None and family.prefix == bool(sep) and (not sep or arg):
        return family, (arg if sep else None)
    if family is not None and family.prefix:
        raise ModelscaleError(f"model {name!r} needs an argument: use {family.usage[0]}")
    raise ModelscaleError(f"unknown model {name!r}; valid: {', '.join(list_models())}")


MAX_MULTIPLIER = 1000.0  # width/depth beyond this is a typo, not a model


def check_args(num_classes: Any, input_shape: Any, width: Any, depth: Any, dropout: Any) -> ModelArgs:
    """Validate the shared arguments and return them as a `ModelArgs`."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ModelscaleError(f"num_classes must be an integer >= 1, got {num_classes!r}")
    if isinstance(input_shape, int) and not isinstance(input_shape, bool):
        input_shape = (input_shape,)
    if (
        not isinstance(input_shape, tuple | list)
        or not input_shape
        or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in input_shape)
    ):
        raise ModelscaleError(
            f"input_shape must be a tuple of positive integers such as (1, 8, 8), got {input_shape!r}"
        )
    for label, value in (("width", width), ("depth", depth)):
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or value <= 0
        ):
            raise ModelscaleError(f"{label} must be a number > 0 (a size multiplier), got {value!r}")
        if value > MAX_MULTIPLIER:
            raise ModelscaleError(f"{label} must be <= {MAX_MULTIPLIER} (a size multiplier), got {value!r}")
    if isinstance(dropout, bool) or not isinstance(dropout, int | float) or not 0.0 <= dropout < 1.0:
        raise ModelscaleError(f"dropout must be a number in [0, 1), got {dropout!r}")
    return ModelArgs(
        int(num_classes), tuple(int(d) for d in input_shape), float(width), float(depth), float(dropout)
    )


def check_kwargs(family: ModelFamily, name: str, kwargs: dict[str, Any]) -> None:
    """Reject keyword arguments the builder does not take, listing the ones it does."""
    params = list(inspect.signature(family.builder).parameters.values())
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return
    accepted = {p.name for p in params[(2 if family.prefix else 1) :]}
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise ModelscaleError(
            f"model {name!r} does not take {', '.join(unknown)}; "
            f"its options are: {', '.join(sorted(accepted)) or '(none)'}"
        )


def build(name: str, args: ModelArgs, kwargs: dict[str, Any], *, allow_pickle: bool = False) -> nn.Module:
    """Build through the family's builder. `allow_pickle` (the caller's own opt-in) reaches only
    builders that load files themselves and declare an `allow_pickle` parameter (hf:)."""
    family, arg = resolve(name)
    check_kwargs(family, name, kwargs)
    if "allow_pickle" in inspect.signature(family.builder).parameters:
        kwargs = {**kwargs, "allow_pickle": allow_pickle}
    if family.prefix:
        return family.builder(args, arg, **kwargs)
    return family.builder(args, **kwargs)
