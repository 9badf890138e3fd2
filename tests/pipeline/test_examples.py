"""The digits example recipes, shortened to two epochs per training section, run end to end on real data."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from modelscale.pipeline import patch_recipe, read_recipe, run_command, run_recipe
from modelscale.pipeline.store import RunStore

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


def quick(name: str) -> dict:
    return patch_recipe(read_recipe(RECIPES / name), epochs=2, repeats=2, warmup=1, batch_sizes=[1])


def accuracy(step) -> float:
    return step.headline["quality.accuracy"]


def test_digits_prune_finetune_int8(tmp_path):
    data = quick("digits_cnn_prune_finetune.yaml")
    has_int8 = any(s.get("technique") == "dynamic_int8" for s in data["steps"])
    result = run_recipe(data, store=tmp_path / "r.db", run_dir=tmp_path / "run", progress=False)
    assert result.ok, [v.error for v in result.variants]
    assert [v.label for v in result.variants] == ["amount=0.5", "amount=0.8"]
    for v in result.variants:
        base, pruned, tuned, *rest = v.steps
        assert accuracy(base) > 0.6  # two epochs on real digits
        assert accuracy(tuned) > 0.8  # the fine-tune recovers (and masks hold: nonzero count unchanged)
        assert (
            tuned.headline["params.nonzero"]
            == pruned.headline["params.nonzero"]
            < base.headline["params.nonzero"]
        )
        if has_int8:
            assert abs(accuracy(rest[0]) - accuracy(tuned)) < 0.05
    sparse = [v.steps[1].headline["params.nonzero"] for v in result.variants]
    assert sparse[1] < sparse[0]  # 80% pruned keeps fewer weights than 50%
    assert result.variants[1].steps[0].how == "reused"  # one baseline for the sweep


def test_digits_distill_student_via_run_command(tmp_path):
    pytest.importorskip("modelscale.techniques.distill")
    path = tmp_path / "student.yaml"
    path.write_text(yaml.safe_dump(quick("digits_cnn_distill_student.yaml")))
    text, data = run_command(path, store=tmp_path / "r.db", run_dir=tmp_path / "run", progress=False)
    assert "2/2 variant(s) completed" in text and "alpha=0.3" in text
    variants = data["result"]["variants"]
    for v in variants:
        teacher, student = v["steps"]
        assert student["headline"]["params.total"] < 0.4 * teacher["headline"]["params.total"]  # half width
        assert student["headline"]["quality.accuracy"] > 0.3  # learned something on real digits
    with RunStore(tmp_path / "r.db") as store:
        runs = store.runs()
        assert [r["sweep"] for r in runs] == [
            {"steps[0].distill.config.alpha": 1.0},
            {"steps[0].distill.config.alpha": 0.3},
        ]
        assert all(r["config"]["steps"][0]["distill"]["student"]["kwargs"] == {"width": 0.5} for r in runs)
