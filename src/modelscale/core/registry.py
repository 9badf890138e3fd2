"""Registry of techniques: each technique registers itself in its own file.

A technique is a config class plus an apply function (and optionally a restore function that
rebuilds the changed structure on a fresh model so saved weights can be loaded without pickled code):

    @register(MagnitudePruneConfig, restore=restore_masks)
    def magnitude_prune(model, config, ctx) -> ChangeRecord: ...

Built-in techniques are discovered by importing every module under `modelscale.techniques` the first
time the registry is read; third-party packages can add theirs through the `modelscale.techniques`
entry-point group. Nothing central needs editing to add one.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from modelscale.core.config import TechniqueConfig
from modelscale.core.errors import ModelscaleError, unknown_name


@dataclass(frozen=True)
class Technique:
    name: str
    config_cls: type[TechniqueConfig]
    apply_fn: Callable[..., Any]
    restore_fn: Callable[..., Any] | None
    summary: str


# The registry is the one deliberate piece of module-level state: filled once by imports, read-only after.
_TECHNIQUES: dict[str, Technique] = {}
_DISCOVERED = [False]


def register(config_cls: type[TechniqueConfig], *, restore: Callable[..., Any] | None = None):
    """Decorator registering `fn(model, config, ctx) -> ChangeRecord` under `config_cls.type`."""
    if not config_cls.type:
        raise TypeError(f"{config_cls.__name__} must set a non-empty `type`")

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        existing = _TECHNIQUES.get(config_cls.type)
        if existing is not None and existing.apply_fn.__module__ != fn.__module__:
            raise TypeError(f"technique {config_cls.type!r} is registered twice")
        doc = (fn.__doc__ or config_cls.__doc__ or "").strip().splitlines()
        _TECHNIQUES[config_cls.type] = Technique(
            config_cls.type, config_cls, fn, restore, doc[0] if doc else ""
        )
        return fn

    return decorate


def discover(package_name: str, group: str) -> None:
    """Import every module under package `package_name`, then load the entry points of `group`.

    Plugins register themselves on import (`@register`, `@register_model`), so this fills a registry.
    """
    package = importlib.import_module(package_name)
    for info in pkgutil.walk_packages(package.__path__, prefix=package.__name__ + "."):
        importlib.import_module(info.name)
    for ep in entry_points(group=group):
        ep.load()


def _discover() -> None:
    if _DISCOVERED[0]:
        return
    _DISCOVERED[0] = True
    discover("modelscale.techniques", "modelscale.techniques")


def list_techniques() -> list[str]:
    _discover()
    return sorted(_TECHNIQUES)


def get_technique(name: str) -> Technique:
    _discover()
    if name not in _TECHNIQUES:
        raise unknown_name("technique", name, _TECHNIQUES)
    return _TECHNIQUES[name]


def config_from_dict(data: dict[str, Any]) -> TechniqueConfig:
    """Build a registered technique's config from `{"type": ..., ...}` data."""
    if not isinstance(data, dict) or "type" not in data:
        raise ModelscaleError("a technique config needs a 'type' field naming a registered technique")
    return get_technique(str(data["type"])).config_cls.from_dict(data)


def load_config(path: str | Path) -> TechniqueConfig:
    """Read a config from a .json or .yaml/.yml file."""
    from modelscale.core.io import read_structured

    return config_from_dict(read_structured(path))
