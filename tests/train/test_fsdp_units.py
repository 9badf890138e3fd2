"""FSDP pieces in one process: the wrapping policy, activation checkpointing, sharding and unsharding
in place (a one-process gloo group), and the distributed checkpoint's atomic publish and exact resume."""

import copy
import json
import socket

import pytest
import torch
import torch.distributed as dist

from modelscale.core.errors import ModelscaleError
from modelscale.models import build_model
from modelscale.train import TrainConfig, fit
from modelscale.train import fsdp as F
from modelscale.train.dcp import LATEST, latest
from modelscale.train.distributed import DistInfo
from tests.train._digits import digits_bundle, mlp


def test_wrapping_policy_picks_the_repeated_blocks():
    gpt = build_model("gpt", block_size=16, n_layer=3, n_head=2, n_embd=16)
    assert F.block_modules(gpt) == list(gpt.blocks)
    cnn = build_model("cnn", num_classes=10, input_shape=(1, 8, 8), depth=2.0)
    assert F.block_modules(cnn) == list(cnn.features)  # the stages, not the conv blocks inside them
    tv = pytest.importorskip("torchvision")
    resnet = tv.models.resnet18(num_classes=10)
    blocks = F.block_modules(resnet)
    assert len(blocks) == 8 and all(type(b).__name__ == "BasicBlock" for b in blocks)


def test_activation_checkpointing_gives_the_same_gradients_and_is_removed():
    torch.manual_seed(0)
    model = build_model("gpt", block_size=16, n_layer=2, n_head=2, n_embd=16)
    x = torch.randint(0, 256, (4, 16))

    def grads(m):
        m.zero_grad()
        m(x).square().mean().backward()
        return [p.grad.clone() for p in m.parameters()]

    plain = grads(model)
    snap = F.Snapshot.take(model)
    assert F.checkpoint_blocks(model) == 2 and "forward" in vars(model.blocks[0])
    checkpointed = grads(model)
    snap.restore()
    assert "forward" not in vars(model.blocks[0])
    assert all(torch.equal(a, b) for a, b in zip(plain, checkpointed))
    with pytest.raises(ModelscaleError, match="no repeated blocks"):
        F.checkpoint_blocks(torch.nn.Linear(2, 2))


@pytest.fixture
def one_process_group():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", world_size=1, rank=0)
    try:
        yield DistInfo(world_size=1, rank=0, local_rank=0)
    finally:
        dist.destroy_process_group()


def test_shard_then_unshard_gives_back_a_plain_module_that_shards_again(one_process_group):
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.tensor import DTensor

    torch.manual_seed(0)
    model = build_model("gpt", block_size=16, n_layer=2, n_head=2, n_embd=16, tie_weights=True)
    x = torch.randint(0, 256, (2, 16))
    expected = model(x).detach()
    cfg = TrainConfig(parallel="fsdp", activation_checkpointing=True)
    cpu = torch.device("cpu")
    for _ in range(2):  # a second fit on the same model (train, then fine-tune) shards it again
        snap = F.shard(model, cfg, cpu, one_process_group)
        assert isinstance(model, FSDPModule) and isinstance(model.blocks[0], FSDPModule)
        assert all(isinstance(p, DTensor) for p in model.parameters())
        torch.testing.assert_close(model(x), expected)
        F.unshard(model, snap, one_process_group, cpu)
        assert type(model).__name__ == "GPT" and not isinstance(model.blocks[1], FSDPModule)
        assert not any(isinstance(p, DTensor) for p in model.parameters())
        assert model.lm_head.weight is model.tok_emb.weight  # tied weights stay tied
        assert "forward" not in vars(model.blocks[0])
        torch.testing.assert_close(model(x), expected)
    clone = copy.deepcopy(model)  # FSDP modules refuse deepcopy; the unsharded model does not
    assert torch.equal(clone(x), model(x))


class StopAfter:
    def __init__(self, epochs):
        self.epochs = epochs

    def on_epoch_end(self, state):
        state.should_stop = state.epoch >= self.epochs


def _cfg(tmp_path, **kw):
    base = dict(
        epochs=3,
        batch_size=64,
        lr=3e-3,
        schedule="cosine",
        patience=5,
        deterministic=True,
        seed=2,
        progress=False,
        parallel="fsdp",
        checkpoint_dir=str(tmp_path),
    )
    return TrainConfig(**{**base, **kw})


def test_dcp_resume_is_exact_and_a_crash_mid_save_leaves_the_last_checkpoint(tmp_path):
    data = digits_bundle(n_train=320, n_val=100)
    ref = mlp(seed=0, dropout=0.3)
    ref_result = fit(ref, data, _cfg(tmp_path / "ref"))

    ckpt = tmp_path / "run"
    fit(mlp(seed=0, dropout=0.3), data, _cfg(ckpt), callbacks=[StopAfter(1)])
    folder, meta = latest(ckpt)
    assert folder.name == "epoch-00001" and meta["world_size"] == 1
    # crash states: a half-written next save, and a published folder whose latest.json never got written
    (ckpt / ".epoch-00002.tmp").mkdir()
    (ckpt / ".epoch-00002.tmp" / "__0_0.distcp").write_bytes(b"partial")
    fit(mlp(seed=0, dropout=0.3), data, _cfg(tmp_path / "other"), callbacks=[StopAfter(2)])
    (tmp_path / "other" / "epoch-00002").rename(ckpt / "epoch-00002")
    assert latest(ckpt)[0].name == "epoch-00001"

    resumed = mlp(seed=9, dropout=0.3)
    result = fit(resumed, data, _cfg(ckpt, resume=True))
    assert result.resumed_from_epoch == 1 and result.steps == ref_result.steps
    assert [r["train_loss"] for r in result.history] == [r["train_loss"] for r in ref_result.history]
    assert result.best_epoch == ref_result.best_epoch
    assert all(torch.equal(a, b) for a, b in zip(ref.state_dict().values(), resumed.state_dict().values()))
    assert sorted(p.name for p in ckpt.iterdir()) == ["epoch-00003", LATEST]  # stale folders cleaned


def test_unreadable_latest_is_a_clear_error(tmp_path):
    (tmp_path / LATEST).write_text(json.dumps({"format": 1, "dir": "epoch-00001"}))
    with pytest.raises(ModelscaleError, match="no complete distributed checkpoint"):
        fit(mlp(), digits_bundle(n_train=64, n_val=32), _cfg(tmp_path, resume=True, epochs=1))
    (tmp_path / LATEST).write_text("{not json")
    with pytest.raises(ModelscaleError, match="unreadable"):
        fit(mlp(), digits_bundle(n_train=64, n_val=32), _cfg(tmp_path, resume=True, epochs=1))


def test_fsdp_options_need_fsdp():
    with pytest.raises(ModelscaleError, match="need parallel='fsdp'"):
        TrainConfig(cpu_offload=True)
    with pytest.raises(ModelscaleError, match="parallel"):
        TrainConfig(parallel="zero3")
