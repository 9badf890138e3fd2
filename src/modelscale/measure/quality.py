"""Quality on a dataset: accuracy, top-k accuracy, mean loss, calibration (ECE) and bits per byte.

Classification: outputs (B, C) logits, targets (B,) class ids. Language modelling (`task="lm"`):
outputs (B, T, V), targets (B, T); every token is one prediction (targets < 0 are ignored, as with
`ignore_index=-100`), and `bits_per_byte = loss / ln 2` for byte-level vocabularies.

Expected calibration error (Guo et al., "On Calibration of Modern Neural Networks", 2017), with
confidence c = max softmax probability and 15 equal-width bins B_m = ((m-1)/15, m/15]::

    ECE = sum_m |B_m| / n * | accuracy(B_m) - mean confidence(B_m) |

Example::

    from modelscale.measure.quality import evaluate_quality
    report = evaluate_quality(model, loader, task="classification")
    print(report.accuracy, report.top5, report.loss, report.ece)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from modelscale.core.errors import ModelscaleError
from modelscale.measure._common import (
    inputs_for,
    logits_of,
    prepared,
    resolve_device,
    resolve_dtype,
)
from modelscale.measure._report import Report

TASKS = ("classification", "lm")
ECE_BINS = 15


@dataclass
class QualityReport(Report):
    """Metrics of one model on one dataset (mean over predictions: examples, or tokens for "lm")."""

    task: str
    examples: int  # examples seen
    predictions: int  # predictions scored (= examples, or tokens for "lm")
    loss: float  # mean cross-entropy, nats
    accuracy: float
    top5: float  # top-k accuracy with k = min(5, classes); see `topk`
    topk: int
    ece: float  # expected calibration error, `ece_bins` equal-width confidence bins
    ece_bins: int = ECE_BINS
    bits_per_byte: float | None = None  # "lm" only: loss / ln 2


def check_task(task: str) -> None:
    if task not in TASKS:
        raise ModelscaleError(f"unknown task {task!r}; valid: {', '.join(TASKS)}")


def expected_calibration_error(
    confidences: torch.Tensor, correct: torch.Tensor, n_bins: int = ECE_BINS
) -> float:
    """ECE of predictions with `confidences` in [0, 1] and boolean `correct`, equal-width bins."""
    counts, conf_sum, correct_sum = _bin_stats(confidences, correct, n_bins)
    n = counts.sum()
    if n == 0:
        return float("nan")
    return float(((conf_sum - correct_sum).abs() / n).sum())


def _bin_stats(
    confidences: torch.Tensor, correct: torch.Tensor, n_bins: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    conf = confidences.detach().double().flatten().cpu()
    hit = correct.detach().double().flatten().cpu()
    idx = (torch.ceil(conf * n_bins).long() - 1).clamp(0, n_bins - 1)  # bin m holds ((m-1)/n, m/n]
    counts = torch.zeros(n_bins, dtype=torch.float64).index_add_(0, idx, torch.ones_like(conf))
    conf_sum = torch.zeros(n_bins, dtype=torch.float64).index_add_(0, idx, conf)
    correct_sum = torch.zeros(n_bins, dtype=torch.float64).index_add_(0, idx, hit)
    return counts, conf_sum, correct_sum


def flatten_predictions(
    logits: torch.Tensor, targets: torch.Tensor, task: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, C) logits and (N,) targets: one row per example, or per token for "lm"."""
    if task == "lm":
        if logits.dim() != 3 or targets.dim() != 2:
            raise ModelscaleError(
                f"task 'lm' needs outputs (B, T, V) and targets (B, T); got {tuple(logits.shape)} and "
                f"{tuple(targets.shape)}"
            )
        logits, targets = logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)
        keep = targets >= 0
        return logits[keep], targets[keep]
    if logits.dim() != 2 or targets.dim() != 1:
        raise ModelscaleError(
            f"task 'classification' needs outputs (B, C) and targets (B,); got {tuple(logits.shape)} and "
            f"{tuple(targets.shape)}; for sequence outputs use task='lm'"
        )
    return logits, targets


class QualityAccumulator:
    """Running sums of loss, hits and calibration bins over batches; `result()` gives the report."""

    def __init__(self, task: str, topk: int = 5, n_bins: int = ECE_BINS) -> None:
        check_task(task)
        self.task, self.k, self.n_bins = task, topk, n_bins
        self.examples = self.n = 0
        self.loss_sum = self.hits = self.topk_hits = 0.0
        self.used_k = topk
        self.bins = [torch.zeros(n_bins, dtype=torch.float64) for _ in range(3)]

    def update(self, output: Any, targets: torch.Tensor) -> None:
        logits, y = flatten_predictions(logits_of(output).float(), targets, self.task)
        self.examples += int(targets.shape[0])
        if y.numel() == 0:
            return
        self.n += int(y.numel())
        self.loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
        probs = logits.softmax(dim=-1)
        conf, pred = probs.max(dim=-1)
        hit = pred == y
        self.hits += float(hit.sum())
        self.used_k = min(self.k, logits.shape[-1])
        top = logits.topk(self.used_k, dim=-1).indices
        self.topk_hits += float((top == y[:, None]).any(dim=-1).sum())
        for acc, new in zip(self.bins, _bin_stats(conf, hit, self.n_bins)):
            acc += new

    def result(self) -> QualityReport:
        if self.n == 0:
            raise ModelscaleError(
                "the loader yielded no predictions to score; check the dataset is not empty"
            )
        counts, conf_sum, correct_sum = self.bins
        loss = self.loss_sum / self.n
        return QualityReport(
            task=self.task,
            examples=self.examples,
            predictions=self.n,
            loss=loss,
            accuracy=self.hits / self.n,
            top5=self.topk_hits / self.n,
            topk=self.used_k,
            ece=float(((conf_sum - correct_sum).abs() / counts.sum()).sum()),
            ece_bins=self.n_bins,
            bits_per_byte=loss / math.log(2) if self.task == "lm" else None,
        )


def iter_batches(loader: Iterable[Any], max_batches: int | None = None) -> Iterator[tuple[Any, torch.Tensor]]:
    """(inputs, targets) from a loader yielding (x, y) pairs (x a tensor or a tuple of tensors)."""
    if isinstance(loader, torch.utils.data.Dataset) and not isinstance(loader, Iterable):
        raise ModelscaleError("pass a DataLoader (or any iterable of (x, y) batches), not a Dataset")
    for i, batch in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            return
        if not isinstance(batch, tuple | list) or len(batch) < 2:
            raise ModelscaleError("the loader must yield (inputs, targets) batches")
        yield batch[0], batch[1]


def evaluate_quality(
    model: nn.Module,
    loader: Iterable[Any],
    *,
    task: str = "classification",
    device: str = "cpu",
    dtype: torch.dtype | str | None = None,
    max_batches: int | None = None,
) -> QualityReport:
    """Score `model` on every (x, y) batch of `loader` (the model is left as it was)."""
    check_task(task)
    dev = resolve_device(device)
    dt = resolve_dtype(dtype)
    acc = QualityAccumulator(task)
    with prepared(model, dev, dt) as ready, torch.no_grad():
        for x, y in iter_batches(loader, max_batches):
            acc.update(ready(*inputs_for(ready, x, dev, dt)), y.to(dev))
    return acc.result()
