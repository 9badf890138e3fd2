"""`fit`: train a model on a `DataBundle` — one loop for classification and byte-level language models.

Per optimizer step: forward under autocast (bf16/fp16 when asked), loss = cross-entropy with label
smoothing (per token for "lm"; callbacks may change it), backward of loss / micro-batches, optional
gradient-norm clipping, optimizer step (SGD or AdamW), schedule step, `on_step_end` callbacks. Per
epoch: validation (sharded and summed over processes under DDP), history row, early-stopping
bookkeeping, `on_epoch_end` callbacks, an atomic checkpoint. The model is trained in place.

Example::

    from modelscale.data import load_data
    from modelscale.models import build_model
    from modelscale.train import TrainConfig, evaluate, fit
    data = load_data("digits"); model = build_model("cnn")
    result = fit(model, data, TrainConfig(epochs=20, lr=3e-3, patience=5))
    print(result.best_metric, evaluate(model, data.test)["accuracy"])
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

from modelscale.core.errors import ModelscaleError
from modelscale.data.bundle import DataBundle
from modelscale.train import dcp, fsdp
from modelscale.train import distributed as D
from modelscale.train.callbacks import CallbackList, TrainState
from modelscale.train.checkpoint import (
    checkpoint_path,
    load_checkpoint,
    restore_rng,
    rng_state,
    save_checkpoint,
)
from modelscale.train.config import TrainConfig
from modelscale.train.divergence import check_diverged
from modelscale.train.early_stopping import BestTracker
from modelscale.train.evaluate import TASKS, eval_sums, metrics_from_sums
from modelscale.train.losses import criterion as criterion_for
from modelscale.train.progress import make_progress
from modelscale.train.runtime import (
    autocast_fn,
    build_optimizer,
    deterministic,
    resolve_device,
    seed_everything,
)
from modelscale.train.schedules import build_scheduler

EVAL_BATCH = 256


@dataclass
class TrainResult:
    """What a run did. `metrics` are the validation metrics of the weights the model ends with."""

    history: list[dict[str, float]]
    metrics: dict[str, float]
    best_epoch: int | None
    best_metric: float | None
    monitor: str
    epochs: int  # epochs completed (including those before a resume)
    steps: int  # optimizer steps taken in total
    total_steps: int  # the length the schedule was planned for
    stopped_early: bool
    resumed_from_epoch: int | None
    seconds: float  # wall time of this call
    device: str
    world_size: int
    config: dict[str, Any] = field(default_factory=dict)
    compile: dict[str, Any] | None = None  # with config.compile: measure.compiled.CompileReport as a dict

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _check_data(data: Any) -> None:
    if not isinstance(data, DataBundle):
        raise ModelscaleError(
            f"fit needs a DataBundle, got {type(data).__name__}; build one with modelscale.data.load_data"
        )
    if data.task not in TASKS:
        raise ModelscaleError(f"unknown task {data.task!r}; valid options: {', '.join(TASKS)}")
    if data.train is None or len(data.train) == 0:  # type: ignore[arg-type]
        raise ModelscaleError(
            f"the train split of {data.name!r} is empty; give it at least one batch of examples"
        )


def _has_val(data: DataBundle) -> bool:
    return data.val is not None and len(data.val) > 0  # type: ignore[arg-type]


def fit(
    model: nn.Module,
    data: DataBundle,
    config: TrainConfig | None = None,
    *,
    callbacks: Iterable[Any] = (),
    loss_fn: Callable[[Any, torch.Tensor], torch.Tensor] | None = None,
) -> TrainResult:
    """Train `model` in place on `data.train`, validating on `data.val` each epoch.

    `loss_fn(outputs, targets) -> loss` replaces the cross-entropy used for training (validation
    always reports plain cross-entropy). Under `torchrun` the run is data-parallel (see distributed.py).
    """
    config = TrainConfig() if config is None else config
    if not isinstance(config, TrainConfig):
        raise ModelscaleError(f"config must be a TrainConfig, got {type(config).__name__}")
    _check_data(data)
    if config.patience is not None and not _has_val(data):
        raise ModelscaleError("patience needs a validation split; give data.val or set patience=None")
    info = D.detect()
    device = resolve_device(config.device, info)
    autocast = autocast_fn(config.amp, device)
    D.setup(info, device)
    with deterministic(config.deterministic):
        return _run(model, data, config, info, device, autocast, CallbackList(callbacks), loss_fn)


def _run(
    model: nn.Module,
    data: DataBundle,
    config: TrainConfig,
    info: D.DistInfo,
    device: torch.device,
    autocast: Callable[[], Any],
    cbs: CallbackList,
    loss_fn: Callable[[Any, torch.Tensor], torch.Tensor] | None,
) -> TrainResult:
    t_start = time.perf_counter()
    # No pinned memory: without loader workers, pinning is one more copy on the main thread.
    cuda = device.type == "cuda"
    seed_everything(config.seed + info.rank, cuda=cuda)
    model.to(device)
    sharded = config.parallel == "fsdp"  # DCP checkpoints at any world size; sharding from 2 processes
    snapshot = None
    if sharded and info.enabled:
        fsdp.check_supported(config)
        snapshot = fsdp.shard(model, config, device, info)
    elif config.activation_checkpointing:
        snapshot = fsdp.Snapshot.take(model)
        fsdp.checkpoint_blocks(model)
    sampler = DistributedSampler(
        data.train, num_replicas=info.world_size, rank=info.rank, shuffle=True, seed=config.seed
    )
    train_loader = DataLoader(
        data.train,
        batch_size=D.per_process_batch(config.batch_size, info),
        sampler=sampler,
        generator=torch.Generator().manual_seed(config.seed),
    )
    val_loader = (
        DataLoader(
            D.eval_shard(data.val, info),
            batch_size=EVAL_BATCH,
            shuffle=False,
            generator=torch.Generator().manual_seed(config.seed),  # iterators then leave the global RNG alone
        )
        if _has_val(data)
        else None
    )
    if val_loader is not None and sharded and info.enabled:
        val_loader = fsdp.EqualBatches(val_loader, info, device)  # type: ignore[assignment]
    batches = len(train_loader)
    accum = config.grad_accum
    steps_per_epoch = math.ceil(batches / accum)
    total_steps = config.epochs * steps_per_epoch
    if config.max_steps is not None:
        total_steps = min(total_steps, config.max_steps)

    optimizer = build_optimizer(model, config)
    scheduler = build_scheduler(
        optimizer,
        config.schedule,
        total_steps=total_steps,
        warmup_steps=config.warmup_steps,
        step_size=config.step_size,
        gamma=config.gamma,
    )
    scaler = torch.amp.GradScaler("cuda") if config.amp == "fp16" else None
    best = BestTracker(config)
    state = TrainState(
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        config=config,
        total_steps=total_steps,
        device=device,
        rank=info.rank,
        world_size=info.world_size,
        scaler=scaler,
    )
    start_epoch, resumed_from, done = 1, None, False
    ckpt_file = checkpoint_path(config.checkpoint_dir) if config.checkpoint_dir else None
    ckpt = None
    if config.resume and sharded and dcp.is_sharded_checkpoint(config.checkpoint_dir or ""):
        ckpt = dcp.load(config.checkpoint_dir, model, optimizer, info)  # type: ignore[arg-type]
        _load_training_state(ckpt, model, optimizer, scheduler, scaler, config.checkpoint_dir)
    elif config.resume and ckpt_file is not None and ckpt_file.is_file():
        ckpt = load_checkpoint(ckpt_file)
        _load_training_state(ckpt, model, optimizer, scheduler, scaler, ckpt_file)
    if ckpt is not None:
        restore_rng(ckpt["rng"])
        best.load(ckpt["best"])
        state.step, state.history = int(ckpt["step"]), list(ckpt["history"])
        state.epoch = resumed_from = int(ckpt["epoch"])
        state.metrics = {
            k: v for k, v in (state.history[-1] if state.history else {}).items() if k.startswith("val_")
        }
        start_epoch, done = resumed_from + 1, bool(ckpt["done"])

    net: nn.Module = model
    if info.enabled and not sharded:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if cuda else None)
    compiled = None
    if config.compile:  # the forward compiles at its first call (timed there); eager if that fails
        from modelscale.measure.compiled import GuardedCompile

        net = compiled = GuardedCompile(net, config.compile_mode)  # type: ignore[assignment]
    backward_guard = compiled.backward_guard if compiled is not None else contextlib.nullcontext
    criterion = loss_fn or criterion_for(data.task, config.label_smoothing)
    clip, last_lr = config.grad_clip, optimizer.param_groups[0]["lr"]
    bar = make_progress(config.progress and info.is_main, total_steps, state.step)
    first_loss: float | None = None
    first_raw = torch.zeros((), device=device)
    cbs.call("on_train_begin", state)
    try:
        for epoch in range(start_epoch, config.epochs + 1):
            if done or state.should_stop:
                break
            t_epoch = time.perf_counter()
            state.epoch = epoch
            sampler.set_epoch(epoch)
            net.train()
            loss_sum = torch.zeros((), device=device)
            micro = 0
            first_of_run = first_loss is None
            for i, (x, y) in enumerate(train_loader):
                group_start = i - i % accum
                group = min(accum, batches - group_start)
                closes_group = i - group_start == group - 1
                x = x.to(device, non_blocking=cuda)
                y = y.to(device, non_blocking=cuda)
                sync = contextlib.nullcontext()
                if info.enabled and not closes_group:
                    sync = fsdp.gradient_sync(net, False) if sharded else net.no_sync()
                with sync:
                    with autocast():
                        outputs = net(x)
                        loss = criterion(outputs, y)
                        if cbs.changes_loss:
                            loss = cbs.compute_loss(state, outputs, x, y, loss)
                    raw = loss.detach()
                    if first_of_run and micro == 0:
                        first_raw = raw.clone()
                    loss_sum += raw
                    micro += 1
                    if group > 1:
                        loss = loss / group
                    with backward_guard():
                        if scaler is not None:
                            scaler.scale(loss).backward()
                        else:
                            loss.backward()
                if not closes_group:
                    continue
                if scaler is not None:
                    if clip is not None:
                        scaler.unscale_(optimizer)
                        nn.utils.clip_grad_norm_(model.parameters(), clip)
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    if clip is not None:
                        nn.utils.clip_grad_norm_(model.parameters(), clip)
                    optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                if scheduler is not None:
                    last_lr = optimizer.param_groups[0]["lr"]
                    scheduler.step()
                state.step += 1
                if cbs.has_step_hooks:
                    cbs.call("on_step_end", state)
                if bar is not None:
                    bar.step(state.step, epoch, config.epochs, raw)
                if state.step >= total_steps or state.should_stop:
                    break
            if sharded:
                fsdp.broadcast_buffers(model, info)  # rank 0's BatchNorm statistics, as under DDP
            _end_epoch(state, best, data.task, val_loader, autocast, info, loss_sum, micro, last_lr, t_epoch)
            if first_of_run and micro:  # the first batch's loss of this run, averaged over ranks
                first_loss = float(D.all_sum(first_raw.double().reshape(1), info)[0]) / info.world_size
            check_diverged(
                model,
                train_loss=state.history[-1]["train_loss"],
                epoch=epoch,
                step=state.step,
                lr=config.lr,
                first_loss=first_loss,
            )
            if bar is not None:
                bar.epoch(state.history[-1])
            cbs.call("on_epoch_end", state)
            stop = D.any_true(state.should_stop or best.stopped or state.step >= total_steps, info, device)
            state.should_stop = stop
            done = best.stopped or state.step >= total_steps or epoch == config.epochs
            if sharded and config.checkpoint_dir:
                extra = _payload(state, best, scheduler, scaler, done, weights=False)
                dcp.save(config.checkpoint_dir, model, optimizer, extra, best.weights, info)
            elif ckpt_file is not None and info.is_main:
                save_checkpoint(ckpt_file, _payload(state, best, scheduler, scaler, done))
    finally:
        if bar is not None:
            bar.close()

    restored = best.weights is not None and best.epoch != state.epoch
    if restored:
        model.load_state_dict(best.weights)  # type: ignore[arg-type]
    if snapshot is not None:  # a plain module again: full weights on every rank, hooks removed
        if sharded and info.enabled:
            fsdp.unshard(model, snapshot, info, device)
        else:
            snapshot.restore()
    final_epoch = best.epoch if restored else state.epoch
    row = next((r for r in state.history if r["epoch"] == final_epoch), {})
    cbs.call("on_train_end", state)
    D.barrier(info)
    return TrainResult(
        history=state.history,
        metrics={k: v for k, v in row.items() if k.startswith("val_")},
        best_epoch=best.epoch,
        best_metric=best.value,
        monitor=config.monitor,
        epochs=state.epoch,
        steps=state.step,
        total_steps=total_steps,
        stopped_early=best.stopped,
        resumed_from_epoch=resumed_from,
        seconds=time.perf_counter() - t_start,
        device=str(device),
        world_size=info.world_size,
        config=config.to_dict(),
        compile=compiled.final_report().to_dict() if compiled is not None else None,
    )


def _end_epoch(
    state: TrainState,
    best: BestTracker,
    task: str,
    val_loader: DataLoader | None,
    autocast: Callable[[], Any],
    info: D.DistInfo,
    loss_sum: torch.Tensor,
    micro: int,
    lr: float,
    t_epoch: float,
) -> None:
    """Validate, append the history row and update the early-stopping record."""
    train = D.all_sum(torch.stack([loss_sum.double(), loss_sum.new_tensor(micro).double()]), info)
    total, count = train.tolist()
    metrics: dict[str, float] = {}
    if val_loader is not None:
        sums = D.all_sum(eval_sums(state.model, val_loader, state.device, autocast), info)
        metrics = {f"val_{k}": v for k, v in metrics_from_sums(sums, task).items()}
    state.metrics = metrics
    row = {
        "epoch": state.epoch,
        "step": state.step,
        "train_loss": total / max(count, 1),
        **metrics,
        "lr": lr,
        "time": time.perf_counter() - t_epoch,
    }
    state.history.append(row)
    best.update(state.epoch, metrics, state.model)


def _payload(
    state: TrainState, best: BestTracker, scheduler: Any, scaler: Any, done: bool, *, weights: bool = True
) -> dict[str, Any]:
    """The checkpoint's content; `weights=False` for a distributed checkpoint, where DCP stores the
    model, optimizer and best weights sharded and this is the rest."""
    payload = {
        "epoch": state.epoch,
        "step": state.step,
        "done": done,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "rng": rng_state(),
        "best": best.state(),
        "history": state.history,
        "config": state.config.to_dict(),
    }
    if not weights:
        payload["best"] = {**payload["best"], "weights": None}
        return {**payload, "best_has_weights": best.weights is not None}
    return {**payload, "model": state.model.state_dict(), "optimizer": state.optimizer.state_dict()}


def _load_training_state(
    ckpt: dict[str, Any], model: nn.Module, optimizer: Any, scheduler: Any, scaler: Any, path: Any
) -> None:
    if (ckpt["scheduler"] is None) != (scheduler is None) or (ckpt["scaler"] is None) != (scaler is None):
        raise ModelscaleError(
            f"{path} was written with a different schedule or amp setting; use the original config or resume=False"
        )
    try:
        if "model" in ckpt:  # (a distributed checkpoint has loaded them already)
            model.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
    except (RuntimeError, ValueError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelscaleError(
            f"{path} does not fit this model or optimizer ({first}); resume with the same model and config"
        ) from None
    if scheduler is not None:
        scheduler.load_state_dict(ckpt["scheduler"])
    if scaler is not None:
        scaler.load_state_dict(ckpt["scaler"])
