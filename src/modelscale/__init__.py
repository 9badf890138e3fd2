"""modelscale: measure how a model's size relates to its performance, and make it smaller and faster.

Importing this package is cheap: torch is imported, but CUDA, transformers, onnx, optuna and
matplotlib load lazily where they are used.

Example::

    import modelscale as ms
    model = ms.build_model("cnn", num_classes=10, input_shape=(1, 8, 8))
    result = ms.apply(model, MagnitudePruneConfig(amount=0.5))    # from modelscale.techniques.prune
    print(result.record.summary)
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

# Public names and the module that defines them; resolved on first use so `import modelscale` stays fast.
_LAZY = {
    "ModelscaleError": "modelscale.core.errors",
    "TechniqueConfig": "modelscale.core.config",
    "Target": "modelscale.core.select",
    "select_modules": "modelscale.core.select",
    "config_from_dict": "modelscale.core.registry",
    "load_config": "modelscale.core.registry",
    "list_techniques": "modelscale.core.registry",
    "get_technique": "modelscale.core.registry",
    "apply": "modelscale.core.apply",
    "ApplyResult": "modelscale.core.apply",
    "ChangeRecord": "modelscale.core.apply",
    "save_compressed": "modelscale.core.saving",
    "load_compressed": "modelscale.models.loading",
    "load_model_dir": "modelscale.models.loading",
    "save_model_dir": "modelscale.models.loading",
    "open_session": "modelscale.engine",
    "run_steps": "modelscale.engine",
    "search": "modelscale.search",
    "profile": "modelscale.measure.profile",
    "compare": "modelscale.measure.compare",
    "load_data": "modelscale.data",
    "build_model": "modelscale.models",
    "fit": "modelscale.train",
    "evaluate": "modelscale.train",
    "TrainConfig": "modelscale.train",
}

__all__ = sorted([*_LAZY, "__version__"])


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'modelscale' has no attribute {name!r}")
