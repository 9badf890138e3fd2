"""End-to-end training on real data (scikit-learn's digits, Python's own source as bytes)."""

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from modelscale.core.errors import ModelscaleError
from modelscale.data.bundle import DataBundle
from modelscale.train import TrainConfig, evaluate, fit
from tests.train._digits import cnn, digits_bundle, mlp


@pytest.fixture(scope="module")
def digits():
    return digits_bundle()


def test_digits_cnn_reaches_97_percent(digits):
    model = cnn()
    cfg = TrainConfig(
        epochs=15, lr=3e-3, weight_decay=1e-4, warmup_steps=10, progress=False, deterministic=True
    )
    result = fit(model, digits, cfg)
    test = evaluate(model, digits.test)
    assert test["accuracy"] >= 0.97, test
    assert test["top5"] >= test["accuracy"]
    assert len(result.history) == 15 and result.steps == result.total_steps == 15 * math.ceil(1100 / 64)
    row = result.history[-1]
    assert set(row) >= {"epoch", "step", "train_loss", "val_loss", "val_accuracy", "val_top5", "lr", "time"}
    assert result.history[0]["train_loss"] > 3 * row["train_loss"]
    assert result.metrics["val_accuracy"] == row["val_accuracy"]
    assert result.to_dict()["config"]["epochs"] == 15


def test_zoo_model_and_loader_integration():
    from modelscale.data import load_data
    from modelscale.models import build_model

    data = load_data("digits")
    torch.manual_seed(0)
    model = build_model("cnn", num_classes=data.num_classes, input_shape=data.input_shape, width=0.25)
    fit(model, data, TrainConfig(epochs=4, lr=3e-3, progress=False))
    assert evaluate(model, data.test)["accuracy"] >= 0.9


def test_evaluate_matches_a_direct_computation(digits):
    model = mlp(seed=3)
    x = torch.stack([digits.test[i][0] for i in range(len(digits.test))])
    y = torch.stack([digits.test[i][1] for i in range(len(digits.test))])
    with torch.no_grad():
        logits = model(x)
    got = evaluate(model, digits.test, batch_size=50)
    assert got["loss"] == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-5)
    assert got["accuracy"] == pytest.approx((logits.argmax(1) == y).float().mean().item())
    top5 = (logits.topk(5, dim=1).indices == y[:, None]).any(1).float().mean().item()
    assert got["top5"] == pytest.approx(top5)
    with pytest.raises(ModelscaleError, match="classification, lm"):
        evaluate(model, digits.test, task="seg")


def test_early_stopping_restores_best_weights(digits):
    small = DataBundle(
        "digits",
        "classification",
        torch.utils.data.Subset(digits.train, range(120)),
        digits.val,
        digits.test,
        10,
        (1, 8, 8),
    )
    model = mlp(seed=0, hidden=256)
    cfg = TrainConfig(
        epochs=60,
        optimizer="sgd",
        lr=0.5,
        schedule="constant",
        patience=3,
        monitor="val_loss",
        batch_size=16,
        progress=False,
    )
    result = fit(model, small, cfg)
    assert result.stopped_early and result.epochs < 60
    assert result.best_epoch == result.epochs - 3
    losses = [r["val_loss"] for r in result.history]
    assert result.best_metric == min(losses)
    assert losses[-1] > result.best_metric  # the last epoch was worse: restoring changes the weights
    assert evaluate(model, small.val, device=None)["loss"] == pytest.approx(
        result.best_metric, rel=1e-6, abs=0
    )
    assert result.metrics["val_loss"] == result.best_metric


def test_grad_accumulation_matches_larger_batch(digits):
    common = dict(epochs=2, optimizer="sgd", momentum=0.0, lr=0.1, schedule="constant", progress=False)
    a, b = mlp(seed=1), mlp(seed=1)
    fit(a, digits, TrainConfig(batch_size=64, **common))
    fit(b, digits, TrainConfig(batch_size=32, grad_accum=2, **common))
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, atol=1e-6, rtol=1e-5, msg=name)
    assert not torch.equal(a[1].weight.cpu(), mlp(seed=1)[1].weight)


def test_masks_stay_zero_through_training(digits):
    from modelscale.techniques.prune.masks import attach_mask

    model = cnn(seed=2)
    masks = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            masks[name] = torch.rand(m.weight.shape, generator=torch.Generator().manual_seed(len(name))) > 0.5
            attach_mask(m, masks[name])
    before = {n: m.weight.detach().clone() for n, m in model.named_modules() if n in masks}
    fit(model, digits, TrainConfig(epochs=2, lr=3e-3, progress=False))
    for name, m in model.named_modules():
        if name in masks:
            assert torch.count_nonzero(m.weight[~masks[name]]) == 0, name
            assert not torch.equal(m.weight.cpu()[masks[name]], before[name][masks[name]]), name
    assert evaluate(model, digits.test)["accuracy"] > 0.8


class _Recorder:
    def __init__(self, stop_at_step=None):
        self.calls = {"on_train_begin": 0, "on_step_end": 0, "on_epoch_end": 0, "on_train_end": 0}
        self.stop_at_step = stop_at_step
        self.lrs = []

    def on_train_begin(self, state):
        self.calls["on_train_begin"] += 1
        assert state.step == 0 and state.total_steps > 0

    def on_step_end(self, state):
        self.calls["on_step_end"] += 1
        self.lrs.append(state.optimizer.param_groups[0]["lr"])
        if self.stop_at_step is not None and state.step >= self.stop_at_step:
            state.should_stop = True

    def on_epoch_end(self, state):
        self.calls["on_epoch_end"] += 1
        assert "val_accuracy" in state.metrics and state.history[-1]["epoch"] == state.epoch

    def on_train_end(self, state):
        self.calls["on_train_end"] += 1


def test_callback_hooks_are_called(digits):
    rec = _Recorder()
    result = fit(
        mlp(), digits, TrainConfig(epochs=2, max_steps=25, progress=False), callbacks=[rec, object()]
    )
    assert result.steps == result.total_steps == 25 and len(result.history) == 2
    assert rec.calls == {"on_train_begin": 1, "on_step_end": 25, "on_epoch_end": 2, "on_train_end": 1}
    stopper = _Recorder(stop_at_step=3)
    result = fit(mlp(), digits, TrainConfig(epochs=5, progress=False), callbacks=[stopper])
    assert result.steps == 3 and result.epochs == 1 and not result.stopped_early


def test_compute_loss_callback_changes_the_loss(digits):
    class Silence:  # a zero loss leaves plain SGD weights untouched
        def compute_loss(self, state, outputs, inputs, targets, loss):
            assert outputs.shape == (inputs.shape[0], 10)
            return loss * 0.0

    model = mlp(seed=4)
    start = [p.detach().clone() for p in model.parameters()]
    result = fit(
        model,
        digits,
        TrainConfig(epochs=1, optimizer="sgd", momentum=0.0, lr=0.5, progress=False),
        callbacks=[Silence()],
    )
    assert all(torch.equal(a, b.cpu()) for a, b in zip(start, model.parameters()))
    assert result.history[0]["train_loss"] == 0.0


def test_label_smoothing_is_the_training_loss(digits):
    class Check:
        def __init__(self):
            self.n = 0

        def compute_loss(self, state, outputs, inputs, targets, loss):
            expected = F.cross_entropy(outputs, targets, label_smoothing=0.2)
            torch.testing.assert_close(loss, expected)
            assert not torch.allclose(loss, F.cross_entropy(outputs, targets))
            self.n += 1
            return loss

    check = Check()
    fit(mlp(), digits, TrainConfig(epochs=1, label_smoothing=0.2, progress=False), callbacks=[check])
    assert check.n == math.ceil(1100 / 64)


def test_custom_loss_clip_and_bf16(digits):
    seen = []

    def loss_fn(outputs, targets):
        seen.append(outputs.dtype)
        return F.cross_entropy(outputs.float(), targets)

    model = mlp(seed=5)
    cfg = TrainConfig(epochs=5, lr=1e-2, amp="bf16", grad_clip=1.0, device="cpu", progress=False)
    fit(model, digits, cfg, loss_fn=loss_fn)
    assert torch.bfloat16 in seen  # the forward ran under bf16 autocast
    assert evaluate(model, digits.test)["accuracy"] > 0.85
    with pytest.raises(ModelscaleError, match="fp16"):
        fit(mlp(), digits, TrainConfig(amp="fp16", device="cpu", progress=False))


def test_input_errors(digits):
    with pytest.raises(ModelscaleError, match="DataBundle"):
        fit(mlp(), (digits.train, digits.val), TrainConfig(progress=False))
    no_val = DataBundle("digits", "classification", digits.train, None, digits.test, 10, (1, 8, 8))
    with pytest.raises(ModelscaleError, match="validation split"):
        fit(mlp(), no_val, TrainConfig(patience=2, progress=False))
    result = fit(mlp(), no_val, TrainConfig(epochs=1, progress=False))
    assert result.metrics == {} and "val_loss" not in result.history[0]
    frozen = mlp()
    frozen.requires_grad_(False)
    with pytest.raises(ModelscaleError, match="no trainable parameters"):
        fit(frozen, digits, TrainConfig(progress=False))


class _Bytes(Dataset):
    def __init__(self, data: bytes, block: int):
        self.t = torch.tensor(list(data), dtype=torch.int64)
        self.block = block

    def __len__(self):
        return (len(self.t) - 1) // self.block

    def __getitem__(self, i):
        s = i * self.block
        return self.t[s : s + self.block], self.t[s + 1 : s + self.block + 1]


class _Bigram(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(256, 32)
        self.out = nn.Linear(32, 256)

    def forward(self, x):
        return self.out(self.emb(x))


def test_language_model_task_on_python_source():
    text = Path(torch.__file__).with_name("functional.py").read_bytes()[:120_000]
    cut = int(len(text) * 0.9)
    train, val = _Bytes(text[:cut], 64), _Bytes(text[cut:], 64)
    data = DataBundle("text", "lm", train, val, val, 256, (64,))
    torch.manual_seed(0)
    model = _Bigram()
    before = evaluate(model, val, task="lm")
    assert before["bits_per_byte"] == pytest.approx(before["loss"] / math.log(2))
    result = fit(model, data, TrainConfig(epochs=3, lr=3e-2, batch_size=32, progress=False))
    after = evaluate(model, val, task="lm")
    assert set(after) == {"loss", "accuracy", "bits_per_byte"}
    assert after["bits_per_byte"] < 4.2 < before["bits_per_byte"]
    assert result.history[-1]["val_bits_per_byte"] == pytest.approx(after["bits_per_byte"])


def test_progress_bar_renders_live_loss_and_is_off_without_a_terminal():
    import io

    from rich.console import Console

    from modelscale.train.progress import TrainProgress, make_progress

    assert make_progress(False, 10) is None
    assert make_progress(True, 10) is None  # pytest captures stderr: not a terminal
    buf = io.StringIO()
    bar = TrainProgress(10, console=Console(file=buf, force_terminal=True, width=150))
    bar.step(3, 1, 2, torch.tensor(0.12345))
    bar.epoch({"epoch": 1, "step": 5, "val_accuracy": 0.875, "train_loss": 1.0})
    bar.close()
    text = buf.getvalue()
    assert "loss 0.1235" in text and "val_accuracy 0.8750" in text and "5/10" in text
