"""Evaluate a model on a dataset: mean cross-entropy, accuracy, top-5 (classification) or bits per byte (lm).

Classification: loss = mean over examples of −log softmax(z)_y; accuracy = share with argmax z = y;
top5 = share with y among the 5 largest logits (only with more than 5 classes: else it is always 1).
Language modelling (logits (B, T, V), targets (B, T)): the same per token, and
bits_per_byte = loss / ln 2 (each token is one byte).

Example::

    from modelscale.train import evaluate
    metrics = evaluate(model, data.test)           # {"loss": ..., "accuracy": ..., "top5": ...}
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from modelscale.core.errors import ModelscaleError
from modelscale.measure._common import logits_of  # noqa: F401 - the one reader of model outputs

TASKS = ("classification", "lm")


def eval_sums(
    model: nn.Module,
    loader: Any,
    device: torch.device,
    autocast: Callable[[], Any] = contextlib.nullcontext,
) -> torch.Tensor:
    """[loss sum, correct, top-5 correct, count] over `loader`, as a float64 tensor on `device`."""
    sums = torch.zeros(3, dtype=torch.float64, device=device)
    count = 0
    was_training = model.training
    model.eval()
    non_blocking = device.type == "cuda"
    try:
        with torch.no_grad():
            for x, y in loader:
                x = x.to(device, non_blocking=non_blocking)
                y = y.to(device, non_blocking=non_blocking)
                with autocast():
                    logits = logits_of(model(x))
                logits = logits.float().reshape(-1, logits.shape[-1])
                y = y.reshape(-1)
                hits = logits.topk(min(5, logits.shape[-1]), dim=-1).indices == y[:, None]
                # top-5 of 5 or fewer classes is always 1: NaN marks it as not reported
                top5 = hits.any(dim=-1).sum() if logits.shape[-1] > 5 else torch.tensor(float("nan"))
                sums += torch.stack(
                    [F.cross_entropy(logits, y, reduction="sum"), hits[:, 0].sum(), top5.to(hits.device)]
                ).double()
                count += y.numel()
    finally:
        model.train(was_training)
    return torch.cat([sums, sums.new_tensor([count])])


def metrics_from_sums(sums: torch.Tensor, task: str) -> dict[str, float]:
    loss_sum, correct, top5, count = sums.tolist()
    if count == 0:
        raise ModelscaleError("cannot evaluate on an empty dataset; give a split with at least one example")
    loss = loss_sum / count
    if task == "lm":
        return {"loss": loss, "accuracy": correct / count, "bits_per_byte": loss / math.log(2)}
    if math.isnan(top5):  # 5 or fewer classes: top-5 accuracy would be 1 by construction
        return {"loss": loss, "accuracy": correct / count}
    return {"loss": loss, "accuracy": correct / count, "top5": top5 / count}


def evaluate(
    model: nn.Module,
    dataset_or_loader: Dataset | DataLoader,
    *,
    task: str = "classification",
    batch_size: int = 256,
    device: str | torch.device | None = "cpu",
) -> dict[str, float]:
    """Metrics of `model` on a dataset or loader; the model is moved to `device` (None: where it is)."""
    if task not in TASKS:
        raise ModelscaleError(f"unknown task {task!r}; valid options: {', '.join(TASKS)}")
    if device is None:
        first = next(iter(model.parameters()), None)
        dev = first.device if first is not None else torch.device("cpu")
    else:
        dev = torch.device(device)
        model.to(dev)
    if isinstance(dataset_or_loader, DataLoader):
        loader = dataset_or_loader
    else:
        if batch_size < 1:
            raise ModelscaleError(f"batch_size must be >= 1, got {batch_size}")
        loader = DataLoader(dataset_or_loader, batch_size=batch_size, shuffle=False)
    return metrics_from_sums(eval_sums(model, loader, dev), task)
