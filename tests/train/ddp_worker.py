"""Run by test_ddp.py under `python -m torch.distributed.run --nproc_per_node=2`: train, save each rank's weights."""

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from modelscale.train import TrainConfig, fit  # noqa: E402
from tests.train._digits import digits_bundle, mlp  # noqa: E402

CONFIGS = {
    "plain": dict(batch_size=64),
    "accum": dict(batch_size=32, grad_accum=2),
}
COMMON = dict(
    epochs=2,
    optimizer="sgd",
    lr=0.1,
    momentum=0.9,
    schedule="cosine",
    warmup_steps=3,
    grad_clip=5.0,
    device="cpu",
    progress=False,
    seed=3,
)


def main(out: Path, checkpoint_dir: str | None) -> None:
    torch.set_num_threads(1)
    data = digits_bundle(n_train=640, n_val=200)
    for name, extra in CONFIGS.items():
        model = mlp(seed=0)
        ckpt = checkpoint_dir if name == "plain" else None
        result = fit(model, data, TrainConfig(**COMMON, **extra, checkpoint_dir=ckpt))
        rank = result.to_dict()
        torch.save(model.state_dict(), out / f"{name}-rank{torch.distributed.get_rank()}.pt")
        (out / f"{name}-rank{torch.distributed.get_rank()}.json").write_text(json.dumps(rank))
    # Both ranks finish every collective before either tears gloo down (a race there aborts a worker).
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else None)
