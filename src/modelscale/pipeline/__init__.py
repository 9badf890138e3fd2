"""Pipelines: recipes (YAML/JSON), a resumable runner with per-step checkpoints, and a run store.

A recipe names a model, data, a baseline and ordered steps (techniques, fine-tunes, distillation,
export); `run_recipe` runs each sweep variant step by step, measures after every step, checkpoints
atomically and records everything in the run store (SQLite by default). Names resolve lazily, so
`modelscale runs list` does not import torch.

Example::

    from modelscale.pipeline import load_recipe, run_recipe, runs_list
    plan = load_recipe("recipes/digits_cnn_prune_finetune.yaml")   # validated before anything runs
    result = run_recipe(plan, store="runs/modelscale.db", run_dir="runs/digits")
    print(runs_list(store="runs/modelscale.db")[0])
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_LAZY = {
    "DEFAULT_STORE": "modelscale.pipeline.store",
    "RunStore": "modelscale.pipeline.store",
    "open_store": "modelscale.pipeline.store",
    "Recipe": "modelscale.pipeline.recipe",
    "RecipePlan": "modelscale.pipeline.recipe",
    "load_recipe": "modelscale.pipeline.recipe",
    "patch_recipe": "modelscale.pipeline.recipe",
    "read_recipe": "modelscale.pipeline.recipe",
    "RunResult": "modelscale.pipeline.runner",
    "run_recipe": "modelscale.pipeline.runner",
    "run_command": "modelscale.pipeline.run_commands",
    "runs_compare": "modelscale.pipeline.run_commands",
    "runs_delete": "modelscale.pipeline.run_commands",
    "runs_list": "modelscale.pipeline.run_commands",
    "runs_show": "modelscale.pipeline.run_commands",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'modelscale.pipeline' has no attribute {name!r}")
