"""Start a command on N local processes with `torchrun` (`modelscale train --nproc N`), and end a rank.

`torchrun_command(argv, n)` is `python -m torch.distributed.run --standalone --nproc_per_node=n -m
modelscale <argv without --nproc>`: each process is one rank of a single-machine job (rendezvous on
a free local port). Under torchrun `fit` joins the process group itself (gloo on CPU, NCCL on CUDA).
For several machines run torchrun yourself on each one (see the README):

    torchrun --nnodes 2 --node-rank R --nproc-per-node 8 --rdzv-backend c10d \\
        --rdzv-endpoint HOST:29500 --rdzv-id job1 -m modelscale train gpt --data pystdlib --parallel fsdp ...

Example::

    from modelscale.train.launch import launch
    launch(["train", "gpt", "--data", "pystdlib", "--out", "m", "--parallel", "fsdp"], nproc=2)
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence

from modelscale.core.errors import ModelscaleError


def is_rank_process() -> bool:
    """True inside a process started by torchrun (it sets WORLD_SIZE)."""
    return "WORLD_SIZE" in os.environ


def is_main_rank() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def strip_option(argv: Sequence[str], option: str) -> list[str]:
    """`argv` without `option VALUE` / `option=VALUE`."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == option:
            skip = True
            continue
        if arg.startswith(option + "="):
            continue
        out.append(arg)
    return out


def torchrun_command(argv: Sequence[str], nproc: int) -> list[str]:
    if isinstance(nproc, bool) or not isinstance(nproc, int) or nproc < 1:
        raise ModelscaleError(f"--nproc must be an integer >= 1, got {nproc!r}")
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "modelscale",
        *strip_option(argv, "--nproc"),
    ]


def launch(argv: Sequence[str], nproc: int) -> int:
    """Run the modelscale command `argv` on `nproc` local processes; returns torchrun's exit code."""
    return subprocess.run(torchrun_command(argv, nproc), check=False).returncode


def finish_rank() -> None:
    """Wait for every rank, then leave the process group (call once a command's work is done)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
