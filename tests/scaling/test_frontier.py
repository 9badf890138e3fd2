"""Compress-or-train-small on digits: a family of MLPs against compressed versions of the largest."""

from __future__ import annotations

import pytest

from modelscale.core.errors import ModelscaleError
from modelscale.data import load_data
from modelscale.scaling.compress_or_train import (
    compress_or_train_small,
    default_techniques,
    head_name,
    weight_count,
)
from modelscale.scaling.sweep import run_sweep
from modelscale.train import TrainConfig

TRAIN = {"epochs": 5, "batch_size": 32, "lr": 3e-3, "progress": False, "deterministic": True}


@pytest.fixture(scope="module")
def frontier(tmp_path_factory):
    root = tmp_path_factory.mktemp("frontier")
    cfg = {"name": "fam", "model": "mlp", "widths": [0.25, 0.5, 1.0], "train": TRAIN}
    sweep = run_sweep(cfg, store=root / "db.sqlite", out_dir=root / "out", progress=False)
    finetune = TrainConfig(epochs=1, batch_size=32, lr=1e-3, progress=False, deterministic=True)
    result = compress_or_train_small(sweep, None, load_data("digits"), finetune=finetune, repeats=3, warmup=1)
    return root, sweep, result


def test_one_row_per_size_with_a_winner(frontier):
    _, sweep, result = frontier
    assert [t["label"] for t in result.table] == ["w=0.25", "w=0.5", "w=1"]
    for t in result.table:
        assert t["winner"].startswith(("trained", "compressed", "tie"))
        if t["compressed"] is not None:
            better = t["compressed"]["metric"] > t["metric"]
            assert t["winner"].startswith("compressed") == better
            assert t["margin"] == pytest.approx(t["compressed"]["metric"] - t["metric"])
    # The scores of the trained family are the sweep's own test accuracies (same split, same weights).
    by_width = {p["width"]: p["test_accuracy"] for p in sweep.points}
    for t, w in zip(result.table, (0.25, 0.5, 1.0)):
        assert t["metric"] == pytest.approx(by_width[w])
    assert "winner" in result.markdown()


def test_compressed_variants_match_sizes(frontier):
    _, _, result = frontier
    trained = {r["label"]: r for r in result.rows if r["kind"] == "trained"}
    pruned = [r for r in result.rows if r.get("technique") == "structured_prune"]
    assert len(pruned) == 2  # one per smaller size
    for r in pruned:
        target = trained[r["matched_to"]]
        assert r["params"] == pytest.approx(target["params"], rel=0.1)
        assert r["finetuned"] is True
    (int8,) = [r for r in result.rows if r.get("technique") == "weight_only"]
    assert int8["finetuned"] is False
    assert int8["params"] == trained["w=1"]["params"]  # quantized weights are still counted
    assert int8["bytes"] < 0.35 * trained["w=1"]["bytes"]
    assert all(r["latency_ms"] > 0 for r in result.rows)


def test_plot_and_bad_input(frontier, tmp_path):
    from modelscale.scaling.study_plots import plot_frontier

    _, _, result = frontier
    path = plot_frontier(result, tmp_path / "frontier.png")
    with open(path, "rb") as fh:
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ModelscaleError, match="family_results"):
        compress_or_train_small([], None, load_data("digits"))


def test_default_techniques_target_each_smaller_size():
    from modelscale.models import build_model

    model = build_model("mlp")  # 64 -> 128 -> 128 -> 10: 26,122 parameters
    total = weight_count(model)
    assert total == sum(p.numel() for p in model.parameters())
    head = head_name(model, 10)
    assert head == "classifier"
    techniques = default_techniques(model, [total // 4, total // 2], head=head)
    kinds = [t.type for t in techniques]
    assert kinds == ["structured_prune", "lowrank_svd", "structured_prune", "lowrank_svd", "weight_only"]
    assert techniques[0].ratio == pytest.approx(0.5, abs=1e-3) and techniques[2].ratio == pytest.approx(
        0.75, abs=1e-3
    )
    assert techniques[1].target.exclude == ("classifier",)
    # The low-rank share is set so that the whole model (dense head included) lands near the target.
    from modelscale.core.apply import apply

    low = apply(model, techniques[3]).model
    assert weight_count(low) == pytest.approx(total // 4, rel=0.1)
