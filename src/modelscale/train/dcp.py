"""Distributed checkpoints (`torch.distributed.checkpoint`) for `fit(parallel="fsdp")`: sharded, atomic,
reshardable, exactly resumable.

Layout of `checkpoint_dir`::

    latest.json               {"format", "dir": "epoch-00003", "world_size", "epoch", "step"}
    epoch-00003/.metadata     DCP index: global shape and owner of every shard
    epoch-00003/__0_0.distcp  rank 0's shards of model, optimizer (and best) state; one file per rank
    epoch-00003/extra-rank0.pt  epoch, step, schedule, grad scaler, RNG, early stopping, history

Saving writes every rank's files into `.epoch-00003.tmp/`, waits for all ranks, renames the folder and
only then replaces `latest.json` (atomic rename) and deletes the older epoch: a crash at any moment
leaves `latest.json` pointing at a complete checkpoint. Loading reads `latest.json`; DCP maps the
saved shards onto however the current run is sharded, so a world-size-2 checkpoint loads at world size
1 (plain tensors) or 4. The RNG state is each rank's own when the world size is unchanged (exact
resume, dropout included); at another world size rank 0's is used on every rank.
`checkpoint_dir` must be a folder every node sees (a shared filesystem) for multi-node runs.

`load_model_weights(checkpoint_dir, model)` fills a plain model from the newest checkpoint without
any process group: the way from a sharded checkpoint to the usual `model.safetensors` folder.

Example::

    from modelscale.train.dcp import load_model_weights
    load_model_weights("runs/gpt/ckpt", model)       # then save_model_dir(...) as for any model
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from modelscale.core.errors import ModelscaleError
from modelscale.core.io import load_torch, save_torch, write_text
from modelscale.train.distributed import DistInfo, barrier

FORMAT = 1
LATEST = "latest.json"


def is_sharded_checkpoint(checkpoint_dir: str | Path) -> bool:
    return (Path(checkpoint_dir) / LATEST).is_file()


def _dcp() -> Any:
    import torch.distributed.checkpoint as dcp

    return dcp


def _process_group_kwargs() -> dict[str, Any]:
    import torch.distributed as dist

    return {} if dist.is_available() and dist.is_initialized() else {"no_dist": True}


def _call(fn: Any, state: dict[str, Any], folder: Path) -> None:
    """dcp.save / dcp.load; in one process without a process group (no_dist), without its warning."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*assuming the intent is to")
        fn(state, checkpoint_id=str(folder), **_process_group_kwargs())


def save(
    checkpoint_dir: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    extra: dict[str, Any],
    best_weights: dict[str, torch.Tensor] | None,
    info: DistInfo,
) -> Path:
    """Collective: every rank writes its shards, rank 0 publishes the folder (see the module doc)."""
    from torch.distributed.checkpoint.state_dict import get_state_dict

    root = Path(checkpoint_dir)
    name = f"epoch-{int(extra['epoch']):05d}"
    tmp, final = root / f".{name}.tmp", root / name
    if info.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier(info)
    model_sd, optim_sd = get_state_dict(model, optimizer)
    state: dict[str, Any] = {"model": model_sd, "optim": optim_sd}
    if best_weights is not None:
        state["best"] = best_weights
    _call(_dcp().save, state, tmp)
    save_torch({"format": FORMAT, **extra, "world_size": info.world_size}, tmp / f"extra-rank{info.rank}.pt")
    barrier(info)
    if info.is_main:
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        meta = {
            "format": FORMAT,
            "dir": name,
            "world_size": info.world_size,
            "epoch": int(extra["epoch"]),
            "step": int(extra["step"]),
        }
        write_text(root / LATEST, json.dumps(meta, indent=1))
        for old in root.glob("epoch-*"):
            if old.name != name and old.is_dir():
                shutil.rmtree(old, ignore_errors=True)
        for stale in root.glob(".epoch-*.tmp"):
            shutil.rmtree(stale, ignore_errors=True)
    barrier(info)
    return final


def latest(checkpoint_dir: str | Path) -> tuple[Path, dict[str, Any]]:
    root = Path(checkpoint_dir)
    try:
        meta = json.loads((root / LATEST).read_text())
        folder = root / str(meta["dir"])
    except (OSError, ValueError, KeyError, TypeError):
        raise ModelscaleError(f"{root / LATEST} is unreadable; delete {root} or set resume=False") from None
    if meta.get("format") != FORMAT or not (folder / ".metadata").is_file():
        raise ModelscaleError(
            f"{root / LATEST} names no complete distributed checkpoint; delete {root} or set resume=False"
        )
    return folder, meta


def load(
    checkpoint_dir: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer, info: DistInfo
) -> dict[str, Any]:
    """Load model and optimizer state in place (resharded as needed); return the extra payload with
    `best["weights"]` filled when the run kept best weights."""
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    folder, meta = latest(checkpoint_dir)
    same_world = int(meta.get("world_size", 1)) == info.world_size
    extra_file = folder / f"extra-rank{info.rank if same_world else 0}.pt"
    extra = load_torch(extra_file)
    if not isinstance(extra, dict) or extra.get("format") != FORMAT:
        raise ModelscaleError(f"{extra_file} is not a modelscale checkpoint; delete it or set resume=False")
    model_sd, optim_sd = get_state_dict(model, optimizer)  # initializes empty optimizer state
    state: dict[str, Any] = {"model": model_sd, "optim": optim_sd}
    keeps_best = bool(extra.get("best_has_weights"))
    if keeps_best:
        state["best"] = {k: torch.empty_like(v) for k, v in model.state_dict().items()}
    try:
        _call(_dcp().load, state, folder)
        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    except (RuntimeError, ValueError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelscaleError(
            f"{folder} does not fit this model or optimizer ({first[:200]}); "
            "resume with the same model and config"
        ) from None
    if keeps_best:
        extra["best"] = {**extra["best"], "weights": state["best"]}
    extra["resharded_from"] = None if same_world else int(meta.get("world_size", 1))
    return extra


def load_model_weights(checkpoint_dir: str | Path, model: nn.Module) -> nn.Module:
    """Fill a plain (unsharded) `model` from the newest distributed checkpoint; no process group needed."""
    folder, _ = latest(checkpoint_dir)
    target = {k: v for k, v in model.state_dict().items()}
    state = {"model": target}
    try:
        _call(_dcp().load, state, folder)
    except (RuntimeError, ValueError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelscaleError(
            f"{folder} does not fit this model ({first[:200]}); build the model the run trained"
        ) from None
    model.load_state_dict(state["model"])
    return model
