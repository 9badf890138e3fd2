"""Fully sharded data parallel training (FSDP2, `torch.distributed.fsdp.fully_shard`) for `fit`.

With `TrainConfig(parallel="fsdp")` under `torchrun`, every process keeps only its 1/N slice of each
parameter, gradient and optimizer state (sharded on dim 0). Before a block runs, its parameters are
all-gathered; after its forward (and backward) they are freed again; gradients are reduce-scattered.
Per-rank state is therefore about P·(4 + s)/N bytes instead of DDP's P·(4 + s) (s = optimizer state
bytes per parameter: 8 for AdamW), plus the one block being computed.

Wrapping policy (`block_modules`): the outermost repeated blocks of the model — children of an
`nn.ModuleList`/`nn.Sequential` that holds two or more parameterised modules of one class. That is
the transformer blocks of `gpt` and of `hf:` models (`encoder.layer`, `h`, `layers`), the stages of
the zoo `cnn`, the residual blocks of torchvision ResNets. Each block is one `fully_shard` unit; the
root takes what is left (embeddings, heads, norms).

Options: `fsdp_dtype="bf16"` all-gathers parameters and reduce-scatters gradients in bf16 (the
sharded master weights and the optimizer stay fp32); `cpu_offload=True` keeps shards, gradients and
the optimizer step on the CPU; `activation_checkpointing=True` recomputes each block's activations
in backward instead of storing them (also without FSDP).

`fit` shards the user's model in place and, when training ends, gathers the full weights and turns
the model back into a plain module (`unshard`): callers always get their own model class back.

Example::

    # torchrun --nproc_per_node=2 train.py
    result = fit(model, data, TrainConfig(parallel="fsdp", batch_size=64, activation_checkpointing=True))
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from modelscale.core.errors import ModelscaleError
from modelscale.train.distributed import DistInfo


def block_modules(model: nn.Module) -> list[nn.Module]:
    """The outermost repeated blocks of `model` (one FSDP unit / checkpointed region each)."""
    units: list[nn.Module] = []
    inside: list[str] = []
    for name, module in model.named_modules():
        if any(name == p or name.startswith(p + ".") for p in inside):
            continue
        if not isinstance(module, nn.ModuleList | nn.Sequential):
            continue
        kids = [(n, c) for n, c in module.named_children() if any(True for _ in c.parameters())]
        if len(kids) >= 2 and len({type(c) for _, c in kids}) == 1:
            for child_name, child in kids:
                units.append(child)
                inside.append(f"{name}.{child_name}" if name else child_name)
    return units


# --- activation checkpointing --------------------------------------------------------------------------
def checkpoint_blocks(model: nn.Module) -> int:
    """Recompute each block's forward in backward (non-reentrant `torch.utils.checkpoint`).

    Sets an instance `forward` on each block (names and state dicts are unchanged); `Snapshot.restore`
    or `uncheckpoint_blocks` removes it. Returns the number of blocks."""
    from torch.utils.checkpoint import checkpoint

    blocks = block_modules(model)
    if not blocks:
        raise ModelscaleError(
            f"activation_checkpointing found no repeated blocks in {type(model).__name__}; "
            "set activation_checkpointing=False"
        )
    for block in blocks:
        block.forward = functools.partial(checkpoint, block.forward, use_reentrant=False)
    return len(blocks)


def uncheckpoint_blocks(model: nn.Module) -> None:
    for block in block_modules(model):
        block.__dict__.pop("forward", None)


# --- snapshot: what fully_shard changes on each module, so that `unshard` can undo it ------------------
@dataclass
class Snapshot:
    """Each module's class, instance attributes and hook ids before sharding."""

    entries: list[tuple[nn.Module, type, set[str], dict[str, set[Any]]]] = field(default_factory=list)

    @classmethod
    def take(cls, model: nn.Module) -> Snapshot:
        snap = cls()
        for module in model.modules():
            hooks = {k: set(v) for k, v in vars(module).items() if "hook" in k and isinstance(v, dict)}
            snap.entries.append((module, type(module), set(vars(module)), hooks))
        return snap

    def restore(self) -> None:
        """Drop the hooks and attributes added since `take` and give each module its class back."""
        from torch.distributed.fsdp import FSDPModule

        for module, cls, attrs, hooks in self.entries:
            for key, ids in hooks.items():
                d = vars(module).get(key)
                if isinstance(d, dict):
                    for hook_id in [k for k in d if k not in ids]:
                        del d[hook_id]
            for key in [k for k in vars(module) if k not in attrs]:
                del vars(module)[key]
            if isinstance(module, FSDPModule) and type(module) is not cls:
                module.__class__ = cls
            _forget_fsdp_state(module)


def _forget_fsdp_state(module: nn.Module) -> None:
    """fully_shard keeps a weak module → state map; drop the entry so the module can be sharded again."""
    try:
        from torch.distributed import _composable_state as cs
    except ImportError:  # pragma: no cover - layout of older/newer torch
        return
    mapping = getattr(cs, "_module_state_mapping", None)
    if mapping is not None:
        mapping.pop(module, None)


# --- sharding --------------------------------------------------------------------------------------------
def shard(model: nn.Module, config: Any, device: torch.device, info: DistInfo) -> Snapshot:
    """fully_shard each block, then the root, in place; returns what `unshard` needs to undo it."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard

    snapshot = Snapshot.take(model)
    if config.activation_checkpointing:
        checkpoint_blocks(model)
    mesh = init_device_mesh(device.type, (info.world_size,))
    if config.fsdp_dtype == "bf16":
        mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.bfloat16)
    else:
        mp = MixedPrecisionPolicy()
    # On a CPU run the shards live on the CPU already: offloading is a no-op (and torch's offload
    # policy pins host memory, which needs CUDA).
    offload = CPUOffloadPolicy() if config.cpu_offload and device.type != "cpu" else OffloadPolicy()
    for block in block_modules(model):
        fully_shard(block, mesh=mesh, mp_policy=mp, offload_policy=offload)
    fully_shard(model, mesh=mesh, mp_policy=mp, offload_policy=offload)
    return snapshot


def reshard_all(model: nn.Module) -> None:
    from torch.distributed.fsdp import FSDPModule

    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


def unshard(model: nn.Module, snapshot: Snapshot, info: DistInfo, device: torch.device) -> None:
    """Gather the full weights on every rank and make `model` a plain module again (collective)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from torch.distributed.tensor import DTensor

    reshard_all(model)
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
    snapshot.restore()
    made: dict[int, nn.Parameter] = {}
    for module_name, module in model.named_modules(remove_duplicate=False):
        for name, p in list(module._parameters.items()):
            if not isinstance(p, DTensor):
                continue
            if id(p) not in made:
                key = f"{module_name}.{name}" if module_name else name
                if key not in full:
                    raise ModelscaleError(f"FSDP state dict has no entry {key!r}; cannot unshard the model")
                made[id(p)] = nn.Parameter(full[key].to(device), requires_grad=p.requires_grad)
            module._parameters[name] = made[id(p)]
    broadcast_buffers(model, info)


def broadcast_buffers(model: nn.Module, info: DistInfo) -> None:
    """Rank 0's buffers (BatchNorm statistics) on every rank, as DDP keeps them."""
    import torch.distributed as dist

    if not info.enabled:
        return
    for buf in model.buffers():
        if buf.is_floating_point() or buf.dtype in (torch.int64, torch.int32):  # bool masks agree already
            dist.broadcast(buf, src=0)


@contextlib.contextmanager
def gradient_sync(model: nn.Module, enabled: bool) -> Iterator[None]:
    """FSDP's `no_sync`: without sync, gradients accumulate unreduced until the closing micro-batch."""
    if enabled:
        yield
        return
    model.set_requires_gradient_sync(False)  # type: ignore[operator]
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)  # type: ignore[operator]


class EqualBatches:
    """Every rank runs the same number of forwards (FSDP all-gathers in each): short shards add
    empty batches, which add nothing to the evaluation sums."""

    def __init__(self, loader: Any, info: DistInfo, device: torch.device) -> None:
        import torch.distributed as dist

        self.loader = loader
        n = torch.tensor([len(loader)], device=device)
        if info.enabled:
            dist.all_reduce(n, op=dist.ReduceOp.MAX)
        self.batches = int(n.item())

    def __len__(self) -> int:
        return self.batches

    def __iter__(self) -> Iterator[Any]:
        first = None
        count = 0
        for x, y in self.loader:
            first = (x, y) if first is None else first
            count += 1
            yield x, y
        if first is None:
            raise ModelscaleError("this rank's validation shard is empty; give a larger validation split")
        for _ in range(self.batches - count):
            yield first[0][:0], first[1][:0]


def local_state_bytes(model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> dict[str, int]:
    """Bytes this process holds for parameters and optimizer state (a DTensor counts its local shard).

    FSDP modules are resharded first, so all-gathered copies left by a forward are not counted."""
    reshard_all(model)

    def nbytes(t: Any) -> int:
        local = t.to_local() if hasattr(t, "to_local") else t
        return int(local.numel() * local.element_size()) if isinstance(local, torch.Tensor) else 0

    seen: set[int] = set()
    params = 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            params += nbytes(p)
    opt = 0
    if optimizer is not None:
        for state in optimizer.state.values():
            opt += sum(nbytes(v) for v in state.values() if isinstance(v, torch.Tensor) and v.ndim > 0)
    return {"params": params, "optimizer": opt, "total": params + opt}


def check_supported(config: Any) -> None:
    """Refuse combinations that cannot work, with the fix."""
    if config.amp == "fp16":
        raise ModelscaleError(
            "parallel='fsdp' with amp='fp16' is not supported (the grad scaler does not see other "
            "ranks' shards); use fsdp_dtype='bf16' or amp='bf16'"
        )
