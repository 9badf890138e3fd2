"""FSDP2 training on 2 CPU processes (gloo): parity with DDP and one process, half the per-rank state,
SIGKILL mid-epoch then exact resume from the distributed checkpoint, resharding to world size 1."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from modelscale.train import TrainConfig, fit
from modelscale.train.dcp import is_sharded_checkpoint, load_model_weights
from tests.train.fsdp_worker import COMMON, data, gpt
from tests.train.torchrun import torchrun


def _launch(mode: str, out: Path) -> subprocess.CompletedProcess:
    return torchrun("fsdp_worker.py", mode, str(out), timeout=240)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("fsdp")
    first = _launch("runs", out)
    assert all((out / f"runs-done-rank{r}").exists() for r in (0, 1)), first.stderr[-3000:]
    assert first.returncode != 0  # rank 1 was SIGKILLed mid-epoch 2
    assert "SIGKILL" in first.stderr or "Signal 9" in first.stderr, first.stderr[-2000:]
    shutil.copytree(out / "killed", out / "killed-at-world-2")  # before the relaunch writes on
    second = _launch("resume", out)
    assert second.returncode == 0, second.stderr[-3000:]
    return out


def _info(out, name, rank=0):
    return json.loads((out / f"{name}-rank{rank}.json").read_text())


def _weights(out, name, rank=0):
    return torch.load(out / f"{name}-rank{rank}.pt", weights_only=True)


@pytest.fixture(scope="module")
def single():
    model = gpt()
    result = fit(model, data(), TrainConfig(**COMMON))
    return [r["train_loss"] for r in result.history], model.state_dict()


def test_fsdp_matches_ddp_and_one_process(runs, single):
    losses, weights = single
    assert len(losses) == 3
    for name in ("fsdp", "ddp"):
        for rank in (0, 1):
            info = _info(runs, name, rank)
            assert info["steps"] == 20
            assert max(abs(a - b) for a, b in zip(info["losses"], losses)) < 1e-5, (name, rank)
    # after training the model is the user's plain module again, with the full weights on each rank
    info = _info(runs, "fsdp")
    assert info["class"] == "GPT" and info["param_types"] == ["Parameter"]
    ranks, ddp = [_weights(runs, "fsdp", r) for r in (0, 1)], _weights(runs, "ddp")
    for key, value in weights.items():
        assert torch.equal(ranks[0][key], ranks[1][key]), key
        # AdamW divides by sqrt(v): reduction-order rounding moves tiny-gradient weights by ~1e-5
        torch.testing.assert_close(ranks[0][key], value, atol=1e-4, rtol=1e-4, msg=key)
        torch.testing.assert_close(ranks[0][key], ddp[key], atol=1e-5, rtol=1e-4, msg=key)


def test_sharded_state_is_half_of_ddp(runs):
    for rank in (0, 1):
        ddp, fsdp = _info(runs, "ddp", rank)["bytes"], _info(runs, "fsdp", rank)["bytes"]
        assert ddp["optimizer"] == 2 * ddp["params"]  # AdamW: exp_avg + exp_avg_sq
        for part in ("params", "optimizer", "total"):
            assert fsdp[part] <= 0.55 * ddp[part], (rank, part, fsdp, ddp)


def test_activation_checkpointing_and_bf16_train(runs):
    plain, ac = _info(runs, "fsdp"), _info(runs, "fsdp_ac")
    assert max(abs(a - b) for a, b in zip(plain["losses"], ac["losses"])) < 1e-6  # recompute = same math
    bf16 = _info(runs, "fsdp_bf16")
    assert bf16["steps"] == 3 * 4  # 7 micro-batches per epoch, 2 per step
    assert all(torch.isfinite(torch.tensor(bf16["losses"])))
    assert bf16["losses"][0] > bf16["losses"][1] > bf16["losses"][2]
    assert _info(runs, "fsdp_bf16", 1)["losses"] == bf16["losses"]


def test_sigkill_mid_epoch_then_resume_ends_like_an_uninterrupted_run(runs):
    resumed, uninterrupted = _info(runs, "resumed"), _info(runs, "fsdp")
    assert resumed["resumed_from_epoch"] == 1 and resumed["steps"] == 20
    assert max(abs(a - b) for a, b in zip(resumed["losses"], uninterrupted["losses"])) < 1e-6
    assert abs(resumed["val_loss"] - uninterrupted["val_loss"]) < 1e-6
    for key, value in _weights(runs, "fsdp").items():
        torch.testing.assert_close(_weights(runs, "resumed")[key], value, atol=1e-6, rtol=1e-5, msg=key)


def test_checkpoint_layout_is_one_published_epoch(runs):
    ckpt = runs / "ckpt"
    assert is_sharded_checkpoint(ckpt)
    assert sorted(p.name for p in ckpt.iterdir()) == ["epoch-00003", "latest.json"]
    files = sorted(p.name for p in (ckpt / "epoch-00003").iterdir())
    assert {"extra-rank0.pt", "extra-rank1.pt", ".metadata"} <= set(files)
    assert len([f for f in files if f.endswith(".distcp")]) == 2  # one shard file per rank
    meta = json.loads((ckpt / "latest.json").read_text())
    assert meta["world_size"] == 2 and meta["epoch"] == 3 and meta["step"] == 20


def test_world_2_checkpoint_loads_at_world_1(runs, single, tmp_path):
    expected = _weights(runs, "fsdp")
    model = load_model_weights(runs / "ckpt", gpt())  # no process group in this process
    for key, value in expected.items():
        assert torch.equal(model.state_dict()[key], value), key

    # a finished run resumed at world size 1 keeps its weights and trains no further
    done = shutil.copytree(runs / "ckpt", tmp_path / "done")
    again = gpt()
    result = fit(again, data(), TrainConfig(**COMMON, parallel="fsdp", checkpoint_dir=str(done), resume=True))
    assert result.steps == 20 and result.resumed_from_epoch == 3 and result.world_size == 1
    assert all(torch.equal(again.state_dict()[k], v) for k, v in expected.items())

    # the killed run's epoch-1 checkpoint (world size 2) continues in one process: resharded
    part = shutil.copytree(runs / "killed-at-world-2", tmp_path / "part")
    assert json.loads((part / "latest.json").read_text())["epoch"] == 1
    cont = gpt()
    result = fit(cont, data(), TrainConfig(**COMMON, parallel="fsdp", checkpoint_dir=str(part), resume=True))
    assert result.resumed_from_epoch == 1 and result.steps == 20
    losses, _ = single
    assert abs(result.history[-1]["train_loss"] - losses[-1]) < 1e-5
    # and its new checkpoint is a world-size-1 one
    assert json.loads((part / "latest.json").read_text())["world_size"] == 1


def test_prune_then_fsdp_finetune_keeps_masks_and_distill_matches_one_process(runs):
    from modelscale.techniques.distill import distill

    for rank in (0, 1):
        info = _info(runs, "compress", rank)
        assert info["pruned_class"] == "GPT" and info["pruned_steps"] == 6
        assert info["masked_layers"] >= 10 and info["masks_kept"] and info["weights_changed"]
    kd = _info(runs, "compress")
    cfg = TrainConfig(**{**COMMON, "max_steps": 6, "epochs": 1})
    ref = distill(gpt(), gpt(), data(), cfg)
    assert kd["distill_steps"] == ref.steps == 6
    assert abs(kd["distill_losses"][0] - ref.history[0]["train_loss"]) < 1e-5
