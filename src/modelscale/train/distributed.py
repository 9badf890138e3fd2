"""Data-parallel training under `torchrun`: detect the launch, join the process group, shard the data.

`torchrun --nproc_per_node=N script.py` sets WORLD_SIZE, RANK and LOCAL_RANK; `fit` then joins the
process group (gloo on CPU, nccl on GPU; left open for later `fit` calls), wraps the model in
DistributedDataParallel and gives each process `batch_size // N` examples per step, so the global
batch is `batch_size`. `DistributedSampler` deals the same seeded permutation that a single process
walks through: at step k the N shards together hold exactly that process's batch k.

Example (one line per process, launched by torchrun)::

    result = fit(model, data, TrainConfig(batch_size=64))   # 32 per process with N=2
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.utils.data import Dataset, Subset

from modelscale.core.errors import ModelscaleError


@dataclass(frozen=True)
class DistInfo:
    world_size: int = 1
    rank: int = 0
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def detect() -> DistInfo:
    """Read the torchrun environment; a plain process is world size 1."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise ModelscaleError(
            "WORLD_SIZE, RANK and LOCAL_RANK must be integers; launch with torchrun"
        ) from None
    return DistInfo(world_size=world, rank=rank, local_rank=local)


def setup(info: DistInfo, device: torch.device) -> None:
    """Join the default process group unless this process already has one."""
    if not info.enabled or dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend, world_size=info.world_size, rank=info.rank)


def per_process_batch(batch_size: int, info: DistInfo) -> int:
    if batch_size % info.world_size:
        raise ModelscaleError(
            f"batch_size {batch_size} is not divisible by the {info.world_size} processes; "
            f"use a multiple of {info.world_size}"
        )
    return batch_size // info.world_size


def eval_shard(dataset: Dataset, info: DistInfo) -> Dataset:
    """Every world_size-th example from `rank`: disjoint shards that cover the split exactly once."""
    if not info.enabled:
        return dataset
    return Subset(dataset, range(info.rank, len(dataset), info.world_size))  # type: ignore[arg-type]


def all_sum(values: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum a tensor over all processes (identity for one process)."""
    if info.enabled:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def any_true(flag: bool, info: DistInfo, device: torch.device) -> bool:
    """True on every process when it is true on any (so all stop together)."""
    if not info.enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def barrier(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.barrier()
