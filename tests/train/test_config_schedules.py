import math

import pytest
import torch

from modelscale.core.errors import ModelscaleError
from modelscale.train import TrainConfig, build_scheduler, lr_factor


def test_defaults_and_round_trip():
    cfg = TrainConfig()
    assert (cfg.epochs, cfg.batch_size, cfg.optimizer, cfg.lr, cfg.schedule) == (
        10,
        64,
        "adamw",
        1e-3,
        "cosine",
    )
    assert (
        cfg.grad_clip is None
        and cfg.patience is None
        and cfg.max_steps is None
        and cfg.checkpoint_dir is None
    )
    d = cfg.to_dict()
    assert d["type"] == "train" and d["version"] == 1
    other = TrainConfig(epochs=3, optimizer="sgd", lr=1, grad_clip=1.0, patience=2, checkpoint_dir="x")
    again = TrainConfig.from_dict(other.to_dict())
    assert again == other and isinstance(again.lr, float)
    assert TrainConfig.from_dict({"type": "train", "epochs": 2}).epochs == 2


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"epochs": 0}, "epochs"),
        ({"batch_size": 1.5}, "batch_size"),
        ({"lr": 0.0}, "lr"),
        ({"optimizer": "adam"}, "sgd, adamw"),
        ({"schedule": "linear"}, "constant, cosine, step"),
        ({"amp": "fp8"}, "none, bf16, fp16"),
        ({"monitor": "acc"}, "val_accuracy"),
        ({"label_smoothing": 1.0}, "label_smoothing"),
        ({"grad_clip": 0.0}, "grad_clip"),
        ({"grad_accum": 0}, "grad_accum"),
        ({"patience": 0}, "patience"),
        ({"max_steps": 0}, "max_steps"),
        ({"device": "tpu"}, "cuda:<index>"),
        ({"resume": True}, "checkpoint_dir"),
        ({"nesterov": True}, "sgd"),
        ({"momentum": 1.0}, "momentum"),
    ],
)
def test_bad_values_raise_one_line_errors(kwargs, words):
    with pytest.raises(ModelscaleError) as info:
        TrainConfig(**kwargs)
    assert words in str(info.value) and "\n" not in str(info.value)


def test_unknown_field_is_rejected():
    with pytest.raises(ModelscaleError, match="unknown field"):
        TrainConfig.from_dict({"type": "train", "epoch": 3})


def _lrs(schedule, steps, **kw):
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=2.0)
    sched = build_scheduler(opt, schedule, total_steps=steps, **kw)
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        if sched is not None:
            sched.step()
    return out


def test_cosine_with_warmup_known_values():
    lrs = _lrs("cosine", 110, warmup_steps=10)
    assert lrs[0] == pytest.approx(2.0 * 1 / 10)
    assert lrs[4] == pytest.approx(2.0 * 5 / 10)
    assert lrs[9] == pytest.approx(2.0)  # warm-up ends at the peak
    assert lrs[10] == pytest.approx(2.0)  # cosine starts at the peak
    assert lrs[60] == pytest.approx(1.0)  # half-way through the cosine: half the peak
    assert lrs[35] == pytest.approx(2.0 * 0.5 * (1 + math.cos(math.pi * 0.25)))
    assert lrs[109] == pytest.approx(2.0 * 0.5 * (1 + math.cos(math.pi * 99 / 100)))
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))  # non-increasing after warm-up
    assert lrs == pytest.approx(
        [2.0 * lr_factor(s, "cosine", total_steps=110, warmup_steps=10) for s in range(110)]
    )


def test_step_and_constant_schedules():
    lrs = _lrs("step", 30, warmup_steps=2, step_size=10, gamma=0.5)
    assert lrs[:2] == pytest.approx([1.0, 2.0])
    assert lrs[2] == lrs[11] == pytest.approx(2.0)
    assert lrs[12] == lrs[21] == pytest.approx(1.0)
    assert lrs[22] == pytest.approx(0.5)
    assert _lrs("constant", 5) == [2.0] * 5
    p = torch.nn.Parameter(torch.zeros(1))
    assert build_scheduler(torch.optim.SGD([p], lr=1.0), "constant", total_steps=5) is None
    with pytest.raises(ModelscaleError, match="constant, cosine, step"):
        lr_factor(0, "exp", total_steps=5)
