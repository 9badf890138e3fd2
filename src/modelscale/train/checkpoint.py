"""Training checkpoints: everything needed to continue a run bit-for-bit, loadable without pickle.

One file, `<checkpoint_dir>/last.pt`, rewritten atomically after every epoch: model, optimizer,
scheduler and grad-scaler states, the RNG states of torch (CPU and CUDA), numpy and Python, the
epoch and step counters, the best validation result so far (with its weights when early stopping
restores them) and the history. Everything is stored as tensors, numbers, strings, lists and dicts,
so `load_torch` reads it with `weights_only=True`.

Example::

    save_checkpoint(path, build_checkpoint(state, best=best, done=False))
    ckpt = load_checkpoint(path); restore_rng(ckpt["rng"])
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from modelscale.core.errors import ModelscaleError
from modelscale.core.io import load_torch, save_torch

FORMAT = 1
FILENAME = "last.pt"


def checkpoint_path(checkpoint_dir: str | Path) -> Path:
    return Path(checkpoint_dir) / FILENAME


def rng_state() -> dict[str, Any]:
    """RNG states of torch, CUDA, numpy and Python as tensors and plain lists."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": list(torch.cuda.get_rng_state_all()) if torch.cuda.is_initialized() else [],
        "numpy": {
            "name": str(name),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "python": {"version": int(version), "internal": [int(v) for v in internal], "gauss": gauss_next},
    }


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"].cpu())
    if state.get("cuda") and torch.cuda.is_available():
        for i, s in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(s.cpu(), i)
    npy = state["numpy"]
    np.random.set_state(
        (npy["name"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"], npy["cached"])
    )
    py = state["python"]
    random.setstate((py["version"], tuple(py["internal"]), py["gauss"]))


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write atomically: a crash mid-write leaves the previous checkpoint intact."""
    return save_torch({"format": FORMAT, **payload}, path)


def load_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    ckpt = load_torch(path, map_location=map_location)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT or "model" not in ckpt:
        raise ModelscaleError(
            f"{path} is not a modelscale training checkpoint; delete it or set resume=False"
        )
    return ckpt


def clone_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of the module's state dict (for keeping the best weights)."""
    return {k: v.detach().clone() for k, v in module.state_dict().items()}
