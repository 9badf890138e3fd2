"""Data-parallel training: 2 CPU processes (gloo) end with identical replicas equal to one process."""

import json

import pytest
import torch

from modelscale.train import TrainConfig, fit
from tests.train._digits import digits_bundle, mlp
from tests.train.ddp_worker import COMMON, CONFIGS
from tests.train.torchrun import torchrun


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    ckpt = out / "ckpt"
    proc = torchrun("ddp_worker.py", str(out), str(ckpt), timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.mark.parametrize("name", list(CONFIGS))
def test_two_processes_match_one(ddp_run, name):
    ranks = [torch.load(ddp_run / f"{name}-rank{r}.pt", weights_only=True) for r in (0, 1)]
    for key in ranks[0]:
        assert torch.equal(ranks[0][key], ranks[1][key]), key  # replicas never drift apart
    single = mlp(seed=0)
    ref = fit(single, digits_bundle(n_train=640, n_val=200), TrainConfig(**COMMON, **CONFIGS[name]))
    start = mlp(seed=0).state_dict()
    for key, value in single.state_dict().items():
        torch.testing.assert_close(ranks[0][key], value, atol=1e-5, rtol=1e-5, msg=key)
        assert not torch.equal(value, start[key])
    info = [json.loads((ddp_run / f"{name}-rank{r}.json").read_text()) for r in (0, 1)]
    assert info[0]["world_size"] == 2 and info[0]["steps"] == ref.steps == 2 * 10
    assert info[0]["history"][-1]["val_accuracy"] == info[1]["history"][-1]["val_accuracy"]
    assert info[0]["history"][-1]["val_accuracy"] == pytest.approx(
        ref.history[-1]["val_accuracy"], abs=1 / 200
    )
    assert info[0]["history"][-1]["train_loss"] == pytest.approx(ref.history[-1]["train_loss"], rel=1e-4)


def test_checkpoint_under_ddp_holds_the_trained_weights(ddp_run):
    from modelscale.core.io import load_torch

    assert sorted(p.name for p in (ddp_run / "ckpt").iterdir()) == ["last.pt"]
    ckpt = load_torch(ddp_run / "ckpt" / "last.pt")
    weights = torch.load(ddp_run / "plain-rank0.pt", weights_only=True)
    assert ckpt["done"] and ckpt["epoch"] == 2 and ckpt["step"] == 20
    assert all(torch.equal(ckpt["model"][k], v) for k, v in weights.items())
