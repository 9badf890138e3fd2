"""Registry of techniques: each technique registers itself, with its whole lifecycle, in its own file.

A technique is a config class plus an apply function, and the facts every front door needs:

    @register(
        MagnitudePruneConfig,
        restore=restore_masks,        # rebuild the changed structure on a fresh model (no pickle)
        strength="amount",            # the knob sensitivity analysis and the search turn
        applies_to="any",             # "any" nn.Module, "hf" (transformers only), "linear" (needs Linear)
    )
    def magnitude_prune(model, config, ctx) -> ChangeRecord: ...

Optional lifecycle hooks: `callbacks(config) -> [trainer callbacks]` that a following fine-tune must run
(gradual pruning's schedule), `finalize(model, config) -> ChangeRecord | None` run after that fine-tune
(QAT → real int8 layers; gradual masks → final masks), `needs_calibration` / `needs_gradients`, and
`trainable=False` for techniques that leave no float weights to fine-tune (apply them after training).
A front door asks the registry; it never tests a technique's name.

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

APPLIES_TO = ("any", "hf", "linear")


@dataclass(frozen=True)
class Technique:
    name: str
    config_cls: type[TechniqueConfig]
    apply_fn: Callable[..., Any]
    restore_fn: Callable[..., Any] | None
    summary: str
    applies_to: str = "any"  # "any" | "hf" (transformers models only) | "linear" (needs a Linear layer)
    strength: str | None = None  # config field that sets "how much" (sensitivity, search)
    needs_calibration: bool = False  # reads ctx.calibration batches
    needs_gradients: bool = False  # uses ctx.loss_fn and backward passes
    trainable: bool = True  # False: no float weights are left to fine-tune (apply after training)
    exports_onnx: bool = True  # False: its layers have no ONNX form (export before applying it)
    callbacks_fn: Callable[[Any], list[Any]] | None = None  # trainer callbacks a following fine-tune runs
    finalize_fn: Callable[[Any, Any], Any] | None = None  # after that fine-tune: (model, config) -> record

    def callbacks(self, config: TechniqueConfig) -> list[Any]:
        """The trainer callbacks a fine-tune after this technique must run (none for most)."""
        return list(self.callbacks_fn(config)) if self.callbacks_fn is not None else []

    def finalize(self, model: Any, config: TechniqueConfig) -> Any:
        """The step that completes the technique after its fine-tune; a ChangeRecord, or None."""
        return self.finalize_fn(model, config) if self.finalize_fn is not None else None

    @property
    def has_lifecycle(self) -> bool:
        return self.callbacks_fn is not None or self.finalize_fn is not None


# The registry is the one deliberate piece of module-level state: filled once by imports, read-only after.
_TECHNIQUES: dict[str, Technique] = {}
_DISCOVERED = [False]


def register(
    config_cls: type[TechniqueConfig],
    *,
    restore: Callable[..., Any] | None = None,
    applies_to: str = "any",
    strength: str | None = None,
    needs_calibration: bool = False,
    needs_gradients: bool = False,
    trainable: bool = True,
    exports_onnx: bool = True,
    callbacks: Callable[[Any], list[Any]] | None = None,
    finalize: Callable[[Any, Any], Any] | None = None,
):
    """Decorator registering `fn(model, config, ctx) -> ChangeRecord` under `config_cls.type`."""
    if not config_cls.type:
        raise TypeError(f"{config_cls.__name__} must set a non-empty `type`")
    if applies_to not in APPLIES_TO:
        raise TypeError(f"applies_to must be one of {APPLIES_TO}, got {applies_to!r}")
    fields = getattr(config_cls, "__dataclass_fields__", {})
    if strength is not None and strength not in fields:
        raise TypeError(f"strength {strength!r} is not a field of {config_cls.__name__}")

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        existing = _TECHNIQUES.get(config_cls.type)
        if existing is not None and existing.apply_fn.__module__ != fn.__module__:
            raise TypeError(f"technique {config_cls.type!r} is registered twice")
        doc = (fn.__doc__ or config_cls.__doc__ or "").strip().splitlines()
        _TECHNIQUES[config_cls.type] = Technique(
            config_cls.type,
            config_cls,
            fn,
            restore,
            doc[0] if doc else "",
            applies_to=applies_to,
            strength=strength,
            needs_calibration=needs_calibration,
            needs_gradients=needs_gradients,
            trainable=trainable,
            exports_onnx=exports_onnx,
            callbacks_fn=callbacks,
            finalize_fn=finalize,
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
