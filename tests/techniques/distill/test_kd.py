"""Distillation loss: hand computation, T² scaling, frozen teacher, per-token LM loss, feature hints."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from modelscale.core.errors import ModelscaleError
from modelscale.data.bundle import DataBundle
from modelscale.models import build_model
from modelscale.techniques.distill import DistillConfig, Distiller, distill, kd_loss, soft_loss
from modelscale.train import TrainConfig, fit

TRAIN = {"batch_size": 32, "progress": False, "device": "cpu", "seed": 0}


def _hand_kd(s, t, y, alpha, temp):
    """The formula written out with explicit sums, in float64, one example at a time."""
    total_soft, total_hard = 0.0, 0.0
    for si, ti, yi in zip(s.tolist(), t.tolist(), y.tolist(), strict=True):
        zs = sum(math.exp(v / temp) for v in si)
        zt = sum(math.exp(v / temp) for v in ti)
        ps = [math.exp(v / temp) / zs for v in si]
        pt = [math.exp(v / temp) / zt for v in ti]
        total_soft += sum(a * (math.log(a) - math.log(b)) for a, b in zip(pt, ps, strict=True))
        total_hard += -math.log(math.exp(si[yi]) / sum(math.exp(v) for v in si))
    n = len(y)
    return alpha * total_hard / n + (1 - alpha) * temp**2 * total_soft / n


def test_kd_loss_matches_hand_computation():
    s = torch.tensor([[1.0, -0.5, 2.0], [0.3, 0.2, -1.0]])
    t = torch.tensor([[2.0, 0.0, 1.0], [-0.4, 1.5, 0.1]])
    y = torch.tensor([2, 1])
    for alpha, temp in [(0.5, 4.0), (0.0, 2.0), (0.9, 1.0)]:
        got = kd_loss(s, t, y, alpha=alpha, temperature=temp)
        assert got.item() == pytest.approx(_hand_kd(s, t, y, alpha, temp), rel=1e-5)
    assert kd_loss(s, s, y, alpha=0.0, temperature=3.0).item() == pytest.approx(0.0, abs=1e-7)
    # A given hard loss replaces the CE term (how the trainer's label-smoothed loss enters).
    hard = torch.tensor(10.0)
    soft = soft_loss(s, t, 4.0)
    assert kd_loss(s, t, alpha=0.25, temperature=4.0, hard_loss=hard).item() == pytest.approx(
        0.25 * 10.0 + 0.75 * soft.item()
    )


def test_t_squared_keeps_soft_gradients_on_one_scale():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(16, 10, generator=g)
    t = torch.randn(16, 10, generator=g)
    s = (s - s.mean(dim=1, keepdim=True)).requires_grad_(True)
    t = t - t.mean(dim=1, keepdim=True)
    norms = {}
    for temp in (10.0, 20.0):
        (grad,) = torch.autograd.grad(soft_loss(s, t, temp), s)
        norms[temp] = grad.norm().item()
        # Without T² the gradient would shrink as 1/T²: the soft loss is T²·KL by construction.
        kl = soft_loss(s, t, temp) / temp**2
        (raw,) = torch.autograd.grad(kl, s)
        assert raw.norm().item() == pytest.approx(norms[temp] / temp**2, rel=1e-5)
    # High-temperature limit: T²·KL ≈ ‖s − t‖² / (2·K·N), whose gradient does not depend on T.
    assert norms[20.0] == pytest.approx(norms[10.0], rel=0.05)


def _digits_small() -> DataBundle:
    from modelscale.data import load_data

    return load_data("digits", seed=0, data_fraction=0.15)


def test_teacher_frozen_and_unchanged_after_training():
    data = _digits_small()
    torch.manual_seed(0)
    teacher = build_model("cnn", num_classes=10, input_shape=(1, 8, 8), width=0.25).train()
    student = build_model("cnn", num_classes=10, input_shape=(1, 8, 8), width=0.25, depth=1.0)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}  # includes BN running stats
    student_before = [p.detach().clone() for p in student.parameters()]
    result = distill(student, teacher, data, TrainConfig(epochs=1, **TRAIN), DistillConfig())
    assert result.steps > 0 and math.isfinite(result.history[-1]["train_loss"])
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert all(not p.requires_grad and p.grad is None for p in teacher.parameters())
    assert not teacher.training
    assert any(not torch.equal(a, b) for a, b in zip(student_before, student.parameters(), strict=True))


def test_lm_per_token_with_zoo_gpt():
    torch.manual_seed(0)
    teacher = build_model("gpt", block_size=16, n_layer=2, n_head=2, n_embd=32)
    student = build_model("gpt", block_size=16, n_layer=1, n_head=2, n_embd=32, width=0.5)
    x = torch.randint(0, 256, (3, 16))
    y = torch.roll(x, -1, dims=1)
    distiller = Distiller(teacher, alpha=0.3, temperature=2.0, task="lm")
    s_logits = student(x)
    hard = nn.functional.cross_entropy(s_logits.reshape(-1, 256), y.reshape(-1))
    got = distiller.compute_loss(None, s_logits, x, y, hard)
    with torch.no_grad():
        t_logits = teacher(x)
    # Per token: the mean over all B·T positions of each position's KL.
    p_t = torch.softmax(t_logits.double() / 2.0, -1)
    log_ratio = torch.log_softmax(t_logits.double() / 2.0, -1) - torch.log_softmax(
        s_logits.double() / 2.0, -1
    )
    per_token = (p_t * log_ratio).sum(-1)
    assert per_token.shape == (3, 16)
    expected = 0.3 * hard.double() + 0.7 * 4.0 * per_token.mean()
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)
    got.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert student.lm_head.weight.grad is not None


def test_lm_distill_runs_on_text():
    from modelscale.data import load_data

    data = load_data("pystdlib", block_size=32, max_bytes=40_000)
    torch.manual_seed(0)
    teacher = build_model("gpt", block_size=32, n_layer=1, n_head=2, n_embd=32)
    student = build_model("gpt", block_size=32, n_layer=1, n_head=2, n_embd=32, width=0.5)
    result = distill(student, teacher, data, TrainConfig(epochs=1, max_steps=5, **TRAIN), DistillConfig())
    assert result.steps == 5 and math.isfinite(result.history[-1]["train_loss"])


def test_feature_hints_projection_trains_and_is_removed():
    data = _digits_small()
    torch.manual_seed(0)
    teacher = build_model("cnn", num_classes=10, input_shape=(1, 8, 8), width=0.5)
    student = build_model("cnn", num_classes=10, input_shape=(1, 8, 8), width=0.25)
    pairs = {"features.1": "features.1", "pool": "pool"}
    distiller = Distiller(teacher, alpha=0.5, temperature=4.0, features=pairs, feature_weight=1.0)
    x = torch.stack([data.train[i][0] for i in range(4)])
    distiller.attach(student, x)
    projections = student.distill_projections
    conv, linear = projections["features__1"], projections["pool"]
    assert isinstance(conv, nn.Conv2d) and (conv.in_channels, conv.out_channels) == (16, 32)
    assert isinstance(linear, nn.Linear) and (linear.in_features, linear.out_features) == (32, 64)
    before = conv.weight.detach().clone()
    fit(student, data, TrainConfig(epochs=1, **TRAIN), callbacks=[distiller])
    assert not torch.equal(conv.weight, before)  # the projection was in the optimizer
    distiller.detach(student)
    assert not hasattr(student, "distill_projections")
    assert not any(k.startswith("distill_projections") for k in student.state_dict())

    # Equal widths need no projection; distill() attaches and detaches by itself.
    same = build_model("cnn", num_classes=10, input_shape=(1, 8, 8), width=0.5)
    config = DistillConfig(feature_pairs={"features.2": "features.2"}, feature_weight=0.5)
    distill(same, teacher, data, TrainConfig(epochs=1, max_steps=2, **TRAIN), config)
    assert not hasattr(same, "distill_projections")


def test_feature_hints_must_be_attached_before_fit():
    data = _digits_small()
    teacher = build_model("cnn", num_classes=10, input_shape=(1, 8, 8), width=0.25)
    student = build_model("cnn", num_classes=10, input_shape=(1, 8, 8), width=0.25)
    distiller = Distiller(teacher, features={"features.0": "features.0"})
    with pytest.raises(ModelscaleError, match="attach"):
        fit(student, data, TrainConfig(epochs=1, **TRAIN), callbacks=[distiller])
    with pytest.raises(ModelscaleError, match="no layer"):
        Distiller(teacher, features={"nope": "features.0"}).attach(student, torch.rand(2, 1, 8, 8))


def test_config_round_trip_and_validation():
    config = DistillConfig(alpha=0.2, temperature=3.0, feature_pairs={"a.b": "c"}, feature_weight=0.5)
    assert DistillConfig.from_dict(config.to_dict()) == config
    assert config.to_dict()["type"] == "distill"
    with pytest.raises(ModelscaleError, match="alpha"):
        DistillConfig(alpha=1.5)
    with pytest.raises(ModelscaleError, match="temperature"):
        DistillConfig(temperature=0.0)
    with pytest.raises(ModelscaleError, match="task"):
        Distiller(nn.Linear(2, 2), task="seq2seq")
