"""The one engine: run an ordered list of steps (baseline, technique, fine-tune, distill, export) on a
session. The CLI's `compress`, the recipe runner, the demo, the scaling studies and the search all
build steps and call `run_step` / `run_steps`; none of them knows a technique by name.

A technique's lifecycle comes from its registration (`core.registry`): a fine-tune or distillation that
follows it runs the trainer callbacks it declares (gradual pruning's schedule), and its `finalize` runs
after that training (QAT → real int8 layers; gradual masks → final masks). With no training step after
it, the technique is finalized at once. Whether a technique still awaits finalization is kept in its
record (`state["finalized"]`), which is saved with the model, so a resumed run continues correctly.

Training runs under a guard that stops at the first non-finite loss with a one-line error, and the
model's outputs are checked after each technique, so a diverging step fails instead of producing NaNs.

Example::

    from modelscale.engine import open_session, run_steps, technique_step, finetune_step
    session = open_session("cnn", data="digits")
    run_steps(session, [finetune_step(TrainConfig(epochs=20), name="baseline"),
                        technique_step(GradualPruneConfig(amount=0.8)), finetune_step(TrainConfig(epochs=5))])
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from modelscale.core.errors import ModelscaleError
from modelscale.engine.session import Session
from modelscale.engine.specs import ExportConfig, ModelSection
from modelscale.models.loading import ModelBundle, is_model_dir, load_model, load_model_dir

TRAINING_KINDS = ("finetune", "distill")
STEP_KINDS = ("baseline", "technique", "finetune", "distill", "export")


@dataclass
class BaselineStep:
    """Step 0: build the model (or load a saved folder) and optionally train it."""

    model: ModelSection | None = None  # None: the session's current model
    train: Any = None  # TrainConfig, or None for no training
    load: str | None = None  # a saved model folder instead of building `model`
    seed: int | None = None  # seeds a fresh model's initialisation (default: the session's seed)


@dataclass
class DistillStep:
    teacher: str  # "baseline", the name of an earlier step, or a saved model folder
    config: Any  # the distillation config (modelscale.techniques.distill)
    train: Any  # TrainConfig
    student: ModelSection | None = None  # None: the current model is the student


@dataclass
class Step:
    index: int  # position in the run: 0 is the baseline, later steps count from 1
    name: str
    kind: str  # baseline | technique | finetune | distill | export
    config: Any  # BaselineStep | TechniqueConfig | TrainConfig | DistillStep | ExportConfig

    @property
    def folder(self) -> str:
        return f"{self.index}-{self.name}"

    def to_dict(self) -> dict[str, Any]:
        if self.kind == "technique":
            return {"name": self.name, "technique": self.config.type, "config": self.config.to_dict()}
        if self.kind == "distill":
            c = self.config
            body = {"teacher": c.teacher, "config": c.config.to_dict(), "train": c.train.to_dict()}
            if c.student is not None:
                body["student"] = c.student.to_dict()
            return {"name": self.name, "distill": body}
        if self.kind == "baseline":
            c = self.config
            body = {"train": c.train.to_dict() if c.train is not None else None, "load": c.load}
            return {"name": self.name, "baseline": body}
        return {"name": self.name, self.kind: self.config.to_dict()}


@dataclass
class StepOutcome:
    bundle: ModelBundle
    summary: dict[str, Any] = field(default_factory=dict)
    metrics: list[dict[str, Any]] = field(default_factory=list)  # {"name", "value"} rows (training numbers)
    files: list[tuple[str, Path]] = field(default_factory=list)  # (artifact kind, path) written by the step
    profile: bool = True  # measure the model after this step (export leaves it unchanged: no)


def technique_step(config: Any, *, name: str | None = None, index: int = 1) -> Step:
    return Step(index, name or config.type, "technique", config)


def finetune_step(config: Any, *, name: str = "finetune", index: int = 1) -> Step:
    return Step(index, name, "finetune", config)


def distill_step(teacher: str, config: Any, train: Any, *, name: str = "distill", index: int = 1) -> Step:
    return Step(index, name, "distill", DistillStep(teacher, config, train))


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


# --- running steps -----------------------------------------------------------------------------------
def run_steps(
    session: Session,
    steps: Sequence[Step],
    *,
    on_step: Callable[[Step, StepOutcome], None] | None = None,
    teacher: Callable[[str], ModelBundle] | None = None,
    folder: str | Path | None = None,
) -> list[StepOutcome]:
    """Run `steps` in order on `session` (its bundle is replaced after each); returns each outcome."""
    outcomes = []
    for i, step in enumerate(steps):
        outcome = run_step(session, step, later=steps[i + 1 :], teacher=teacher, folder=folder)
        outcomes.append(outcome)
        if on_step is not None:
            on_step(step, outcome)
    return outcomes


def run_step(
    session: Session,
    step: Step,
    *,
    later: Sequence[Step] = (),
    teacher: Callable[[str], ModelBundle] | None = None,
    folder: str | Path | None = None,
) -> StepOutcome:
    """Run one step on `session`; `later` are the steps that follow (a lifecycle waits for training).

    `teacher(name)` finds a distillation teacher (default: the run's baseline or a saved folder);
    `folder` is where an export step writes its file."""
    if step.kind == "baseline":
        outcome = _baseline(session, step.config)
    elif step.kind == "technique":
        outcome = _technique(session, step.config, trains_later=_trains(later))
    elif step.kind == "finetune":
        outcome = _finetune(session, step.config)
    elif step.kind == "distill":
        outcome = _distill(session, step.config, teacher or _default_teacher(session))
    elif step.kind == "export":
        if folder is None:
            raise ModelscaleError(f"export step {step.name!r} needs an output folder")
        outcome = run_export(session, step.config, Path(folder))
    else:
        raise ModelscaleError(f"step kind must be one of {', '.join(STEP_KINDS)}; got {step.kind!r}")
    session.bundle = outcome.bundle
    if step.kind == "baseline":
        session._cache["baseline"] = outcome.bundle
    return outcome


def _trains(later: Sequence[Step]) -> bool:
    return any(s.kind in TRAINING_KINDS for s in later)


def _baseline(session: Session, spec: BaselineStep) -> StepOutcome:
    if spec.load:
        bundle = load_model_dir(spec.load, allow_pickle=session.allow_pickle)
        return StepOutcome(bundle, {"loaded": spec.load})
    bundle = session.bundle if spec.model is None else build_section(spec.model, session, seed=spec.seed)
    summary: dict[str, Any] = (
        {"loaded": spec.model.load} if spec.model is not None and spec.model.load else {}
    )
    if spec.train is None:
        return StepOutcome(bundle, {**summary, "trained": False})
    trained, rows = train(bundle.model, session.data, spec.train, progress=session.progress)
    return StepOutcome(bundle, {**summary, "train": trained}, rows)


def build_section(section: ModelSection, session: Session, *, seed: int | None = None) -> ModelBundle:
    """A recipe's model section for the session's data: a fresh zoo model or a saved folder."""
    from modelscale.core.trust import file_options

    if section.load:
        return load_model_dir(section.load, allow_pickle=session.allow_pickle)
    kwargs = file_options(
        section.kwargs, where="the recipe's model kwargs", allow_pickle=session.allow_pickle
    )
    weights = kwargs.pop("weights", None)
    return load_model(
        section.name,
        data=session.data,
        weights=weights,
        allow_pickle=session.allow_pickle,
        seed=session.seed if seed is None else seed,
        **kwargs,
    )


def check_trust(section: ModelSection | None, where: str, *, allow_pickle: bool) -> None:
    """Refuse, before anything runs, a model section (or the folder it loads) that asks for trust."""
    from modelscale.core.saving import read_manifest, stored_spec
    from modelscale.core.trust import file_options

    if section is None:
        return
    if section.load:
        stored_spec(section.load, read_manifest(section.load), allow_pickle=allow_pickle)
    else:
        file_options(section.kwargs, where=f"{where}.kwargs", allow_pickle=allow_pickle)


def _technique(session: Session, config: Any, *, trains_later: bool) -> StepOutcome:
    from modelscale.core.apply import apply
    from modelscale.core.registry import get_technique
    from modelscale.measure._common import model_device

    bundle = session.bundle
    device = model_device(bundle.model)  # where the previous step left it (training may use cuda)
    x = session.example_inputs(1).to(device)
    batches = session.calibration()
    calibration = [tuple(t.to(device) for t in b) for b in batches] if batches is not None else None
    result = apply(bundle.model, config, calibration=calibration, example_inputs=x, loss_fn=session.loss_fn())
    records = [*bundle.records, result.record]
    technique = get_technique(config.type)
    finalized = False
    if technique.has_lifecycle:
        result.record.state["finalized"] = False
        if not trains_later:  # nothing will train it: complete the technique now
            records = _finalize(result.model, records)
            finalized = True
    _check_finite(result.model, x, config.type)
    new = ModelBundle(result.model, bundle.spec, records)
    record = records[-1]
    summary = {"technique": config.type, "summary": record.summary, "notes": record.notes}
    if finalized:
        summary["finalized"] = True
    rows = [
        {"name": f"technique.{k}", "value": float(v)}
        for k, v in record.summary.items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    ]
    return StepOutcome(new, summary, rows)


def pending(records: Sequence[Any]) -> list[int]:
    """Indices of the records whose technique still awaits its finalize step."""
    return [i for i, r in enumerate(records) if r.state.get("finalized") is False]


def lifecycle_callbacks(records: Sequence[Any]) -> list[Any]:
    """Trainer callbacks the pending techniques need during the next training."""
    from modelscale.core.registry import config_from_dict, get_technique

    out: list[Any] = []
    for i in pending(records):
        out += get_technique(records[i].technique).callbacks(config_from_dict(records[i].config))
    return out


def _finalize(model: Any, records: list[Any]) -> list[Any]:
    """Run every pending technique's finalize on `model`; its record is replaced by the result."""
    from modelscale.core.registry import config_from_dict, get_technique

    records = list(records)
    for i in pending(records):
        config = config_from_dict(records[i].config)
        new = get_technique(records[i].technique).finalize(model, config)
        done = new if new is not None else records[i]
        done.state["finalized"] = True
        records[i] = done
    return records


def _finetune(session: Session, config: Any) -> StepOutcome:
    bundle = session.bundle
    summary, rows = train(
        bundle.model,
        session.data,
        config,
        callbacks=lifecycle_callbacks(bundle.records),
        progress=session.progress,
    )
    new = ModelBundle(bundle.model, bundle.spec, _finalize(bundle.model, bundle.records))
    return StepOutcome(new, {"train": summary}, rows)


def _default_teacher(session: Session) -> Callable[[str], ModelBundle]:
    def find(name: str) -> ModelBundle:
        if name == "baseline" and "baseline" in session._cache:
            return session._cache["baseline"]
        if is_model_dir(name):
            return load_model_dir(name, allow_pickle=session.allow_pickle)
        raise ModelscaleError(
            f"teacher {name!r} is neither an earlier step of this run nor a saved model folder; "
            "pass a folder written by modelscale (with modelscale.json)"
        )

    return find


def _distill(session: Session, spec: DistillStep, find_teacher: Callable[[str], ModelBundle]) -> StepOutcome:
    from modelscale.engine.compat import check_fits
    from modelscale.techniques.distill import distill

    teacher = find_teacher(spec.teacher)
    check_fits(teacher, session.data, label=f"the teacher {spec.teacher}")
    student = session.bundle
    if spec.student is not None:
        student = build_section(spec.student, session, seed=spec.train.seed)

    def fit_fn(model: Any, data: Any, config: Any, callbacks: list[Any]) -> Any:
        return distill(model, teacher.model, data, config, spec.config, callbacks=callbacks)

    trainable = [(p, p.requires_grad) for p in teacher.model.parameters()]
    try:  # distillation freezes the teacher; it is the run's baseline, so it is given back as it was
        summary, rows = train(
            student.model,
            session.data,
            spec.train,
            callbacks=lifecycle_callbacks(student.records),
            progress=session.progress,
            fit_fn=fit_fn,
        )
    finally:
        for p, flag in trainable:
            p.requires_grad_(flag)
    student = ModelBundle(student.model, student.spec, _finalize(student.model, student.records))
    return StepOutcome(
        student, {"train": summary, "teacher": spec.teacher, "new_student": spec.student is not None}, rows
    )


def run_export(session: Session, config: ExportConfig, folder: Path) -> StepOutcome:
    """Write the session's model to `folder/model.<format>` (the model itself is unchanged)."""
    from modelscale.export.onnx_export import export_onnx, require

    require("onnx", "onnxscript")
    bundle = session.bundle
    path = Path(folder) / f"model.{config.format}"
    export_onnx(
        bundle.model,
        session.example_inputs(1),
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


# --- training ------------------------------------------------------------------------------------------
def train(
    model: Any,
    data: Any,
    config: Any,
    *,
    callbacks: Sequence[Any] = (),
    progress: bool = True,
    fit_fn: Any = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """`fit` (or `fit_fn` with fit's signature) with the NaN guard; returns (summary, metric rows).

    The criterion is the trainer's own for the data's task, so `label_smoothing` is honoured."""
    import dataclasses

    from modelscale.train import fit

    if data is None:
        raise ModelscaleError("training needs data (e.g. --data digits); see `modelscale list data`")
    if config.progress and not progress:
        config = dataclasses.replace(config, progress=False)
    fit_fn = fit_fn or (lambda m, d, c, callbacks: fit(m, d, c, callbacks=callbacks))
    result = fit_fn(model, data, config, [*callbacks, NanGuard()])
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
        "compile": getattr(result, "compile", None),  # with train.compile: the CompileReport
    }
    rows = [{"name": f"train.{k}", "value": float(v)} for k, v in result.metrics.items()]
    rows += [
        {"name": "train.seconds", "value": float(result.seconds)},
        {"name": "train.steps", "value": float(result.steps)},
    ]
    if last.get("train_loss") is not None:
        rows.append({"name": "train.final_train_loss", "value": float(last["train_loss"])})
    return summary, rows


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
