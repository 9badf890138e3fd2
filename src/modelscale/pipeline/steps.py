"""What each recipe step does to the model: baseline, technique, fine-tune, distill, export.

Each function takes the current `ModelBundle` (model + zoo spec + records of applied techniques) and
returns a `StepOutcome` with the new bundle, a JSON summary, training metrics and extra files. They
know nothing about folders, markers or the store (that is `runner.py`). Training runs under a guard
that stops at the first non-finite loss with a one-line error, so a diverging step is recorded as
failed instead of producing a NaN model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from modelscale.core.errors import ModelscaleError
from modelscale.pipeline.recipe import (
    DistillStep,
    ExportConfig,
    ModelSection,
    Recipe,
    Step,
    distill_api,
    export_fn,
)

CALIBRATION_BATCHES = 4
CALIBRATION_BATCH_SIZE = 64


@dataclass
class StepOutcome:
    bundle: Any  # workflow.ModelBundle
    summary: dict[str, Any] = field(default_factory=dict)
    metrics: list[dict[str, Any]] = field(default_factory=list)  # {"name", "value"} rows (training numbers)
    files: list[tuple[str, Path]] = field(default_factory=list)  # (artifact kind, path) written by the step
    profile: bool = True  # measure the model after this step (export leaves it unchanged: no)


class NanGuard:
    """Trainer callback: raise at the first non-finite training loss (diverged run)."""

    def compute_loss(
        self, state: Any, outputs: Any, inputs: Any, targets: Any, loss: torch.Tensor
    ) -> torch.Tensor:
        if not bool(torch.isfinite(loss.detach()).all()):
            raise ModelscaleError(
                f"training loss became {float(loss.detach().float().mean())} at step {state.step + 1} "
                f"(epoch {state.epoch}); lower the lr or set grad_clip"
            )
        return loss


def example_batch(data: Any, batch_size: int) -> torch.Tensor:
    """`batch_size` real inputs from the test split (repeated when the split is smaller)."""
    n = len(data.test)
    if n == 0:
        raise ModelscaleError(
            f"data {data.name!r} has an empty test split; lower val/test fractions or add data"
        )
    return torch.stack([data.test[i % n][0] for i in range(batch_size)])


def calibration_batches(data: Any, seed: int) -> list[Any]:
    from modelscale.data import make_loader

    loader = make_loader(data.train, batch_size=CALIBRATION_BATCH_SIZE, shuffle=True, seed=seed)
    return [b for _, b in zip(range(CALIBRATION_BATCHES), loader)]


def build_model(section: ModelSection, data: Any, seed: int, *, allow_pickle: bool = False) -> Any:
    """A fresh zoo model sized for `data`, or a saved model folder.

    `allow_pickle` is the user's own opt-in (`modelscale run --allow-pickle`); the recipe cannot set it."""
    from modelscale.core.trust import file_options
    from modelscale.workflow import build_for, load_model_dir

    if section.load:
        return load_model_dir(section.load, allow_pickle=allow_pickle)
    kwargs = file_options(section.kwargs, where="the recipe's model kwargs", allow_pickle=allow_pickle)
    weights = kwargs.pop("weights", None)
    torch.manual_seed(seed)  # reproducible initialization
    return build_for(section.name, data=data, weights=weights, allow_pickle=allow_pickle, **kwargs)


def check_trust(section: ModelSection | None, where: str, *, allow_pickle: bool) -> None:
    """Refuse, before anything runs, a recipe model section (or the folder it loads) that asks for trust."""
    from modelscale.core.checkpoint import read_manifest, stored_spec
    from modelscale.core.trust import file_options

    if section is None:
        return
    if section.load:
        stored_spec(section.load, read_manifest(section.load), allow_pickle=allow_pickle)
    else:
        file_options(section.kwargs, where=f"{where}.kwargs", allow_pickle=allow_pickle)


def train(
    model: Any,
    data: Any,
    config: Any,
    *,
    callbacks: list[Any] = (),
    progress: bool = True,
    fit_fn: Any = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """`fit` (or `fit_fn` with fit's signature) with the NaN guard; returns (summary, metric rows)."""
    import dataclasses

    from modelscale.train import fit
    from modelscale.workflow import loss_for

    if config.progress and not progress:
        config = dataclasses.replace(config, progress=False)
    fit_fn = fit_fn or (lambda m, d, c, callbacks: fit(m, d, c, callbacks=callbacks, loss_fn=loss_for(d)))
    result = fit_fn(model, data, config, callbacks=[*callbacks, NanGuard()])
    last = result.history[-1] if result.history else {}
    if last and not math.isfinite(float(last.get("train_loss", 0.0))):
        raise ModelscaleError(f"training loss is {last['train_loss']}; lower the lr or set grad_clip")
    summary = {
        "epochs": result.epochs,
        "steps": result.steps,
        "seconds": result.seconds,
        "stopped_early": result.stopped_early,
        "best_epoch": result.best_epoch,
        "val": result.metrics,
        "final_train_loss": last.get("train_loss"),
        "device": result.device,
    }
    rows = [{"name": f"train.{k}", "value": float(v)} for k, v in result.metrics.items()]
    rows += [
        {"name": "train.seconds", "value": float(result.seconds)},
        {"name": "train.steps", "value": float(result.steps)},
    ]
    if last.get("train_loss") is not None:
        rows.append({"name": "train.final_train_loss", "value": float(last["train_loss"])})
    return summary, rows


def run_baseline(
    recipe: Recipe, data: Any, *, progress: bool = True, allow_pickle: bool = False
) -> StepOutcome:
    from modelscale.workflow import load_model_dir

    if recipe.baseline_load:
        bundle = load_model_dir(recipe.baseline_load, allow_pickle=allow_pickle)
        return StepOutcome(bundle, {"loaded": recipe.baseline_load})
    seed = recipe.baseline_train.seed if recipe.baseline_train is not None else recipe.data.seed
    bundle = build_model(recipe.model, data, seed, allow_pickle=allow_pickle)
    if recipe.baseline_train is None:
        return StepOutcome(bundle, {"trained": False})
    summary, rows = train(bundle.model, data, recipe.baseline_train, progress=progress)
    return StepOutcome(bundle, {"train": summary}, rows)


def _check_finite(model: Any, x: torch.Tensor, what: str) -> None:
    from modelscale.measure._common import model_device

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(x.to(model_device(model)))
    finally:
        model.train(was_training)
    out = out[0] if isinstance(out, tuple | list) else getattr(out, "logits", out)
    if isinstance(out, torch.Tensor) and out.is_floating_point() and not bool(torch.isfinite(out).all()):
        raise ModelscaleError(f"the model's outputs are not finite after {what}; check the step's config")


def run_technique(step: Step, bundle: Any, data: Any, seed: int) -> StepOutcome:
    from modelscale.core.apply import apply
    from modelscale.measure._common import model_device
    from modelscale.workflow import ModelBundle, loss_for

    device = model_device(bundle.model)  # where the previous step left it (training may use cuda)
    x = example_batch(data, 1).to(device)
    calibration = [tuple(t.to(device) for t in batch) for batch in calibration_batches(data, seed)]
    result = apply(
        bundle.model,
        step.config,
        calibration=calibration,
        example_inputs=x,
        loss_fn=loss_for(data),
    )
    _check_finite(result.model, x, step.config.type)
    new = ModelBundle(result.model, bundle.spec, [*bundle.records, result.record])
    summary = {"technique": step.config.type, "summary": result.record.summary, "notes": result.record.notes}
    rows = [
        {"name": f"technique.{k}", "value": float(v)}
        for k, v in result.record.summary.items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    ]
    return StepOutcome(new, summary, rows)


def pending_callbacks(previous: Step | None) -> list[Any]:
    """Callbacks a fine-tune needs to finish the previous technique (gradual pruning's schedule)."""
    if previous is not None and previous.kind == "technique" and previous.config.type == "gradual_prune":
        from modelscale.techniques.prune.gradual import GradualPruning

        return [GradualPruning(previous.config)]
    return []


def run_finetune(
    step: Step, bundle: Any, data: Any, previous: Step | None, *, progress: bool = True
) -> StepOutcome:
    summary, rows = train(
        bundle.model, data, step.config, callbacks=pending_callbacks(previous), progress=progress
    )
    return StepOutcome(bundle, {"train": summary}, rows)


def run_distill(
    step: Step, bundle: Any, data: Any, teacher: Any, *, progress: bool = True, allow_pickle: bool = False
) -> StepOutcome:
    _, distill = distill_api()
    spec: DistillStep = step.config
    student = bundle
    if spec.student is not None:
        student = build_model(spec.student, data, spec.train.seed, allow_pickle=allow_pickle)

    def fit_fn(model: Any, data: Any, config: Any, callbacks: list[Any]) -> Any:
        return distill(model, teacher.model, data, config, spec.config, callbacks=callbacks)

    summary, rows = train(student.model, data, spec.train, progress=progress, fit_fn=fit_fn)
    return StepOutcome(
        student, {"train": summary, "teacher": spec.teacher, "new_student": spec.student is not None}, rows
    )


def run_export(step: Step, bundle: Any, data: Any, step_dir: Path) -> StepOutcome:
    config: ExportConfig = step.config
    path = step_dir / f"model.{config.format}"
    export_fn()(
        bundle.model,
        example_batch(data, 1),
        path,
        dynamic_batch=config.dynamic_batch,
        opset=config.opset,
        exporter=config.exporter,
    )
    size = path.stat().st_size
    rows = [{"name": f"export.{config.format}_bytes", "value": float(size)}]
    return StepOutcome(
        bundle,
        {"format": config.format, "file": path.name, "bytes": size},
        rows,
        [(config.format, path)],
        profile=False,
    )
