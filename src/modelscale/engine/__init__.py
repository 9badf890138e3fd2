"""The one engine behind every front door: a `Session` (model, data, example inputs, calibration, loss —
loaded once by `open_session`) and `run_steps`, which runs baseline / technique / fine-tune / distill /
export steps in order, with each technique's registered lifecycle (callbacks during the next training,
finalize after it).

Example::

    from modelscale.engine import finetune_step, open_session, run_steps, technique_step
    session = open_session("runs/cnn", data="digits")
    run_steps(session, [technique_step(QATConfig()), finetune_step(TrainConfig(epochs=3))])
    session.bundle.records[-1].technique      # "static_int8": QAT was finalized into real int8 layers
"""

from modelscale.engine.session import Session, open_session
from modelscale.engine.specs import DataSection, ExportConfig, MeasureSection, ModelSection
from modelscale.engine.steps import (
    BaselineStep,
    DistillStep,
    NanGuard,
    Step,
    StepOutcome,
    build_section,
    distill_step,
    finetune_step,
    run_export,
    run_step,
    run_steps,
    technique_step,
    train,
)
from modelscale.models.loading import load_model

__all__ = [
    "BaselineStep",
    "DataSection",
    "DistillStep",
    "ExportConfig",
    "MeasureSection",
    "ModelSection",
    "NanGuard",
    "Session",
    "Step",
    "StepOutcome",
    "build_section",
    "distill_step",
    "finetune_step",
    "load_model",
    "open_session",
    "run_export",
    "run_step",
    "run_steps",
    "technique_step",
    "train",
]
