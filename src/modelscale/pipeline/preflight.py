"""Checks a recipe run makes before its first step: trust of every load, devices, resume markers
(`preflight`), and everything that would only fail later — data, model ↔ data, technique ↔ model
family, export after layers without an ONNX form (`check_up_front`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from modelscale.core.errors import ModelscaleError
from modelscale.engine.steps import BaselineStep, check_trust
from modelscale.pipeline.folders import read_marker
from modelscale.pipeline.recipe import ModelSection, Recipe, RecipePlan, Step


def preflight(plan: RecipePlan, run_path: Path, resume: bool, allow_pickle: bool = False) -> None:
    """Checks that need the machine, the run folder or the user's flags, before anything runs."""
    import torch

    for recipe in plan.variants:
        check_trust(recipe.model, "model", allow_pickle=allow_pickle)
        if recipe.baseline_load:
            check_trust(ModelSection(load=recipe.baseline_load), "baseline", allow_pickle=allow_pickle)
        for step in recipe.steps:
            if step.kind == "distill":
                check_trust(step.config.student, f"{step.name}.student", allow_pickle=allow_pickle)
        trains = [recipe.baseline_train] + [
            s.config if s.kind == "finetune" else s.config.train
            for s in recipe.steps
            if s.kind in ("finetune", "distill")
        ]
        wants_cuda = any(d.startswith("cuda") for d in recipe.measure.devices) or any(
            t is not None and t.device.startswith("cuda") for t in trains
        )
        if wants_cuda and not torch.cuda.is_available():
            raise ModelscaleError(
                "the recipe asks for a cuda device (measure.devices or a train device) but none is present; "
                "use cpu or run on a machine with a GPU"
            )
        if not resume:
            continue
        for step in all_steps(recipe):
            marker = read_marker(run_path / recipe.variant.slug / step.folder)
            if marker is None:
                break
            if marker.get("key") != recipe.prefix_key(step.index):
                raise ModelscaleError(
                    f"{run_path / recipe.variant.slug / step.folder} holds the result of a different recipe "
                    "(model, data or steps changed); use a new run_dir, or resume=False to start over"
                )


def check_up_front(recipe: Recipe, cache: dict[str, Any], allow_pickle: bool) -> None:
    """Everything that would only fail later, checked before the first step of any variant: the data
    loads (finite, labels 0..K-1), the model fits it, each technique fits the model's family, and no
    export follows layers that have no ONNX form."""
    from modelscale.core.registry import get_technique
    from modelscale.engine.compat import check_exportable, check_fits, check_source_kind, check_technique
    from modelscale.engine.session import Session
    from modelscale.engine.steps import build_section

    key = json.dumps(recipe.data.to_dict(), sort_keys=True)
    if key not in cache:
        try:
            cache[key] = recipe.data.load()
        except ModelscaleError as exc:
            raise ModelscaleError(f"data: {exc}") from None
    data = cache[key]
    section = ModelSection(load=recipe.baseline_load) if recipe.baseline_load else recipe.model
    label = section.load or section.name
    try:
        if section.name:
            check_source_kind(section.name, data)
        session = Session(None, data, seed=recipe.data.seed, allow_pickle=allow_pickle, progress=False)
        bundle = build_section(section, session)
        check_fits(bundle, data, label=label)
    except ModelscaleError as exc:
        raise ModelscaleError(f"model: {exc}") from None
    applied: list[str] = [r.technique for r in bundle.records]
    for i, step in enumerate(recipe.steps):
        if step.kind == "technique":
            check_technique(get_technique(step.config.type), bundle, f"steps[{i}]")
            applied.append(step.config.type)
        elif step.kind == "export":
            check_exportable(applied, f"steps[{i}]")


def all_steps(recipe: Recipe) -> list[Step]:
    seed = recipe.baseline_train.seed if recipe.baseline_train is not None else recipe.data.seed
    baseline = BaselineStep(recipe.model, recipe.baseline_train, recipe.baseline_load, seed)
    return [Step(0, "baseline", "baseline", baseline), *recipe.steps]
