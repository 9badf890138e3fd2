"""The one shared way to choose target layers: by module type, name glob, include/exclude, overrides.

Every technique reads its layers through `select_modules(model, config.target)` and its per-layer
values through `config.for_layer(name, field)`.

Example::

    target = Target(types=("Linear",), include=("encoder.*",), exclude=("*.head",),
                    overrides={"encoder.0.*": {"amount": 0.2}})
    for name, module in select_modules(model, target): ...
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from modelscale.core.errors import ModelscaleError


@dataclass(kw_only=True)
class Target:
    """Which modules a technique touches."""

    types: tuple[str, ...] = field(
        default=("Linear", "Conv2d"), metadata={"help": "module class names (subclasses match too)"}
    )
    include: tuple[str, ...] = field(default=("*",), metadata={"help": "name globs a layer must match"})
    exclude: tuple[str, ...] = field(default=(), metadata={"help": "name globs that rule a layer out"})
    overrides: dict[str, dict[str, Any]] = field(
        default_factory=dict, metadata={"help": "name glob -> {field: value} for chosen layers"}
    )

    def __post_init__(self) -> None:
        for key in ("types", "include", "exclude"):
            value = getattr(self, key)
            if isinstance(value, str):
                value = (value,)
            if not isinstance(value, tuple | list) or not all(isinstance(v, str) for v in value):
                raise ModelscaleError(f"target.{key} must be a list of strings, got {value!r}")
            setattr(self, key, tuple(value))
        if not isinstance(self.overrides, dict) or not all(
            isinstance(v, dict) for v in self.overrides.values()
        ):
            raise ModelscaleError("target.overrides must map a name glob to a mapping of field values")

    def matches(self, name: str, module: nn.Module) -> bool:
        type_names = {cls.__name__ for cls in type(module).__mro__}
        if self.types and not type_names.intersection(self.types):
            return False
        if not any(fnmatch.fnmatchcase(name, pattern) for pattern in self.include):
            return False
        return not any(fnmatch.fnmatchcase(name, pattern) for pattern in self.exclude)

    def override_for(self, name: str) -> dict[str, Any]:
        """Field values overridden for layer `name`; later globs win over earlier ones."""
        merged: dict[str, Any] = {}
        for pattern, values in self.overrides.items():
            if fnmatch.fnmatchcase(name, pattern):
                merged.update(values)
        return merged


def select_modules(model: nn.Module, target: Target, *, required: bool = True) -> list[tuple[str, nn.Module]]:
    """The (qualified name, module) pairs chosen by `target`, in model order.

    With `required`, selecting nothing is an error that lists the module types the model has.
    """
    chosen = [(name, m) for name, m in model.named_modules() if name and target.matches(name, m)]
    if required and not chosen:
        present = sorted({type(m).__name__ for _, m in model.named_modules()})
        raise ModelscaleError(
            f"target selected no layers (types={list(target.types)}, include={list(target.include)}, "
            f"exclude={list(target.exclude)}); this model has module types: {', '.join(present)}"
        )
    return chosen


def set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Swap the submodule at dotted path `name` for `new` (the one way techniques swap a leaf module)."""
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)
