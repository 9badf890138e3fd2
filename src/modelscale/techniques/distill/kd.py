"""Knowledge distillation as a trainer callback: the student learns from a frozen teacher's soft targets.

Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network" (2015). With student logits s,
teacher logits t, temperature T and weight α, the training loss is

    L = α · CE(y, s) + (1 − α) · T² · KL( softmax(t/T) ‖ softmax(s/T) ),

averaged over examples (over tokens for language models: logits (B, T, V) are flattened). The T²
factor keeps the soft term's gradients, which shrink as 1/T², on the scale of the hard term's. The
hard term is the loss the trainer computed (cross-entropy, with its label smoothing). Optional hint
losses between named layers (`features.py`) are added with weight `feature_weight`.

The teacher is frozen (`requires_grad=False` on all its parameters — this changes the teacher object
passed in), kept in eval mode, run under `torch.no_grad()` and moved to the student's device.
Distillation changes the loss, not the model, so it is a `fit` callback, not a registered technique.

Example::

    from modelscale.techniques.distill import DistillConfig, Distiller, distill
    result = distill(student, teacher, data, TrainConfig(epochs=20), DistillConfig(alpha=0.5, temperature=4))
    # or, by hand:
    fit(student, data, TrainConfig(epochs=20), callbacks=[Distiller(teacher, alpha=0.5, temperature=4)])
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from modelscale.core.config import Config, check_range, param
from modelscale.core.errors import ModelscaleError
from modelscale.techniques.distill.features import FeatureHints

TASKS = ("classification", "lm")


@dataclass(kw_only=True)
class DistillConfig(Config):
    """How the student learns from the teacher: loss mix, temperature, optional feature hints."""

    type: ClassVar[str] = "distill"
    version: ClassVar[int] = 1

    alpha: float = param(0.5, "weight of the hard-label loss; 1 − alpha goes to the teacher's soft targets")
    temperature: float = param(4.0, "softmax temperature T for both models' logits (> 0); soft loss × T²")
    feature_pairs: dict[str, str] = param(
        factory=dict, help="student layer name -> teacher layer name for hint (feature) losses"
    )
    feature_weight: float = param(1.0, "weight of the summed feature MSE losses")

    def validate(self) -> None:
        check_range("alpha", self.alpha, 0.0, 1.0)
        check_range("temperature", self.temperature, 0.0)
        if self.temperature <= 0:
            raise ModelscaleError(f"temperature must be > 0, got {self.temperature}")
        check_range("feature_weight", self.feature_weight, 0.0)
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in self.feature_pairs.items()):
            raise ModelscaleError(
                "feature_pairs must map student layer names to teacher layer names (strings)"
            )


def soft_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T² · KL(softmax(t/T) ‖ softmax(s/T)), averaged over all positions but the last (class) dim."""
    vocab = student_logits.shape[-1]
    if teacher_logits.shape[-1] != vocab:
        raise ModelscaleError(
            f"teacher has {teacher_logits.shape[-1]} outputs, student {vocab}; they must predict the same classes"
        )
    s = student_logits.float().reshape(-1, vocab) / temperature
    t = teacher_logits.float().reshape(-1, vocab) / temperature
    kl = F.kl_div(F.log_softmax(s, dim=-1), F.log_softmax(t, dim=-1), reduction="batchmean", log_target=True)
    return temperature**2 * kl


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    targets: torch.Tensor | None = None,
    *,
    alpha: float,
    temperature: float,
    hard_loss: torch.Tensor | None = None,
) -> torch.Tensor:
    """α · CE(y, s) + (1 − α) · T² · KL(softmax(t/T) ‖ softmax(s/T)); `hard_loss` replaces the CE term."""
    if hard_loss is None:
        if targets is None:
            raise ModelscaleError("kd_loss needs targets or a precomputed hard_loss")
        hard_loss = F.cross_entropy(
            student_logits.float().reshape(-1, student_logits.shape[-1]), targets.reshape(-1)
        )
    if alpha >= 1.0:
        return hard_loss
    return alpha * hard_loss + (1.0 - alpha) * soft_loss(student_logits, teacher_logits, temperature)


def _logits(outputs: Any) -> torch.Tensor:
    from modelscale.train.evaluate import logits_of

    return logits_of(outputs)


def _device_of(module: nn.Module) -> torch.device | None:
    ref = next(iter(module.parameters()), None)
    if ref is None:
        ref = next(iter(module.buffers()), None)
    return None if ref is None else ref.device


class Distiller:
    """`fit` callback replacing the loss by the distillation loss (and feature hints, when given)."""

    def __init__(
        self,
        teacher: nn.Module,
        *,
        alpha: float = 0.5,
        temperature: float = 4.0,
        task: str = "classification",
        features: dict[str, str] | None = None,
        feature_weight: float = 1.0,
    ) -> None:
        if not isinstance(teacher, nn.Module):
            raise ModelscaleError(f"teacher must be a torch.nn.Module, got {type(teacher).__name__}")
        if task not in TASKS:
            raise ModelscaleError(f"unknown task {task!r}; valid options: {', '.join(TASKS)}")
        DistillConfig(alpha=alpha, temperature=temperature, feature_weight=feature_weight)  # validates
        self.teacher = teacher
        self.alpha, self.temperature, self.task = float(alpha), float(temperature), task
        self.hints = FeatureHints(features, feature_weight) if features else None
        self._freeze_teacher()

    @classmethod
    def from_config(
        cls, teacher: nn.Module, config: DistillConfig, *, task: str = "classification"
    ) -> Distiller:
        return cls(
            teacher,
            alpha=config.alpha,
            temperature=config.temperature,
            task=task,
            features=config.feature_pairs or None,
            feature_weight=config.feature_weight,
        )

    def _freeze_teacher(self) -> None:
        self.teacher.eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)

    def attach(self, student: nn.Module, example_inputs: Any) -> None:
        """Feature hints only: size the projections and register them on the student (before `fit`)."""
        if self.hints is not None:
            self.hints.attach(student, self.teacher, example_inputs)

    def detach(self, student: nn.Module) -> None:
        """Remove feature hooks and `student.distill_projections` (call after `fit`)."""
        if self.hints is not None:
            self.hints.detach(student)

    # --- callback protocol --------------------------------------------------------------------------
    def on_train_begin(self, state: Any) -> None:
        if self.hints is not None and not self.hints.attached:
            raise ModelscaleError(
                "feature distillation: call distiller.attach(student, example_inputs) before fit "
                "(the projections must exist when the optimizer is built), or use distill()"
            )
        self._freeze_teacher()
        self.teacher.to(state.device)

    def compute_loss(
        self, state: Any, outputs: Any, inputs: torch.Tensor, targets: torch.Tensor, loss: torch.Tensor
    ) -> torch.Tensor:
        student_logits = _logits(outputs)
        if self.teacher.training:
            self.teacher.eval()
        device = _device_of(self.teacher)
        if device is not None and device != inputs.device:
            self.teacher.to(inputs.device)
        with torch.no_grad():
            teacher_logits = _logits(self.teacher(inputs)).detach()
        if teacher_logits.shape != student_logits.shape:
            raise ModelscaleError(
                f"teacher output {tuple(teacher_logits.shape)} != student output {tuple(student_logits.shape)}; "
                "distill between models with the same output shape"
            )
        total = kd_loss(
            student_logits, teacher_logits, alpha=self.alpha, temperature=self.temperature, hard_loss=loss
        )
        if self.hints is not None:
            total = total + self.hints.loss()
        return total


def _example_batch(dataset: Any, size: int = 8) -> torch.Tensor:
    items = [dataset[i][0] for i in range(min(size, len(dataset)))]
    return torch.stack(items)


def distill(
    student: nn.Module,
    teacher: nn.Module,
    data: Any,
    train_config: Any = None,
    distill_config: DistillConfig | None = None,
    *,
    callbacks: Any = (),
) -> Any:
    """Train `student` in place on `data` with the distillation loss; return fit's `TrainResult`.

    Feature projections (if `feature_pairs` are given) are registered on the student for the run
    (as `student.distill_projections`, so fit's optimizer trains them) and removed afterwards.
    """
    from modelscale.train import TrainConfig, fit

    config = DistillConfig() if distill_config is None else distill_config
    if not isinstance(config, DistillConfig):
        raise ModelscaleError(f"distill_config must be a DistillConfig, got {type(config).__name__}")
    distiller = Distiller.from_config(teacher, config, task=getattr(data, "task", "classification"))
    if distiller.hints is not None:
        distiller.attach(student, _example_batch(data.train))
    try:
        return fit(
            student,
            data,
            TrainConfig() if train_config is None else train_config,
            callbacks=[distiller, *callbacks],
        )
    finally:
        distiller.detach(student)
