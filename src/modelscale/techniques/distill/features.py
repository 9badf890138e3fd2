"""Feature (hint) distillation: match a student layer's output to a teacher layer's output.

Romero et al., "FitNets: Hints for Thin Deep Nets" (2015). For each pair (student layer s → teacher
layer t) the loss adds

    L_hint = ‖ P(h_s) − h_t ‖² / n      (mean squared error over the n elements),

where P is a learned projection when the widths differ: a 1×1 convolution for (B, C, H, W) maps, a
Linear over the last dim otherwise (identity when the widths match). If a teacher map has a different
height × width it is average-pooled to the student's. Outputs are captured with forward hooks.

How the projections train: `FeatureHints.attach(student, teacher, example_inputs)` runs one no-grad
forward of each model to read the widths, builds the projections and registers them on the student
as the submodule `student.distill_projections` (an `nn.ModuleDict`). Because `fit` builds its
optimizer from the model's parameters, they are trained with the student — so attach must happen
before `fit`. `detach(student)` removes the hooks and that attribute again (the projections are kept
on `hints.projections`). `modelscale.techniques.distill.distill` does both for you.

Example::

    hints = FeatureHints({"features.1": "features.1"}, weight=1.0)
    hints.attach(student, teacher, x_example)        # student.distill_projections now exists
    ...; loss = loss + hints.loss()                  # after a student and a teacher forward
    hints.detach(student)
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from modelscale.core.errors import ModelscaleError

ATTRIBUTE = "distill_projections"


def _key(name: str) -> str:
    return name.replace(".", "__") or "__root__"


def _first_tensor(out: Any) -> torch.Tensor | None:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, tuple | list) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    return None


def make_projection(student_shape: tuple[int, ...], teacher_shape: tuple[int, ...]) -> nn.Module:
    """1×1 conv (4-D maps) or Linear (last dim) from the student's width to the teacher's; Identity if equal."""
    if len(student_shape) != len(teacher_shape):
        raise ModelscaleError(
            f"feature shapes {student_shape} and {teacher_shape} have different ranks; pair layers of the same kind"
        )
    if len(student_shape) == 4:
        cs, ct = student_shape[1], teacher_shape[1]
        return nn.Identity() if cs == ct else nn.Conv2d(cs, ct, 1)
    if student_shape[:-1] != teacher_shape[:-1]:
        raise ModelscaleError(
            f"feature shapes {student_shape} and {teacher_shape} differ before the last dim; pair matching layers"
        )
    ds, dt = student_shape[-1], teacher_shape[-1]
    return nn.Identity() if ds == dt else nn.Linear(ds, dt)


class _Capture:
    """Forward hooks that keep the latest output of named modules."""

    def __init__(self, model: nn.Module, names: list[str], who: str) -> None:
        modules = dict(model.named_modules())
        missing = [n for n in names if n not in modules]
        if missing:
            raise ModelscaleError(f"{who} has no layer {missing[0]!r}; give names from {who}.named_modules()")
        self.outputs: dict[str, torch.Tensor] = {}
        self.handles = [modules[n].register_forward_hook(self._hook(n)) for n in names]

    def _hook(self, name: str) -> Any:
        def hook(_m: nn.Module, _i: Any, out: Any) -> None:
            tensor = _first_tensor(out)
            if tensor is not None:
                self.outputs[name] = tensor

        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []
        self.outputs = {}


def _run(model: nn.Module, inputs: Any) -> None:
    ref = next(iter(model.parameters()), None)
    if ref is not None and isinstance(inputs, torch.Tensor):
        inputs = inputs.to(ref.device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(inputs)
    finally:
        model.train(was_training)


class FeatureHints:
    """MSE between projected student features and teacher features, for named layer pairs."""

    def __init__(self, pairs: dict[str, str], weight: float = 1.0) -> None:
        if not pairs:
            raise ModelscaleError(
                "feature distillation needs at least one (student layer, teacher layer) pair"
            )
        self.pairs = dict(pairs)
        self.weight = float(weight)
        self.projections: nn.ModuleDict | None = None
        self._student: _Capture | None = None
        self._teacher: _Capture | None = None

    @property
    def attached(self) -> bool:
        return self._student is not None

    def attach(self, student: nn.Module, teacher: nn.Module, example_inputs: Any) -> nn.ModuleDict:
        """Hook both models, size the projections from one forward, register them on the student."""
        self.detach(student)
        self._student = _Capture(student, list(self.pairs), "the student")
        self._teacher = _Capture(teacher, list(self.pairs.values()), "the teacher")
        _run(student, example_inputs)
        _run(teacher, example_inputs)
        projections = nn.ModuleDict()
        for s_name, t_name in self.pairs.items():
            s_out, t_out = self._student.outputs.get(s_name), self._teacher.outputs.get(t_name)
            if s_out is None or t_out is None:
                raise ModelscaleError(
                    f"layer pair {s_name!r} -> {t_name!r} produced no tensor output; pick layers that return tensors"
                )
            projections[_key(s_name)] = make_projection(tuple(s_out.shape), tuple(t_out.shape))
        ref = next(iter(student.parameters()), None)
        if ref is not None:
            projections.to(device=ref.device, dtype=ref.dtype)
        if hasattr(student, ATTRIBUTE):
            raise ModelscaleError(f"the student already has an attribute {ATTRIBUTE!r}; detach it first")
        student.add_module(ATTRIBUTE, projections)
        self.projections = projections
        self._student.outputs, self._teacher.outputs = {}, {}
        return projections

    def detach(self, student: nn.Module) -> None:
        """Remove the hooks and the `distill_projections` submodule from the student."""
        for capture in (self._student, self._teacher):
            if capture is not None:
                capture.remove()
        self._student = self._teacher = None
        if (
            isinstance(getattr(student, ATTRIBUTE, None), nn.ModuleDict)
            and getattr(student, ATTRIBUTE) is self.projections
        ):
            delattr(student, ATTRIBUTE)

    def loss(self) -> torch.Tensor:
        """weight · Σ_pairs MSE(P(h_s), h_t) for the latest student and teacher forwards."""
        if self._student is None or self._teacher is None or self.projections is None:
            raise ModelscaleError(
                "feature hints are not attached; call attach(student, teacher, example) before fit"
            )
        total: torch.Tensor | None = None
        for s_name, t_name in self.pairs.items():
            s_out = self._student.outputs.pop(s_name, None)
            t_out = self._teacher.outputs.pop(t_name, None)
            if s_out is None or t_out is None:
                raise ModelscaleError(
                    f"no output captured for the pair {s_name!r} -> {t_name!r} in this step"
                )
            pred = self.projections[_key(s_name)](s_out)
            target = t_out.detach()
            if target.ndim == 4 and target.shape[-2:] != pred.shape[-2:]:
                target = F.adaptive_avg_pool2d(target, pred.shape[-2:])
            term = F.mse_loss(pred.float(), target.float())
            total = term if total is None else total + term
        assert total is not None
        return self.weight * total
