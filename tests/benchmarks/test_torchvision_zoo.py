"""benchmarks/torchvision_zoo.py's input sides and pair limit; torchvision_zoo_sweep.py's merging."""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def _load(name: str):
    sys.path.insert(0, str(BENCHMARKS))  # the sweep imports the zoo script by name
    try:
        spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules.setdefault(name, module)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCHMARKS))


zoo = _load("torchvision_zoo")
sweep = _load("torchvision_zoo_sweep")


def test_sides_rise_to_what_each_model_needs_and_no_further():
    assert zoo.side_for("resnet18", 32) == 32
    assert zoo.side_for("vit_b_16", 32) == 32
    assert zoo.side_for("alexnet", 32) == 64
    assert zoo.side_for("alexnet", 96) == 96
    assert zoo.side_for("vit_h_14", 32) == 42  # a whole number of 14-pixel patches
    assert zoo.side_for("maxvit_t", 32) == 224


def test_alexnet_runs_at_its_side_and_not_at_32():
    from modelscale.models import build_model

    def forward(side: int) -> tuple:
        with torch.device("meta"):
            model = build_model("torchvision:alexnet", num_classes=10, input_shape=(3, side, side))
            return tuple(model(torch.empty(2, 3, side, side)).shape)

    assert forward(zoo.side_for("alexnet", 32)) == (2, 10)
    with pytest.raises(RuntimeError, match="too small|Output size"):
        forward(32)


def test_pair_limit_interrupts_python_code():
    start = time.perf_counter()
    with pytest.raises(zoo.PairTimeout, match="--pair-limit"), zoo.time_limit(0.2):
        while time.perf_counter() - start < 5:
            pass
    assert time.perf_counter() - start < 2
    with zoo.time_limit(0):  # no limit
        time.sleep(0.01)


def _entry(side: int, **statuses: str) -> dict:
    macs = {"macs_error": 0.0, "params": 1, "published_params": 1}
    rows = {
        t: {"status": s, "message": f"{s} message"} if s != "ok" else {"status": s}
        for t, s in statuses.items()
    }
    return {"macs": macs, "side": side, "techniques": rows}


def test_merge_replaces_only_the_pairs_rerun_and_counts_them():
    merged = {"models": {"resnet18": _entry(32, cast="ok", pt2e_int8="error", lora="refused")}}
    sweep.merge(merged, "resnet18", _entry(32, pt2e_int8="ok"), {"rc": 0})
    rows = merged["models"]["resnet18"]["techniques"]
    assert {t: r["status"] for t, r in rows.items()} == {"cast": "ok", "lora": "refused", "pt2e_int8": "ok"}
    sweep.merge(merged, "alexnet", None, {"rc": -9})  # a process that left no file
    sweep.finish(merged, queued=[])
    assert merged["summary"]["pairs"] == 3 and merged["summary"]["ok"] == 2
    assert merged["summary"]["refused"] == 1 and merged["summary"]["error"] == 0
    assert "alexnet" in merged["not_run"] and "resnet18" not in merged["not_run"]
    assert "resnet18/awq" in merged["pairs_not_run"] and merged["partial"]
    assert merged["refused_by_message"] == {"refused message": ["resnet18/lora"]}


def test_a_rerun_at_another_side_marks_the_pairs_it_left():
    merged = {"models": {"alexnet": _entry(32, cast="error", lora="error")}}
    sweep.merge(merged, "alexnet", _entry(64, cast="ok"), {"rc": 0})
    assert merged["models"]["alexnet"]["stale_side"] == "lora ran at side 32"
