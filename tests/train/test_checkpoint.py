"""Checkpoints: safe to load without pickle, and a resumed run ends bit-identical to an uninterrupted one."""

import random

import numpy as np
import pytest
import torch

from modelscale.core.errors import ModelscaleError
from modelscale.core.io import load_torch
from modelscale.train import TrainConfig, fit
from modelscale.train.checkpoint import checkpoint_path, restore_rng, rng_state
from tests.train._digits import digits_bundle, mlp


class StopAfter:
    """Simulates an interruption: ends the run after `epochs` epochs (the checkpoint of that epoch stays)."""

    def __init__(self, epochs):
        self.epochs = epochs

    def on_epoch_end(self, state):
        if state.epoch >= self.epochs:
            state.should_stop = True


@pytest.fixture(scope="module")
def digits():
    return digits_bundle(n_train=640, n_val=200)


def _config(**kw):
    base = dict(
        epochs=4,
        batch_size=32,
        lr=3e-3,
        weight_decay=1e-2,
        schedule="cosine",
        warmup_steps=15,
        grad_clip=1.0,
        deterministic=True,
        seed=7,
        progress=False,
    )
    return TrainConfig(**{**base, **kw})


def test_resume_is_bit_identical_to_an_uninterrupted_run(digits, tmp_path):
    reference = mlp(seed=0, dropout=0.3)  # dropout: the RNG state must come back too
    ref_result = fit(reference, digits, _config())

    interrupted = mlp(seed=0, dropout=0.3)
    first = fit(interrupted, digits, _config(checkpoint_dir=str(tmp_path)), callbacks=[StopAfter(2)])
    assert first.epochs == 2 and first.steps == 2 * 20
    assert checkpoint_path(tmp_path).is_file()

    random.random(), np.random.rand(), torch.rand(3)  # disturb every RNG between the two halves
    resumed = mlp(seed=123, dropout=0.3)  # a fresh model with other weights: the checkpoint supplies them
    second = fit(resumed, digits, _config(checkpoint_dir=str(tmp_path), resume=True))

    assert second.resumed_from_epoch == 2 and second.epochs == 4 and second.steps == ref_result.steps == 80
    for (name, a), b in zip(reference.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    assert [r["train_loss"] for r in second.history] == [r["train_loss"] for r in ref_result.history]
    assert [r["lr"] for r in second.history] == [r["lr"] for r in ref_result.history]

    ckpt = load_torch(checkpoint_path(tmp_path))  # weights_only=True: no pickled code needed
    assert ckpt["done"] and ckpt["epoch"] == 4 and ckpt["step"] == 80
    assert set(ckpt) >= {"model", "optimizer", "scheduler", "scaler", "rng", "best", "history"}

    # a finished run resumes to the same weights without training further
    again = mlp(seed=5, dropout=0.3)
    third = fit(again, digits, _config(checkpoint_dir=str(tmp_path), resume=True))
    assert third.steps == 80 and third.history == second.history
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), resumed.state_dict().values()))


def test_resume_without_checkpoint_starts_fresh_and_mismatch_is_reported(digits, tmp_path):
    result = fit(mlp(), digits, _config(epochs=1, checkpoint_dir=str(tmp_path), resume=True))
    assert result.resumed_from_epoch is None and result.epochs == 1
    with pytest.raises(ModelscaleError, match="does not fit"):
        fit(mlp(hidden=32), digits, _config(epochs=2, checkpoint_dir=str(tmp_path), resume=True))
    with pytest.raises(ModelscaleError, match="schedule"):
        fit(
            mlp(),
            digits,
            _config(epochs=2, schedule="constant", warmup_steps=0, checkpoint_dir=str(tmp_path), resume=True),
        )


def test_early_stopping_state_survives_resume(digits, tmp_path):
    cfg = _config(epochs=6, patience=10, checkpoint_dir=str(tmp_path))
    ref = mlp(seed=1)
    ref_result = fit(ref, digits, _config(epochs=6, patience=10))
    part = mlp(seed=1)
    fit(part, digits, cfg, callbacks=[StopAfter(3)])
    ckpt = load_torch(checkpoint_path(tmp_path))
    assert ckpt["best"]["weights"] is not None and ckpt["best"]["epoch"] is not None
    done = mlp(seed=1)
    result = fit(done, digits, _config(epochs=6, patience=10, checkpoint_dir=str(tmp_path), resume=True))
    assert result.best_epoch == ref_result.best_epoch and result.best_metric == ref_result.best_metric
    assert all(torch.equal(a, b) for a, b in zip(ref.state_dict().values(), done.state_dict().values()))


def test_rng_state_round_trips_through_a_weights_only_file(tmp_path):
    from modelscale.core.io import save_torch

    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    save_torch(rng_state(), tmp_path / "rng.pt")
    expected = (random.random(), np.random.rand(), torch.rand(2))
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    restore_rng(load_torch(tmp_path / "rng.pt"))
    got = (random.random(), np.random.rand(), torch.rand(2))
    assert got[0] == expected[0] and got[1] == expected[1] and torch.equal(got[2], expected[2])


def test_corrupt_checkpoint_is_a_clear_error(digits, tmp_path):
    checkpoint_path(tmp_path).write_bytes(b"not a checkpoint")
    with pytest.raises(ModelscaleError, match="corrupt"):
        fit(mlp(), digits, _config(epochs=1, checkpoint_dir=str(tmp_path), resume=True))
