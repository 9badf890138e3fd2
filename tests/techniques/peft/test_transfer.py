"""Transfer on real data: pretrain on digits 0–4, adapt to digits 5–9 with every PEFT method."""

from __future__ import annotations

from functools import lru_cache

import pytest
import torch

from modelscale.core.errors import ModelscaleError
from modelscale.data import load_data
from modelscale.techniques.peft.transfer import METHODS, SUGGESTED_LR, adapt, split_by_classes

TRAIN = {"batch_size": 32, "progress": False, "device": "cpu", "seed": 0}


def test_split_by_classes_filters_and_relabels():
    digits = load_data("digits", seed=0)
    target = split_by_classes(digits, [7, 5, 9])
    assert target.num_classes == 3 and target.meta["classes"] == [7, 5, 9]
    for split in ("train", "val", "test"):
        parent = getattr(digits, split)
        child = getattr(target, split)
        kept = [int(parent[i][1]) for i in range(len(parent)) if int(parent[i][1]) in (7, 5, 9)]
        assert len(child) == len(kept)
        labels = [int(child[i][1]) for i in range(len(child))]
        assert labels == [{7: 0, 5: 1, 9: 2}[y] for y in kept]
    x, _ = target.test[0]
    assert x.shape == (1, 8, 8)
    assert set(target.train.indices.tolist()).isdisjoint(target.test.indices.tolist())
    with pytest.raises(ModelscaleError, match="outside"):
        split_by_classes(digits, [3, 10])
    with pytest.raises(ModelscaleError, match="distinct"):
        split_by_classes(digits, [3, 3])


@lru_cache(maxsize=1)
def _transfer_rows() -> dict[str, dict]:
    from modelscale.models import build_model
    from modelscale.train import TrainConfig, evaluate, fit

    digits = load_data("digits", seed=0)
    source, target = split_by_classes(digits, range(5)), split_by_classes(digits, range(5, 10))
    torch.manual_seed(0)
    pretrained = build_model("cnn", num_classes=5, input_shape=(1, 8, 8), width=0.5)
    fit(pretrained, source, TrainConfig(epochs=8, lr=3e-3, **TRAIN))
    assert evaluate(pretrained, source.test)["accuracy"] > 0.95
    rows = {}
    for method in METHODS:
        config = TrainConfig(epochs=6, lr=SUGGESTED_LR.get(method, 1e-3), **TRAIN)
        rows[method] = adapt(pretrained, target, method, config, seed=0)
    return rows


def test_every_method_beats_the_frozen_random_head():
    rows = _transfer_rows()
    baseline = rows["frozen_random_head"]
    assert baseline["trainable_params"] == 0 and baseline["train_seconds"] == 0.0
    for method in METHODS[1:]:
        assert rows[method]["test_accuracy"] > baseline["test_accuracy"] + 0.3, (method, rows)


def test_lora_close_to_full_fine_tuning_with_few_parameters():
    rows = _transfer_rows()
    assert rows["lora"]["test_accuracy"] >= rows["full"]["test_accuracy"] - 0.03, rows
    assert rows["lora"]["trainable_params"] < 0.2 * rows["full"]["trainable_params"]
    assert rows["full"]["trainable_params"] == rows["full"]["total_params"]
    for method in ("linear_probe", "bitfit", "adapters"):
        assert rows[method]["trainable_params"] < rows["full"]["trainable_params"] / 4
