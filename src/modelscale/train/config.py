"""`TrainConfig`: every knob of `fit` as one validated, serializable dataclass.

Example::

    from modelscale.train import TrainConfig
    cfg = TrainConfig(epochs=20, optimizer="sgd", lr=0.05, momentum=0.9, schedule="cosine", warmup_steps=50)
    TrainConfig.from_dict(cfg.to_dict()) == cfg   # round-trips through JSON/YAML
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar, Literal

from modelscale.core.config import Config, check_range, param
from modelscale.core.errors import ModelscaleError

# Upper bounds: a value past these is a typo (1e20 epochs), never a plan.
MAX_COUNTS = {
    "epochs": 100_000,
    "batch_size": 1 << 20,
    "grad_accum": 1 << 16,
    "step_size": 10**9,
    "warmup_steps": 10**9,
    "max_steps": 10**9,
    "patience": 100_000,
}


@dataclass(kw_only=True)
class TrainConfig(Config):
    """How to train a model: optimizer, schedule, regularization, precision, stopping, checkpoints."""

    type: ClassVar[str] = "train"
    version: ClassVar[int] = 1

    epochs: int = param(10, "passes over the training split (the schedule spans all of them)")
    batch_size: int = param(64, "examples per micro-batch, summed over all processes under DDP")
    optimizer: Literal["sgd", "adamw"] = param("adamw", "sgd (with momentum) or adamw")
    lr: float = param(1e-3, "peak learning rate (reached after the warm-up)")
    momentum: float = param(0.9, "SGD momentum; AdamW uses it as beta1")
    nesterov: bool = param(False, "Nesterov momentum for SGD (needs momentum > 0)")
    weight_decay: float = param(
        0.0, "decoupled weight decay on weight matrices and kernels (not biases or norms)"
    )
    schedule: Literal["constant", "cosine", "step"] = param(
        "cosine", "learning-rate schedule, applied per optimizer step"
    )
    warmup_steps: int = param(0, "optimizer steps of linear warm-up from lr/warmup_steps to lr")
    step_size: int = param(1000, "step schedule: optimizer steps between decays")
    gamma: float = param(0.1, "step schedule: factor applied to the lr at each decay")
    label_smoothing: float = param(
        0.0, "classification: weight moved from the true class to a uniform target"
    )
    grad_clip: float | None = param(None, "clip the global gradient norm to this value; None to disable")
    grad_accum: int = param(
        1, "micro-batches accumulated per optimizer step (effective batch = batch_size × this)"
    )
    amp: Literal["none", "bf16", "fp16"] = param(
        "none", "mixed precision autocast: bf16 (CPU or CUDA) or fp16 (CUDA)"
    )
    patience: int | None = param(
        None, "stop after this many epochs without improvement of `monitor`; None trains all epochs"
    )
    monitor: Literal["val_accuracy", "val_loss"] = param(
        "val_accuracy", "validation metric for early stopping"
    )
    restore_best: bool = param(True, "with patience set: end with the weights of the best validation epoch")
    seed: int = param(0, "seed for torch, numpy, random and the data order")
    deterministic: bool = param(False, "use deterministic algorithms (bit-reproducible runs, maybe slower)")
    max_steps: int | None = param(
        None, "stop after this many optimizer steps (the schedule ends there); None for no cap"
    )
    device: str = param("auto", "auto (cuda when available), cpu, cuda or cuda:<index>")
    progress: bool = param(True, "show a progress bar (only on a terminal and on rank 0)")
    checkpoint_dir: str | None = param(None, "folder for the per-epoch checkpoint last.pt; None writes none")
    resume: bool = param(False, "continue from checkpoint_dir/last.pt when it exists")
    parallel: Literal["ddp", "fsdp"] = param(
        "ddp", "under torchrun: ddp (replicas) or fsdp (FSDP2: params, grads, optimizer sharded)"
    )
    fsdp_dtype: Literal["fp32", "bf16"] = param(
        "fp32", "fsdp: dtype of all-gathered params and reduced grads (shards stay fp32)"
    )
    cpu_offload: bool = param(False, "fsdp: keep shards, grads and the optimizer step on the CPU")
    activation_checkpointing: bool = param(
        False, "recompute each block's activations in backward instead of storing them"
    )
    compile: bool = param(
        False, "train through torch.compile (first-step compile time recorded; eager if compiling fails)"
    )
    compile_mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = param(
        "default", "torch.compile mode when compile is set"
    )

    def validate(self) -> None:
        for name in ("epochs", "batch_size", "grad_accum", "step_size"):
            _check_int(name, getattr(self, name), 1)
        _check_int("warmup_steps", self.warmup_steps, 0)
        _check_int("seed", self.seed, 0)
        if self.patience is not None:
            _check_int("patience", self.patience, 1)
        if self.max_steps is not None:
            _check_int("max_steps", self.max_steps, 1)
        for name, cap in MAX_COUNTS.items():
            value = getattr(self, name)
            if value is not None and value > cap:
                raise ModelscaleError(f"{name} must be <= {cap:,}, got {value:,}; use a realistic value")
        check_range("lr", self.lr, 0.0)
        if self.lr <= 0:
            raise ModelscaleError(f"lr must be > 0, got {self.lr}")
        check_range("momentum", self.momentum, 0.0, 1.0, hi_open=True)
        check_range("weight_decay", self.weight_decay, 0.0)
        check_range("gamma", self.gamma, 0.0, 1.0)
        if self.gamma <= 0:
            raise ModelscaleError(f"gamma must be > 0, got {self.gamma}")
        check_range("label_smoothing", self.label_smoothing, 0.0, 1.0, hi_open=True)
        if self.grad_clip is not None:
            check_range("grad_clip", self.grad_clip, 0.0)
            if self.grad_clip <= 0:
                raise ModelscaleError(f"grad_clip must be > 0 or None, got {self.grad_clip}")
        if self.nesterov and (self.optimizer != "sgd" or self.momentum <= 0):
            raise ModelscaleError(
                "nesterov needs optimizer='sgd' and momentum > 0; set nesterov=False or change them"
            )
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device):
            raise ModelscaleError(f"device must be auto, cpu, cuda or cuda:<index>; got {self.device!r}")
        if self.parallel != "fsdp" and (self.fsdp_dtype != "fp32" or self.cpu_offload):
            raise ModelscaleError("fsdp_dtype and cpu_offload need parallel='fsdp'; set parallel='fsdp'")
        if self.resume and not self.checkpoint_dir:
            raise ModelscaleError("resume=True needs checkpoint_dir; set checkpoint_dir to the run's folder")


def _check_int(name: str, value: int, lo: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ModelscaleError(f"{name} must be an integer, got {value!r}")
    if value < lo:
        raise ModelscaleError(f"{name} must be >= {lo}, got {value}")
