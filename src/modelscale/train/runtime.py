"""Run setup for `fit`: device choice, autocast, optimizer, seeding and deterministic mode.

Example::

    device = resolve_device("auto", detect())        # cuda when available, else cpu
    with deterministic(True):
        ...                                          # bit-reproducible kernels; settings restored after
"""

from __future__ import annotations

import contextlib
import functools
import os
import random
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from modelscale.core.errors import ModelscaleError
from modelscale.train.config import TrainConfig
from modelscale.train.distributed import DistInfo


def resolve_device(name: str, info: DistInfo) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ModelscaleError(
                f"device {name!r} asked for but CUDA is not available; use device='cpu' or 'auto'"
            )
        if name == "cuda":
            return torch.device("cuda", info.local_rank if info.enabled else torch.cuda.current_device())
    return torch.device(name)


def autocast_fn(amp: str, device: torch.device) -> Callable[[], Any]:
    if amp == "none":
        return contextlib.nullcontext
    if amp == "fp16" and device.type != "cuda":
        raise ModelscaleError("amp='fp16' needs a CUDA device; use amp='bf16' on CPU or amp='none'")
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return functools.partial(torch.autocast, device_type=device.type, dtype=dtype)


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """SGD or AdamW; weight decay only on tensors with >= 2 dims (weights, kernels, embeddings)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ModelscaleError("the model has no trainable parameters; unfreeze some (requires_grad=True)")
    if config.weight_decay > 0:
        groups: Any = [
            {"params": [p for p in params if p.ndim >= 2], "weight_decay": config.weight_decay},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
        ]
        groups = [g for g in groups if g["params"]]
    else:
        groups = [{"params": params, "weight_decay": 0.0}]
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov)
    return torch.optim.AdamW(groups, lr=config.lr, betas=(config.momentum, 0.999))


def seed_everything(seed: int, *, cuda: bool = False) -> None:
    """Seed Python, numpy and torch's CPU generator, and the CUDA generators when `cuda`.

    (`torch.manual_seed` would also queue lazy seeding of every accelerator backend, which records
    a stack trace each time: about a millisecond per call on CPU-only runs.)
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.default_generator.manual_seed(seed)
    if cuda:
        torch.cuda.manual_seed_all(seed)


@contextlib.contextmanager
def deterministic(enabled: bool) -> Any:
    """Deterministic algorithms for the duration of the run; the previous settings come back after."""
    if not enabled:
        yield
        return
    before = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
    )
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = before[2], before[3]
