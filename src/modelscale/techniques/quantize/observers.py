"""Activation observers: watch a layer's inputs during calibration (or QAT) and give a per-tensor scale.

Jacob et al., "Quantization and Training of Neural Networks for Efficient Integer-Arithmetic-Only
Inference" (2018) for min-max and moving-average ranges; Wu et al., "Integer Quantization for Deep
Learning Inference" (2020) for percentile calibration. Each observer keeps a range [lo, hi] of what it
saw; `qparams` turns it into the scale s and zero point z of b-bit codes:

    symmetric (int8):    s = max(|lo|, |hi|) / Q,  z = 0,  codes in [-Q, Q],  Q = 2^(b-1) - 1
    asymmetric (uint8):  lo' = min(lo, 0), hi' = max(hi, 0),  s = (hi' - lo') / (2^b - 1),
                         z = clamp(round(-lo' / s), 0, 2^b - 1),  codes in [0, 2^b - 1]
    x ≈ (clamp(round(x / s) + z, qmin, qmax) - z) · s

- `MinMaxObserver`: lo = min over every batch, hi = max.
- `MovingAverageObserver`: lo ← lo + c · (min(x) - lo) (same for hi), c = averaging constant; the first
  batch sets the range.
- `PercentileObserver`: a histogram of x on [-R, R] (R doubles, merging bin pairs exactly, when a batch
  exceeds it); symmetric ranges take the p-th percentile of |x|, asymmetric ones the (100 - p)-th and
  p-th percentiles of x, each clipped to the true extremes. Rare outliers then no longer stretch s.

Observers are modules whose state is buffers, so a QAT model saves and reloads mid-training.
Per-channel weight scales come from `common.quantize_groups` (group_size=0). `calibrate` feeds one
observer per layer from forward pre-hooks while calibration batches run through the model.

Example::

    obs = make_observer("percentile", percentile=99.99)
    for x in batches:
        obs.observe(x)
    scale, zero_point = obs.qparams(bits=8, symmetric=False)     # uint8 codes with a zero point
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn

from modelscale.core.errors import ModelscaleError

OBSERVERS = ("minmax", "moving_average", "percentile")
_MIN_SCALE = 1e-8  # a range of all zeros still gets a usable scale


def code_range(bits: int, symmetric: bool) -> tuple[int, int]:
    """(qmin, qmax) of b-bit activation codes: [-Q, Q] symmetric, [0, 2^b - 1] asymmetric."""
    if symmetric:
        q = 2 ** (bits - 1) - 1
        return -q, q
    return 0, 2**bits - 1


def activation_qparams(lo: float, hi: float, *, bits: int = 8, symmetric: bool = False) -> tuple[float, int]:
    """Scale (a float32 value) and integer zero point for the range [lo, hi] (see module docstring)."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ModelscaleError(f"activation range [{lo}, {hi}] is not finite; check the calibration inputs")
    qmin, qmax = code_range(bits, symmetric)
    if symmetric:
        scale = max(abs(lo), abs(hi)) / qmax
        zero = 0
    else:
        lo, hi = min(lo, 0.0), max(hi, 0.0)
        scale = (hi - lo) / (qmax - qmin)
    scale = float(torch.tensor(max(scale, _MIN_SCALE), dtype=torch.float32))  # exactly what is stored
    if not symmetric:
        zero = int(min(max(round(-lo / scale), qmin), qmax))
    return scale, zero


class Observer(nn.Module):
    """Base: running `min_val`, `max_val` and the number of batches seen (`count`), all buffers."""

    kind = "observer"

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("min_val", torch.zeros(1))
        self.register_buffer("max_val", torch.zeros(1))
        self.register_buffer("count", torch.zeros(1, dtype=torch.int64))

    @property
    def ready(self) -> bool:
        """Whether at least one batch has been observed."""
        return int(self.count) > 0

    @torch.no_grad()
    def observe(self, x: torch.Tensor) -> None:
        x = x.detach()
        if x.numel() == 0:
            return
        lo, hi = torch.aminmax(x.to(torch.float32))
        self._update(lo.reshape(1), hi.reshape(1), x)
        self.count += 1

    def _update(self, lo: torch.Tensor, hi: torch.Tensor, x: torch.Tensor) -> None:  # pragma: no cover
        raise NotImplementedError

    def range(self) -> tuple[float, float]:
        """The (lo, hi) range the scale is computed from."""
        if not self.ready:
            raise ModelscaleError(
                f"{self.kind} observer saw no data; run calibration batches through the model"
            )
        return float(self.min_val), float(self.max_val)

    def qparams(self, *, bits: int = 8, symmetric: bool = False) -> tuple[float, int]:
        lo, hi = self.range()
        return activation_qparams(lo, hi, bits=bits, symmetric=symmetric)

    def extra_repr(self) -> str:
        return f"count={int(self.count)}, range=[{float(self.min_val):.4g}, {float(self.max_val):.4g}]"


class MinMaxObserver(Observer):
    """lo, hi = the smallest and largest value over every observed batch."""

    kind = "minmax"

    def _update(self, lo: torch.Tensor, hi: torch.Tensor, x: torch.Tensor) -> None:
        if self.ready:
            lo, hi = torch.minimum(lo, self.min_val), torch.maximum(hi, self.max_val)
        self.min_val.copy_(lo)
        self.max_val.copy_(hi)


class MovingAverageObserver(Observer):
    """lo, hi follow each batch's min and max with an exponential moving average (constant c)."""

    kind = "moving_average"

    def __init__(self, averaging_constant: float = 0.01) -> None:
        super().__init__()
        if not 0.0 < averaging_constant <= 1.0:
            raise ModelscaleError(f"averaging_constant must be in (0, 1], got {averaging_constant}")
        self.averaging_constant = averaging_constant

    def _update(self, lo: torch.Tensor, hi: torch.Tensor, x: torch.Tensor) -> None:
        if self.ready:
            c = self.averaging_constant
            lo, hi = self.min_val + c * (lo - self.min_val), self.max_val + c * (hi - self.max_val)
        self.min_val.copy_(lo)
        self.max_val.copy_(hi)


class PercentileObserver(Observer):
    """A histogram of x on [-R, R]; the range is the p-th percentile (of |x| when symmetric)."""

    kind = "percentile"

    def __init__(self, percentile: float = 99.99, bins: int = 2048) -> None:
        super().__init__()
        if not 50.0 < percentile <= 100.0:
            raise ModelscaleError(f"percentile must be in (50, 100], got {percentile}")
        if bins < 8 or bins % 4:
            raise ModelscaleError(f"bins must be a multiple of 4 and >= 8, got {bins}")
        self.percentile = percentile
        self.register_buffer("histogram", torch.zeros(bins, dtype=torch.float64))
        self.register_buffer("bound", torch.zeros(1))  # R: the histogram covers [-R, R]

    def _update(self, lo: torch.Tensor, hi: torch.Tensor, x: torch.Tensor) -> None:
        amax = float(torch.maximum(hi.abs(), lo.abs()))
        if self.ready:
            self.min_val.copy_(torch.minimum(lo, self.min_val))
            self.max_val.copy_(torch.maximum(hi, self.max_val))
        else:
            self.min_val.copy_(lo)
            self.max_val.copy_(hi)
            self.bound.fill_(max(amax, _MIN_SCALE))
        while amax > float(self.bound):  # double R: old bins fill the middle half, two per new bin
            n = self.histogram.numel()
            merged = self.histogram.view(n // 2, 2).sum(1)
            self.histogram.zero_()
            self.histogram[n // 4 : n // 4 + n // 2] = merged
            self.bound.mul_(2.0)
        r = float(self.bound)
        self.histogram += torch.histc(
            x.to(torch.float32), bins=self.histogram.numel(), min=-r, max=r
        ).double()

    def range(self) -> tuple[float, float]:
        lo, hi = super().range()
        n, r = self.histogram.numel(), float(self.bound)
        width = 2.0 * r / n
        cum = self.histogram.cumsum(0)
        total = float(cum[-1])
        p = self.percentile / 100.0
        upper = int(torch.searchsorted(cum, torch.tensor([p * total], dtype=torch.float64)).clamp(max=n - 1))
        lower = int(
            torch.searchsorted(cum, torch.tensor([(1.0 - p) * total], dtype=torch.float64)).clamp(max=n - 1)
        )
        return max(lo, -r + lower * width), min(hi, -r + (upper + 1) * width)

    def abs_range(self) -> float:
        """The p-th percentile of |x| (from the histogram folded at 0), clipped to the largest |x|."""
        super().range()
        n, r = self.histogram.numel(), float(self.bound)
        folded = self.histogram[n // 2 :] + self.histogram[: n // 2].flip(0)
        cum = folded.cumsum(0)
        target = torch.tensor([self.percentile / 100.0 * float(cum[-1])], dtype=torch.float64)
        index = int(torch.searchsorted(cum, target).clamp(max=n // 2 - 1))
        largest = max(abs(float(self.min_val)), abs(float(self.max_val)))
        return min(largest, (index + 1) * (2.0 * r / n))

    def qparams(self, *, bits: int = 8, symmetric: bool = False) -> tuple[float, int]:
        if symmetric:
            amax = self.abs_range()
            return activation_qparams(-amax, amax, bits=bits, symmetric=True)
        return super().qparams(bits=bits, symmetric=False)


def make_observer(
    kind: str, *, averaging_constant: float = 0.01, percentile: float = 99.99, bins: int = 2048
) -> Observer:
    """A fresh observer: "minmax", "moving_average" or "percentile"."""
    if kind == "minmax":
        return MinMaxObserver()
    if kind == "moving_average":
        return MovingAverageObserver(averaging_constant)
    if kind == "percentile":
        return PercentileObserver(percentile, bins)
    raise ModelscaleError(f"unknown observer {kind!r}; valid options: {', '.join(OBSERVERS)}")


def fake_quantize(
    x: torch.Tensor, scale: float, zero_point: int, *, bits: int = 8, symmetric: bool = False
) -> torch.Tensor:
    """x quantized to b-bit codes and back, per tensor; gradients pass straight through inside the range."""
    qmin, qmax = code_range(bits, symmetric)
    return torch.fake_quantize_per_tensor_affine(x, scale, zero_point, qmin, qmax)


def fake_quantize_weight(w: torch.Tensor, *, bits: int = 8, per_channel: bool = True) -> torch.Tensor:
    """Symmetric fake quantization of a weight, one scale per output channel (or per tensor), with STE."""
    q = 2 ** (bits - 1) - 1
    rows = w.detach().reshape(w.shape[0], -1)
    tiny = torch.finfo(torch.float32).tiny
    if per_channel:
        scale = (rows.abs().amax(1).to(torch.float32) / q).clamp(min=tiny)
        zero = torch.zeros(scale.numel(), dtype=torch.int32, device=w.device)
        return torch.fake_quantize_per_channel_affine(w, scale, zero, 0, -q, q)
    scale = float((rows.abs().amax().to(torch.float32) / q).clamp(min=tiny))
    return torch.fake_quantize_per_tensor_affine(w, scale, 0, -q, q)


# --- calibration ----------------------------------------------------------------------------------
def batch_inputs(batch: Any) -> torch.Tensor:
    """The model input of one calibration batch: a tensor, or the first item of (inputs, targets)."""
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, tuple | list) and batch and isinstance(batch[0], torch.Tensor):
        return batch[0]
    raise ModelscaleError(
        f"calibration batches must be tensors or (inputs, targets) pairs, got {type(batch).__name__}"
    )


def calibration_batches(calibration: Iterable[Any] | None, technique: str) -> list[Any]:
    batches = list(calibration) if calibration is not None else []
    if not batches:
        raise ModelscaleError(
            f"{technique} needs calibration data: pass calibration=[(inputs, targets), ...] to apply "
            "(CLI: --data)"
        )
    return batches


@torch.no_grad()
def run_batches(model: nn.Module, batches: Sequence[Any]) -> None:
    """Run the inputs of `batches` through `model` (on the model's device)."""
    param = next(iter(model.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    for batch in batches:
        model(batch_inputs(batch).to(device))


def calibrate(
    model: nn.Module,
    layers: list[tuple[str, nn.Module]],
    batches: Sequence[Any],
    new: Callable[[str], Observer],
) -> dict[str, Observer]:
    """One observer per layer, fed with the layer's input on every batch (the model runs in eval mode)."""
    observers = {name: new(name) for name, _ in layers}
    hooks = [
        module.register_forward_pre_hook(lambda _m, args, obs=observers[name]: obs.observe(args[0]))
        for name, module in layers
    ]
    was_training = model.training
    model.eval()
    try:
        run_batches(model, batches)
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    return observers
