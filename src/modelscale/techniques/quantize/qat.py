"""Quantization-aware training: fake-quantize weights and activations while fine-tuning, then convert to int8.

Jacob et al., "Quantization and Training of Neural Networks for Efficient Integer-Arithmetic-Only
Inference" (2018); the straight-through estimator of Bengio et al. (2013). Each targeted Linear/Conv2d
is wrapped so its forward sees what the int8 layer will compute:

    x̃ = (clamp(round(x / s_x) + z_x, qmin, qmax) − z_x) · s_x      s_x, z_x from a moving-average observer
    W̃ = clamp(round(W / s_w), −127, 127) · s_w                     s_w[n] = max|W[n]| / 127 (per channel)
    y = layer(x̃; W̃, b),   ∂x̃/∂x = ∂W̃/∂W = 1 inside the clamp range (STE), 0 outside

The activation observer keeps updating in training mode and is frozen in eval mode. Conv2d →
BatchNorm2d pairs are folded first (the convs then train with the folded, fixed normalisation).
`apply` wraps the layers (and initialises the observers on calibration batches when given); train with
`modelscale.train.fit`; `convert_qat` then swaps every wrapper for the `static_int8` layer with the
observed scales and returns a `static_int8` record, so the converted model saves and reloads like a
static one. A wrapped model saves and reloads mid-training with the `qat` record.

Example::

    result = apply(model, QATConfig(), calibration=batches)
    fit(result.model, data, TrainConfig(epochs=2, lr=1e-4))
    int8 = convert_qat(result.model)                      # ApplyResult: model + static_int8 record
    save_compressed("out", int8.model, [int8.record])
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from modelscale.core.apply import ApplyContext, ApplyResult, ChangeRecord
from modelscale.core.config import TechniqueConfig, check_range, param
from modelscale.core.errors import ModelscaleError
from modelscale.core.registry import register
from modelscale.core.select import Target
from modelscale.techniques.quantize.common import (
    layer_row,
    replace_module,
    restore_layers,
    select_layers,
    size_summary,
)
from modelscale.techniques.quantize.fold_bn import fold_batchnorm, refold
from modelscale.techniques.quantize.observers import (
    MovingAverageObserver,
    fake_quantize,
    fake_quantize_weight,
    run_batches,
)
from modelscale.techniques.quantize.static_int8 import (
    StaticInt8Config,
    build_static_layer,
    kernel_notes,
    skip_reading_parents,
)


@dataclass(kw_only=True)
class QATConfig(TechniqueConfig):
    """Fake-quantized Linear/Conv2d layers for fine-tuning; `convert_qat` turns them into static int8."""

    type: ClassVar[str] = "qat"
    version: ClassVar[int] = 1

    bits: int = param(8, "bits of weight and activation codes, 2..8")
    weights: Literal["channel", "tensor"] = param(
        "channel", "one weight scale per output channel or per tensor"
    )
    activations: Literal["asymmetric", "symmetric"] = param(
        "asymmetric", "asymmetric: uint8 codes with a zero point; symmetric: int8 codes, zero point 0"
    )
    averaging_constant: float = param(
        0.01, "weight of each training batch in the activation range's moving average"
    )
    fold_bn: bool = param(True, "fold each Conv2d → BatchNorm2d pair into the conv before fine-tuning")
    kernel: Literal["auto", "simulated"] = param(
        "auto", "kernels of the converted int8 layers: real where they run (probed), else simulated"
    )

    def validate(self) -> None:
        check_range("bits", self.bits, 2, 8)
        if not 0.0 < self.averaging_constant <= 1.0:
            raise ModelscaleError(
                f"averaging_constant must be in (0, 1], e.g. 0.01; got {self.averaging_constant}"
            )


class FakeQuantLayer(nn.Module):
    """Wraps a Linear/Conv2d (`.module`, still trained) with activation and weight fake quantization."""

    def __init__(
        self,
        module: nn.Module,
        *,
        bits: int = 8,
        symmetric: bool = False,
        per_channel: bool = True,
        averaging_constant: float = 0.01,
        kernel: str = "auto",
        folded_bn: str | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(module, nn.Linear | nn.Conv2d):
            raise ModelscaleError(
                f"cannot fake-quantize a {type(module).__name__}; supported: Linear, Conv2d"
            )
        self.module = module
        self.observer = MovingAverageObserver(averaging_constant)
        self.bits, self.symmetric, self.per_channel = bits, symmetric, per_channel
        self.kernel = kernel
        self.folded_bn = folded_bn  # the BatchNorm2d folded into this conv (a record entry, not state)

    @property
    def weight(self) -> torch.Tensor:
        return self.module.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.module.bias

    def qparams(self) -> tuple[float, int]:
        """The activation scale and zero point the int8 layer will use (the observer's current range)."""
        return self.observer.qparams(bits=self.bits, symmetric=self.symmetric)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.observer.observe(x)
        if self.observer.ready:
            scale, zero = self.qparams()
            x = fake_quantize(x, scale, zero, bits=self.bits, symmetric=self.symmetric)
        m = self.module
        w = fake_quantize_weight(m.weight, bits=self.bits, per_channel=self.per_channel)
        if isinstance(m, nn.Linear):
            return F.linear(x, w, m.bias)
        return F.conv2d(x, w, m.bias, m.stride, m.padding, m.dilation, m.groups)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, {'symmetric' if self.symmetric else 'asymmetric'}, observed={self.observer.ready}"


def _wrap(module: nn.Module, config: QATConfig, name: str, folded_bn: str | None) -> FakeQuantLayer:
    return FakeQuantLayer(
        module,
        bits=config.for_layer(name, "bits"),
        symmetric=config.for_layer(name, "activations") == "symmetric",
        per_channel=config.for_layer(name, "weights") == "channel",
        averaging_constant=config.for_layer(name, "averaging_constant"),
        kernel=config.for_layer(name, "kernel"),
        folded_bn=folded_bn,
    )


def _restore(model: nn.Module, config: QATConfig, record: ChangeRecord) -> None:
    refold(model, record.state.get("folded", []))
    restore_layers(
        model, record, lambda module, row: _wrap(module, config, row["name"], row.get("folded_bn"))
    )


@register(
    QATConfig,
    restore=_restore,
    strength="bits",
    finalize=lambda model, config: convert_qat(model, inplace=True).record,
)
def qat(model: nn.Module, config: QATConfig, ctx: ApplyContext) -> ChangeRecord:
    """Quantization-aware training: fake-quant wrappers (STE); fine-tune with fit, then convert_qat."""
    chosen, notes = select_layers(model, config.target)
    chosen = skip_reading_parents(model, chosen, notes)
    bn_of: dict[str, str] = {}
    if config.fold_bn:
        folded = fold_batchnorm(model, convs=[n for n, m in chosen if isinstance(m, nn.Conv2d)])
        bn_of = dict(folded.pairs)
        notes.extend(folded.notes)
        if bn_of:
            notes.append(
                f"folded {len(bn_of)} BatchNorm2d before fine-tuning (found by {folded.method}); "
                "those convs train with the folded, fixed normalisation"
            )
    rows, wrappers = [], []
    for name, module in chosen:
        wrapper = _wrap(module, config, name, bn_of.get(name))
        replace_module(model, name, wrapper)
        wrappers.append(wrapper)
        rows.append(
            {
                "name": name,
                "kind": "linear" if isinstance(module, nn.Linear) else "conv2d",
                "shape": list(module.weight.shape),
                "folded_bn": bn_of.get(name),
            }
        )
    batches = list(ctx.calibration) if ctx.calibration is not None else []
    if batches:  # initialise the activation ranges: wrappers observe, everything else stays in eval mode
        was_training = model.training
        model.eval()
        for wrapper in wrappers:
            wrapper.train()
        try:
            run_batches(model, batches)
        finally:
            model.train(was_training)
        notes.append(f"activation observers initialised on {len(batches)} calibration batches")
    else:
        notes.append("no calibration batches: activation observers start on the first training step")
    notes.insert(
        0,
        "fake quantization only (float math, not faster): fine-tune with modelscale.train.fit, then "
        "convert_qat(model) for real int8 layers",
    )
    return ChangeRecord(
        technique=config.type,
        config=config.to_dict(),
        layers=rows,
        summary={"layers": len(rows), "folded_bn": len(bn_of)},
        notes=notes,
        state={"folded": [[conv, bn] for conv, bn in bn_of.items()]},
    )


def convert_qat(model: nn.Module, *, inplace: bool = False) -> ApplyResult:
    """Swap every fake-quant wrapper for a static int8 layer with its observed activation scale.

    Returns the converted model and a `static_int8` record (save the model with that record, not the
    `qat` one). Wrappers whose observer never saw data are unwrapped to float, with a note.
    """
    target = model if inplace else copy.deepcopy(model)
    wrappers = [(n, m) for n, m in target.named_modules() if isinstance(m, FakeQuantLayer)]
    if not wrappers:
        raise ModelscaleError("convert_qat found no fake-quantized layers; apply the qat technique first")
    first = wrappers[0][1]
    rows, notes, folded = [], [], []
    with torch.no_grad():
        for name, wrapper in wrappers:
            if wrapper.folded_bn:
                folded.append([name, wrapper.folded_bn])
            if not wrapper.observer.ready:
                replace_module(target, name, wrapper.module)
                notes.append(f"{name}: its activation observer saw no data, left float")
                continue
            x_scale, x_zero = wrapper.qparams()
            layer, why = build_static_layer(
                wrapper.module,
                x_scale,
                x_zero,
                bits=wrapper.bits,
                symmetric=wrapper.symmetric,
                per_channel=wrapper.per_channel,
                kernel=wrapper.kernel,
            )
            if why:
                notes.append(f"{name}: simulated ({why})")
            replace_module(target, name, layer)
            rows.append(
                layer_row(
                    name,
                    layer,
                    kernel=layer.kernel,
                    bits=wrapper.bits,
                    activations="symmetric" if wrapper.symmetric else "asymmetric",
                    weights="channel" if wrapper.per_channel else "tensor",
                    observer="moving_average (QAT)",
                    x_scale=x_scale,
                    x_zero_point=x_zero,
                )
            )
    if not rows:
        raise ModelscaleError("no QAT layer has observed activations; train or calibrate before convert_qat")
    config = StaticInt8Config(
        observer="moving_average",
        averaging_constant=first.observer.averaging_constant,
        weights="channel" if first.per_channel else "tensor",
        activations="symmetric" if first.symmetric else "asymmetric",
        bits=first.bits,
        fold_bn=bool(folded),
        kernel="simulated" if first.kernel == "simulated" else "auto",
        target=Target(include=tuple(r["name"] for r in rows)),
    )
    notes = (
        kernel_notes(rows)
        + ["converted from quantization-aware training (scales observed in training)"]
        + notes
    )
    record = ChangeRecord(
        technique=config.type,
        config=config.to_dict(),
        layers=rows,
        summary={
            **size_summary(rows),
            "kernel": "/".join(sorted({r["kernel"] for r in rows})),
            "folded_bn": len(folded),
        },
        notes=notes,
        state={"folded": folded, "fold_method": "qat"},
    )
    return ApplyResult(target, record)
