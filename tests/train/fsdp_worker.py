"""Run by test_fsdp.py under `python -m torch.distributed.run --nproc_per_node=2` (gloo on CPU).

`runs OUT` trains DDP, FSDP (checkpointing to OUT/ckpt), FSDP + activation checkpointing and FSDP
bf16 + grad accumulation, recording losses, each rank's state bytes and the weights; then it trains
FSDP again (checkpointing to OUT/killed) and SIGKILLs rank 1 mid-epoch 2, which ends the launch.
`resume OUT` relaunches that run with resume=True.
"""

import dataclasses
import functools
import json
import os
import signal
import sys
from pathlib import Path

import torch
from torch.utils.data import Subset

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from modelscale.data import load_data  # noqa: E402
from modelscale.models import build_model  # noqa: E402
from modelscale.train import TrainConfig, fit  # noqa: E402
from modelscale.train.fsdp import local_state_bytes  # noqa: E402

BLOCK = 32
KILL_AT_STEP = 10  # epoch 1 is steps 1-7 (its checkpoint is written); epoch 2 is under way
COMMON = dict(
    epochs=3,
    max_steps=20,
    batch_size=16,
    optimizer="adamw",
    lr=3e-3,
    weight_decay=0.01,
    warmup_steps=3,
    grad_clip=1.0,
    device="cpu",
    progress=False,
    seed=5,
)


@functools.cache
def data():
    """112 training sequences: 7 full global batches, so 1 and 2 processes see the same batches."""
    bundle = load_data("pystdlib", block_size=BLOCK, max_bytes=6_000)
    return dataclasses.replace(bundle, train=Subset(bundle.train, range(112)))


def gpt():
    torch.manual_seed(0)
    return build_model("gpt", block_size=BLOCK, n_layer=2, n_head=2, n_embd=32)


class StateBytes:
    """Records this rank's parameter + optimizer-state bytes while training runs (sharded under FSDP)."""

    def __init__(self):
        self.bytes = None

    def on_epoch_end(self, state):
        self.bytes = local_state_bytes(state.model, state.optimizer)


class KillRank1:
    def on_step_end(self, state):
        if state.rank == 1 and state.step == KILL_AT_STEP:
            os.kill(os.getpid(), signal.SIGKILL)


def _run(name, out, rank, callbacks=(), **extra):
    model = gpt()
    probe = StateBytes()
    result = fit(model, data(), TrainConfig(**{**COMMON, **extra}), callbacks=[probe, *callbacks])
    info = {
        "losses": [r["train_loss"] for r in result.history],
        "val_loss": result.history[-1]["val_loss"],
        "steps": result.steps,
        "resumed_from_epoch": result.resumed_from_epoch,
        "bytes": probe.bytes,
        "class": type(model).__name__,
        "param_types": sorted({type(p).__name__ for p in model.parameters()}),
    }
    (out / f"{name}-rank{rank}.json").write_text(json.dumps(info))
    torch.save(model.state_dict(), out / f"{name}-rank{rank}.pt")


def _compress_steps(out, rank):
    """prune -> FSDP fine-tune (masks kept by parametrization), and distillation under FSDP."""
    from modelscale.core.apply import apply
    from modelscale.techniques.distill import distill
    from modelscale.techniques.prune.magnitude import MagnitudePruneConfig

    cfg = TrainConfig(**{**COMMON, "max_steps": 6, "epochs": 1, "parallel": "fsdp"})
    pruned = apply(gpt(), MagnitudePruneConfig(amount=0.5), inplace=True).model

    def effective(model):  # the weights the model computes with (mask applied)
        return {
            n: m.weight.detach().clone() for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)
        }

    zeros = {n: w == 0 for n, w in effective(pruned).items()}
    before = effective(pruned)
    result = fit(pruned, data(), cfg)
    after = effective(pruned)
    kept = all(bool((after[n][z] == 0).all()) for n, z in zeros.items())
    changed = any(not torch.equal(after[n], before[n]) for n in after)
    student = gpt()
    kd = distill(student, gpt(), data(), cfg)
    info = {
        "pruned_steps": result.steps,
        "masks_kept": kept,
        "weights_changed": changed,
        "masked_layers": sum(int(z.any()) for z in zeros.values()),
        "pruned_class": type(pruned).__name__,
        "distill_steps": kd.steps,
        "distill_losses": [r["train_loss"] for r in kd.history],
    }
    (out / f"compress-rank{rank}.json").write_text(json.dumps(info))


def main(mode: str, out: Path) -> None:
    torch.set_num_threads(1)
    rank = int(os.environ["RANK"])
    killed = str(out / "killed")
    if mode == "runs":
        _run("ddp", out, rank, parallel="ddp")
        _run("fsdp", out, rank, parallel="fsdp", checkpoint_dir=str(out / "ckpt"))
        _run("fsdp_ac", out, rank, parallel="fsdp", activation_checkpointing=True)
        _run("fsdp_bf16", out, rank, parallel="fsdp", fsdp_dtype="bf16", grad_accum=2)
        _compress_steps(out, rank)
        (out / f"runs-done-rank{rank}").write_text("")
        _run("killed", out, rank, callbacks=[KillRank1()], parallel="fsdp", checkpoint_dir=killed)
    else:
        _run("resumed", out, rank, parallel="fsdp", checkpoint_dir=killed, resume=True)
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
