import pytest
import torch
from torch import nn

from modelscale import load_compressed, save_compressed
from modelscale.core.errors import ModelscaleError
from modelscale.core.io import atomic_path, load_torch, read_structured, save_torch, write_json


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.json"
    write_json(target, {"a": 1})
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash mid-write")
    assert read_structured(target) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_load_torch_is_weights_only_by_default(tmp_path):
    path = tmp_path / "whole.pt"
    torch.save(nn.Linear(2, 2), path)  # a pickled module
    with pytest.raises(ModelscaleError, match="allow_pickle"):
        load_torch(path)
    assert isinstance(load_torch(path, allow_pickle=True), nn.Linear)
    save_torch({"w": torch.ones(2)}, tmp_path / "sd.pt")
    assert torch.equal(load_torch(tmp_path / "sd.pt")["w"], torch.ones(2))


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(ModelscaleError, match="not found"):
        load_torch(tmp_path / "nope.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ModelscaleError, match="corrupt"):
        load_torch(bad)
    broken = tmp_path / "x.yaml"
    broken.write_text("a: [1, 2\n")
    with pytest.raises(ModelscaleError, match="cannot parse"):
        read_structured(broken)


def test_checkpoint_errors(tmp_path):
    with pytest.raises(ModelscaleError, match="not a saved modelscale model"):
        load_compressed(tmp_path, nn.Linear(2, 2))
    save_compressed(tmp_path / "m", nn.Linear(2, 3))
    with pytest.raises(ModelscaleError, match="do not fit the model"):
        load_compressed(tmp_path / "m", nn.Linear(2, 2))
    (tmp_path / "m" / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(ModelscaleError, match="corrupt"):
        load_compressed(tmp_path / "m", nn.Linear(2, 3))
