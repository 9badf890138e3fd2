"""Mixed precision and bit-exact resume on CUDA (skipped only when no CUDA device is present)."""

import pytest
import torch

from modelscale.train import TrainConfig, evaluate, fit
from tests.train._digits import cnn, digits_bundle, mlp
from tests.train.test_checkpoint import StopAfter

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def digits():
    return digits_bundle()


@pytest.mark.parametrize("amp, dtype", [("fp16", torch.float16), ("bf16", torch.bfloat16)])
def test_mixed_precision_on_cuda(digits, amp, dtype):
    seen = {}

    class Spy:
        def compute_loss(self, state, outputs, inputs, targets, loss):
            seen["dtype"], seen["device"], seen["scaler"] = outputs.dtype, outputs.device.type, state.scaler
            return loss

    model = cnn(seed=0)
    result = fit(
        model,
        digits,
        TrainConfig(epochs=15, lr=3e-3, amp=amp, grad_clip=1.0, progress=False),
        callbacks=[Spy()],
    )
    assert seen["dtype"] == dtype and seen["device"] == "cuda" and result.device.startswith("cuda")
    assert (seen["scaler"] is not None) == (amp == "fp16")
    assert evaluate(model, digits.test, device="cuda")["accuracy"] >= 0.96


def test_resume_is_bit_identical_on_cuda(digits, tmp_path):
    cfg = dict(
        epochs=4, batch_size=32, lr=3e-3, warmup_steps=10, deterministic=True, device="cuda", progress=False
    )
    ref = mlp(seed=0, dropout=0.3)
    fit(ref, digits, TrainConfig(**cfg))
    part = mlp(seed=0, dropout=0.3)
    fit(part, digits, TrainConfig(**cfg, checkpoint_dir=str(tmp_path)), callbacks=[StopAfter(2)])
    torch.cuda.manual_seed_all(99)  # disturb the CUDA RNG: the checkpoint must bring it back
    done = mlp(seed=1, dropout=0.3)
    fit(done, digits, TrainConfig(**cfg, checkpoint_dir=str(tmp_path), resume=True))
    for (name, a), b in zip(ref.state_dict().items(), done.state_dict().values()):
        assert torch.equal(a, b), name
