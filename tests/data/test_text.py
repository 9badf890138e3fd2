"""Byte-level LM sources: text:<file-or-dir> and pystdlib (the real Python standard library source)."""

import pytest
import torch

from modelscale.core.errors import ModelscaleError
from modelscale.data import load_data


def test_text_file_contiguous_split(tmp_path):
    body = b"".join(f"line {i}: the quick brown fox\n".encode() for i in range(400))
    (tmp_path / "corpus.txt").write_bytes(body)
    data = load_data(f"text:{tmp_path / 'corpus.txt'}", block_size=32, seed=0)
    assert data.task == "lm" and data.num_classes == 256 and data.input_shape == (32,)
    b = data.meta["bytes"]
    assert (
        sum(b.values()) == len(body)
        and b["test"] == int(0.2 * len(body))
        and b["val"] == int(0.15 * len(body))
    )
    # splits are contiguous pieces of the file in order
    assert (
        bytes(data.train.data.tolist()) + bytes(data.val.data.tolist()) + bytes(data.test.data.tolist())
        == body
    )
    x, y = data.train[0]
    assert x.dtype == torch.int64 and x.shape == (32,) and torch.equal(x[1:], y[:-1])
    start = int(data.train.offsets[0])
    assert bytes(x.tolist()) == body[start : start + 32]
    # val/test windows are strided and cover their split once
    assert len(data.test) == (b["test"] - 1) // 32
    assert bytes(data.test[1][0].tolist()) == body[len(body) - b["test"] + 32 :][:32]
    same = load_data(f"text:{tmp_path / 'corpus.txt'}", block_size=32, seed=0)
    other = load_data(f"text:{tmp_path / 'corpus.txt'}", block_size=32, seed=1)
    assert torch.equal(same.train.offsets, data.train.offsets)
    assert not torch.equal(other.train.offsets, data.train.offsets)


def test_text_folder_and_errors(tmp_path):
    (tmp_path / "a.md").write_text("# title\n" * 50)
    (tmp_path / "b.py").write_text("x = 1\n" * 50)
    (tmp_path / "skip.bin").write_bytes(b"\x00" * 1000)
    data = load_data(f"text:{tmp_path}", block_size=16)
    assert data.meta["files"] == 2 and data.meta["total_bytes"] == 8 * 50 + 1 + 6 * 50 + 1
    with pytest.raises(ModelscaleError, match="text path not found"):
        load_data(f"text:{tmp_path / 'missing.txt'}")
    with pytest.raises(ModelscaleError, match="needs >= block_size \\+ 1"):
        load_data(f"text:{tmp_path}", block_size=512)
    with pytest.raises(ModelscaleError, match="augment applies to image data"):
        from modelscale.data import AugmentConfig

        load_data(f"text:{tmp_path}", augment=AugmentConfig())


def test_pystdlib_is_real_python_and_shifted():
    data = load_data("pystdlib", block_size=64, max_bytes=300_000, seed=0)
    assert data.meta["total_bytes"] == 300_000 and data.meta["files"] > 1
    assert data.meta["bytes"]["train"] > 150_000 and len(data.train) > 1000
    corpus = bytes(data.train.data.tolist())
    assert b"import " in corpus and b"def " in corpus
    for i in (0, len(data.val) - 1):
        x, y = data.val[i]
        assert x.shape == y.shape == (64,) and torch.equal(x[1:], y[:-1])
    assert torch.equal(data.test[0][0], data.test.data[:64].long())  # first strided window


def test_lm_data_fraction_keeps_val_and_test():
    full = load_data("pystdlib", block_size=32, max_bytes=100_000)
    part = load_data("pystdlib", block_size=32, max_bytes=100_000, data_fraction=0.25)
    assert part.meta["bytes"]["train"] == round(0.25 * full.meta["bytes"]["train"])
    assert part.meta["bytes"]["test"] == full.meta["bytes"]["test"]
    assert torch.equal(part.test.data, full.test.data)
