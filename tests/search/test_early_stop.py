"""Paired-test early stopping: the sign test on constructed per-example correctness, the incumbent
choice, and one search on real digits where a clearly worse, larger trial is stopped (and is not with
early_stop=False)."""

from __future__ import annotations

import math
import random
from types import SimpleNamespace

import optuna
import pytest

from modelscale.core.errors import ModelscaleError
from modelscale.search import search
from modelscale.search.early_stop import (
    EarlyStop,
    looks,
    paired_verdict,
    pick_incumbent,
    rule_for,
    sign_test_p,
)
from modelscale.search.objectives import parse_objectives


def test_sign_test_matches_the_binomial_tail():
    assert sign_test_p(0, 0) == 1.0
    assert sign_test_p(5, 0) == pytest.approx(1 / 32)
    assert sign_test_p(3, 2) == pytest.approx((math.comb(5, 3) + math.comb(5, 4) + 1) / 32)
    assert sign_test_p(0, 7) == 1.0  # no loss at all: never "worse"


def test_looks_start_at_min_samples_and_end_at_the_last_example():
    rule = EarlyStop(batch=32, min_samples=64, max_samples=512)
    assert looks(270, rule) == [64, 96, 128, 160, 192, 224, 256, 270]
    assert looks(40, rule) == []
    assert looks(10_000, rule)[-1] == 512


def _vectors(n: int, acc_incumbent: float, acc_trial: float, seed: int) -> tuple[list[float], list[float]]:
    rng = random.Random(seed)
    inc = [1.0 if rng.random() < acc_incumbent else 0.0 for _ in range(n)]
    trial = [1.0 if rng.random() < acc_trial else 0.0 for _ in range(n)]
    return trial, inc


def test_a_clearly_worse_trial_is_stopped_and_an_equal_one_is_not():
    rule = EarlyStop()
    worse, inc = _vectors(270, 0.99, 0.85, seed=1)
    verdict = paired_verdict(worse, inc, rule, incumbent_number=3)
    assert verdict is not None and verdict["incumbent"] == 3
    assert verdict["p_value"] < verdict["level"] == rule.alpha / verdict["looks"]
    assert verdict["samples"] < 270 and verdict["losses"] > verdict["wins"]  # stopped before the end
    assert paired_verdict(inc, inc, rule) is None  # identical: no discordant pair
    stopped = 0
    for seed in range(200):  # as good as the incumbent: stopped in at most ~alpha of the cases
        a, b = _vectors(270, 0.95, 0.95, seed=seed)
        stopped += paired_verdict(a, b, rule) is not None
    assert stopped <= 10
    better, inc = _vectors(270, 0.85, 0.99, seed=2)
    assert paired_verdict(better, inc, rule) is None


def test_the_verdict_is_deterministic_and_needs_min_samples():
    worse, inc = _vectors(270, 1.0, 0.0, seed=0)
    rule = EarlyStop(min_samples=64)
    assert paired_verdict(worse, inc, rule) == paired_verdict(worse, inc, rule)
    assert paired_verdict(worse, inc, rule)["samples"] == 64
    assert paired_verdict(worse[:63], inc[:63], rule) is None  # too few examples to look at


def _trial(number, accuracy, size, feasible=True, scores=True):
    attrs = {
        "metrics": {"accuracy": accuracy, "bytes": size},
        "constraint_violation": [-1.0 if feasible else 1.0],
    }
    if scores:
        attrs["val_scores"] = [1.0]
    return SimpleNamespace(number=number, user_attrs=attrs)


def test_the_incumbent_is_the_most_accurate_feasible_no_larger_trial():
    objs = parse_objectives(["accuracy", "bytes"])
    trials = [
        _trial(0, 0.99, 5000),
        _trial(1, 1.00, 9000),  # larger than the trial: cannot dominate it
        _trial(2, 0.995, 7000, feasible=False),
        _trial(3, 0.98, 4000),
        _trial(4, 0.999, 6000, scores=False),  # no stored scores (early stop was off then)
    ]
    assert pick_incumbent(trials, {"bytes": 8000}, objs).number == 0
    assert pick_incumbent(trials, {"bytes": 3000}, objs) is None
    single = parse_objectives(["accuracy"])  # one objective: the best feasible trial so far
    assert pick_incumbent(trials, {"bytes": 1}, single).number == 1


def test_rule_for_switches_off_where_it_cannot_judge():
    objs = parse_objectives(["accuracy", "bytes"])
    assert rule_for(False, objs) == (None, None)
    assert rule_for(True, objs)[0] == EarlyStop()
    rule, why = rule_for(True, parse_objectives(["accuracy", "latency_p50_b1"]))
    assert rule is None and "latency_p50_b1" in why
    with pytest.raises(ModelscaleError, match="early_stop must be"):
        rule_for("yes", objs)
    with pytest.raises(ModelscaleError, match="alpha"):
        EarlyStop(alpha=1.5)


SPACE = {
    "stages": [
        {"name": "prune", "optional": True,
         "options": [{"technique": "magnitude_prune", "knobs": {"amount": [0.97]}, "fixed": {"scope": "global"}}]},
        {"name": "tune", "finetune": {"epochs": [0]}},
        {"name": "quantize", "optional": True, "options": [{"technique": "weight_only", "knobs": {"bits": [8]}}]},
    ]
}  # fmt: skip
SMALL_GOOD = {"prune.technique": "none", "tune.epochs": 0, "quantize.technique": "weight_only",
              "quantize.weight_only.bits": 8}  # fmt: skip
LARGE_BAD = {"prune.technique": "magnitude_prune", "prune.magnitude_prune.amount": 0.97, "tune.epochs": 0,
             "quantize.technique": "none"}  # fmt: skip


@pytest.mark.parametrize("early_stop", [True, False])
def test_search_stops_a_larger_clearly_worse_trial(trained, tmp_path, early_stop):
    out = tmp_path / f"es-{early_stop}"
    result = search(
        str(trained), "digits", space=SPACE, objectives=["accuracy", "bytes"], constraints=["accuracy_drop <= 5"],
        n_trials=2, out=out, progress=False, warm_start=False, enqueue=[SMALL_GOOD, LARGE_BAD], confirm_seeds=0,
        early_stop=early_stop,
    )  # fmt: skip
    study = optuna.load_study(study_name="search", storage=f"sqlite:///{out / 'search.db'}")
    first, second = sorted(study.trials, key=lambda t: t.number)[:2]
    assert first.state.name == "COMPLETE" and len(study.trials) == 2  # a stopped trial spends the budget
    if early_stop:
        assert len(first.user_attrs["val_scores"]) == min(len(first.user_attrs["val_scores"]), 512) > 64
        assert second.state.name == "PRUNED" and result.trials == 1
        verdict = second.user_attrs["early_stop"]
        assert verdict["incumbent"] == 1 and verdict["p_value"] < verdict["level"]
        assert verdict["trial_mean"] < verdict["incumbent_mean"]
        assert study.user_attrs["early_stop"]["alpha"] == 0.05
    else:
        assert second.state.name == "COMPLETE" and result.trials == 2
        assert "val_scores" not in first.user_attrs and "early_stop" not in second.user_attrs
        drop = second.user_attrs["metrics"]["accuracy_drop"]
        assert drop > 5  # it was clearly worse: the stopped trial above was right to stop
