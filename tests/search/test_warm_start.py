"""Sensitivity-knapsack warm starts: the knapsack against brute force, and the starts of a real search on
digits (aimed at byte goals the dry run confirms, with their reasons recorded on the trials)."""

from __future__ import annotations

import itertools
import random

import optuna
import pytest

from modelscale.search import search
from modelscale.search.warm_start import knapsack
from tests.search.conftest import SPACE


def _brute(items, need):
    layers = list(items)
    best = None
    for combo in itertools.product(*[[None, *items[ly]] for ly in layers]):
        picked = [c for c in combo if c is not None]
        if sum(c[1] for c in picked) >= need:
            cost = sum(max(c[0], 0.0) for c in picked)
            best = cost if best is None else min(best, cost)
    return best


def test_knapsack_finds_the_least_cost_choice_that_saves_enough():
    rng = random.Random(0)
    for _ in range(30):
        items = {
            f"l{i}": [(rng.uniform(0, 1), rng.choice([0, 100, 250, 400, 900]), s) for s in (0.2, 0.5, 0.8)]
            for i in range(4)
        }
        need = rng.uniform(100, 2000)
        found = knapsack(items, need)
        best = _brute(items, need)
        if best is None:
            assert found is None
            continue
        picks, cost, saved = found
        assert saved >= need and cost == pytest.approx(sum(max(c, 0) for ly, s in picks.items()
                                                            for c, _, st in items[ly] if st == s))  # fmt: skip
        assert cost == pytest.approx(best)  # the optimum (savings are rounded down, never overstated)
    assert knapsack({"a": [(0.1, 10.0, 0.5)]}, 0) == ({}, 0.0, 0.0)
    assert knapsack({"a": [(0.1, 10.0, 0.5)]}, 11.0) is None  # cannot save enough
    assert knapsack({"a": [(0.5, 60, 0.8), (0.1, 60, 0.3)], "b": [(0.05, 50, 0.9)]}, 100)[0] == {
        "a": 0.3,
        "b": 0.9,
    }


def test_search_starts_with_sensitivity_knapsack_trials(trained, tmp_path):
    out = tmp_path / "ws"
    result = search(
        str(trained), "digits", space=SPACE, objectives=["accuracy", "bytes"], constraints=["bytes <= 30000"],
        n_trials=2, out=out, progress=False, confirm_seeds=0,
    )  # fmt: skip
    study = optuna.load_study(study_name="search", storage=f"sqlite:///{out / 'search.db'}")
    summary = study.user_attrs["sensitivity"]
    assert summary["goals_bytes"] == [30000, 15000, 7500] and summary["tables"]
    table = summary["tables"][0]
    assert table["technique"] == "structured_prune" and set(table["loss_rise"]) == set(table["bytes_saved"])
    starts = study.user_attrs["warm_starts"]
    knapsack_starts = [s for s in starts if s["why"]["source"] == "sensitivity knapsack"]
    assert knapsack_starts and starts[: len(knapsack_starts)] == knapsack_starts  # they come first
    for s in knapsack_starts:
        assert s["why"]["dry_bytes"] <= s["why"]["goal_bytes"] + 1  # the dry run met the goal
    first = sorted(study.trials, key=lambda t: t.number)[0]
    assert first.user_attrs["warm_start"] == knapsack_starts[0]["why"]
    assert first.params == knapsack_starts[0]["params"] or all(
        first.params[k] == v for k, v in knapsack_starts[0]["params"].items() if k in first.params
    )
    if first.state.name == "COMPLETE":  # the goal was met by the real file too (training keeps its size)
        assert first.user_attrs["metrics"]["bytes"] <= knapsack_starts[0]["why"]["goal_bytes"] + 1
    assert result.trials + sum(t.state.name == "PRUNED" for t in study.trials) == 2
