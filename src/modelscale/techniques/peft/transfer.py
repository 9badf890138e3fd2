"""Transfer-learning helper: keep only some classes of a classification bundle, relabelled 0..k−1.

Used to build a source task and a disjoint target task from one dataset (e.g. digits 0–4 to
pretrain, digits 5–9 to adapt). Every split (train/val/test) is filtered the same way, so the
held-out splits stay disjoint from training.

`adapt(pretrained, data, method, config)` runs one transfer method on a copy of a pretrained model
with a fresh (seeded) head and returns a row: trainable/total params, test accuracy, training time.
Methods: "frozen_random_head" (the untrained baseline), "linear_probe", "bitfit", "adapters",
"lora", "full" (every parameter trains).

Example::

    from modelscale.data import load_data
    from modelscale.techniques.peft.transfer import adapt, split_by_classes
    digits = load_data("digits")
    source, target = split_by_classes(digits, range(5)), split_by_classes(digits, range(5, 10))
    target.num_classes, target.meta["classes"]        # 5, [5, 6, 7, 8, 9]
    adapt(pretrained, target, "lora", TrainConfig(epochs=10, lr=1e-2))["test_accuracy"]
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from modelscale.core.errors import ModelscaleError
from modelscale.data.bundle import DataBundle
from modelscale.data.datasets import ArrayDataset

METHODS = ("frozen_random_head", "linear_probe", "bitfit", "adapters", "lora", "full")
# AdamW learning rates that work for each method on small image tasks (few trainable tensors want more).
SUGGESTED_LR = {"linear_probe": 3e-2, "bitfit": 1e-2, "adapters": 1e-2, "lora": 1e-2, "full": 3e-3}


class Relabeled(Dataset):
    """Items `indices` of `base`, with labels mapped through `mapping` (old label -> new label)."""

    def __init__(self, base: Dataset, indices: list[int], mapping: dict[int, int]) -> None:
        self.base, self.indices, self.mapping = base, indices, mapping

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.base[self.indices[i]]
        return x, torch.tensor(self.mapping[int(y)], dtype=torch.int64)


def _filter(ds: Dataset, mapping: dict[int, int]) -> Dataset:
    if isinstance(ds, ArrayDataset):
        lookup = torch.full((int(ds.y.max()) + 1,), -1, dtype=torch.int64)
        for old, new in mapping.items():
            if old < lookup.numel():
                lookup[old] = new
        keep = ds.indices[lookup[ds.y[ds.indices]] >= 0]
        new_y = lookup[ds.y.clamp(min=0)]
        return ArrayDataset(ds.x, new_y, keep, scale=ds.scale, augment=ds.augment, seed=ds.seed)
    labels = [int(ds[i][1]) for i in range(len(ds))]  # type: ignore[arg-type]
    return Relabeled(ds, [i for i, y in enumerate(labels) if y in mapping], mapping)


def split_by_classes(bundle: DataBundle, classes: Iterable[int]) -> DataBundle:
    """A bundle with only the examples of `classes`, relabelled 0..k−1 in the order given."""
    if bundle.task != "classification":
        raise ModelscaleError(f"split_by_classes needs a classification bundle, got task {bundle.task!r}")
    chosen = [int(c) for c in classes]
    if not chosen or len(set(chosen)) != len(chosen):
        raise ModelscaleError(f"classes must be distinct class indices, got {chosen}")
    bad = [c for c in chosen if not 0 <= c < bundle.num_classes]
    if bad:
        raise ModelscaleError(f"classes {bad} are outside 0..{bundle.num_classes - 1} of {bundle.name!r}")
    mapping = {old: new for new, old in enumerate(chosen)}
    names = bundle.meta.get("class_names")
    meta = {**bundle.meta, "classes": chosen, "parent_num_classes": bundle.num_classes}
    if isinstance(names, list | tuple) and len(names) == bundle.num_classes:
        meta["class_names"] = [names[c] for c in chosen]
    splits = {k: _filter(getattr(bundle, k), mapping) for k in ("train", "val", "test")}
    meta["split_sizes"] = {k: len(v) for k, v in splits.items()}  # type: ignore[arg-type]
    return dataclasses.replace(
        bundle,
        name=f"{bundle.name}[classes={','.join(map(str, chosen))}]",
        num_classes=len(chosen),
        meta=meta,
        **splits,
    )


def _method_config(method: str, *, lora_rank: int, bottleneck: int) -> Any:
    from modelscale.techniques.peft.adapters import BottleneckAdapterConfig
    from modelscale.techniques.peft.bitfit import BitFitConfig
    from modelscale.techniques.peft.lora import LoRAConfig
    from modelscale.techniques.peft.probe import LinearProbeConfig

    return {
        "linear_probe": LinearProbeConfig(),
        "bitfit": BitFitConfig(),
        "adapters": BottleneckAdapterConfig(bottleneck=bottleneck),
        "lora": LoRAConfig(rank=lora_rank, alpha=2.0 * lora_rank),
    }.get(method)


def adapt(
    pretrained: nn.Module,
    data: DataBundle,
    method: str,
    config: Any = None,
    *,
    seed: int = 0,
    lora_rank: int = 4,
    bottleneck: int = 8,
) -> dict[str, Any]:
    """Adapt a copy of `pretrained` to `data` with `method`; its head is replaced by a fresh seeded Linear.

    Returns {"method", "trainable_params", "total_params", "test_accuracy", "train_seconds",
    "train_cpu_seconds"} (the times cover `fit` only).
    """
    from modelscale.core.apply import apply
    from modelscale.techniques.peft._common import param_summary, replace_head
    from modelscale.train import TrainConfig, evaluate, fit

    if method not in METHODS:
        raise ModelscaleError(f"unknown transfer method {method!r}; valid options: {', '.join(METHODS)}")
    model = copy.deepcopy(pretrained)
    replace_head(model, data.num_classes, seed=seed)
    technique = _method_config(method, lora_rank=lora_rank, bottleneck=bottleneck)
    if technique is not None:
        model = apply(model, technique, inplace=True).model
    else:  # the baseline trains nothing; full fine-tuning trains everything
        for p in model.parameters():
            p.requires_grad_(method == "full")
    counts = param_summary(model)
    seconds = cpu_seconds = 0.0
    if method != "frozen_random_head":
        start, cpu_start = time.perf_counter(), time.process_time()
        fit(model, data, TrainConfig() if config is None else config)
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    device = next(model.parameters()).device
    return {
        "method": method,
        "trainable_params": int(counts["trainable_params"]),
        "total_params": int(counts["total_params"]),
        "test_accuracy": evaluate(model, data.test, device=device)["accuracy"],
        "train_seconds": seconds,
        "train_cpu_seconds": cpu_seconds,
    }
