"""pareto_front: hand-made points with known fronts, and a cross-check against a sweep-line front."""

import math
import random

import pytest

from modelscale.analysis.pareto import pareto_front
from modelscale.core.errors import ModelscaleError


def test_two_objectives_hand_made():
    points = [
        {"acc": 0.98, "mb": 0.35},  # most accurate: on the front
        {"acc": 0.97, "mb": 0.11},  # smallest: on the front
        {"acc": 0.95, "mb": 0.20},  # beaten by the second on both
        {"acc": 0.975, "mb": 0.21},  # between the two: on the front
        {"acc": 0.97, "mb": 0.12},  # same accuracy as the second, bigger: beaten
    ]
    assert pareto_front(points, maximize="acc", minimize="mb") == [0, 1, 3]


def test_equal_points_are_all_on_the_front_and_missing_values_never():
    points = [
        {"acc": 0.9, "mb": 1.0},
        {"acc": 0.9, "mb": 1.0},
        {"acc": None, "mb": 0.1},
        {"acc": math.nan, "mb": 0.1},
        {"mb": 0.01},
        {"acc": 0.8, "mb": 2.0},
    ]
    assert pareto_front(points, maximize="acc", minimize="mb") == [0, 1]


def test_three_objectives_and_lists_of_keys():
    points = [
        {"acc": 0.9, "params": 100, "ms": 1.0},
        {"acc": 0.9, "params": 50, "ms": 2.0},  # smaller but slower: both stay
        {"acc": 0.8, "params": 100, "ms": 1.0},  # beaten by the first
        {"acc": 0.7, "params": 10, "ms": 5.0},  # smallest: stays
    ]
    assert pareto_front(points, maximize=["acc"], minimize=["params", "ms"]) == [0, 1, 3]
    # on accuracy and latency only, the smaller-but-slower model drops out
    assert pareto_front(points, maximize="acc", minimize="ms") == [0]


def test_single_objective_keeps_only_the_best_ties_included():
    points = [{"ms": 3.0}, {"ms": 1.0}, {"ms": 1.0}, {"ms": 2.0}]
    assert pareto_front(points, minimize="ms") == [1, 2]
    assert pareto_front([], maximize="acc") == []


def _sweep_front(points):
    """Independent 2-D front: sort by size (then accuracy, best first), keep each new best accuracy."""
    order = sorted(range(len(points)), key=lambda i: (points[i]["mb"], -points[i]["acc"]))
    front, best = [], -math.inf
    last = None
    for i in order:
        key = (points[i]["mb"], points[i]["acc"])
        if points[i]["acc"] > best or key == last:
            front.append(i)
            best = max(best, points[i]["acc"])
            last = key
    return sorted(front)


@pytest.mark.parametrize("seed", range(5))
def test_matches_a_sweep_line_front_on_random_points(seed):
    rng = random.Random(seed)
    points = [{"acc": rng.choice([0.5, 0.6, 0.7, 0.8, 0.9]), "mb": rng.randint(1, 12)} for _ in range(40)]
    assert pareto_front(points, maximize="acc", minimize="mb") == _sweep_front(points)


def test_bad_objectives_raise():
    with pytest.raises(ModelscaleError, match="at least one objective"):
        pareto_front([{"a": 1}])
    with pytest.raises(ModelscaleError, match="both maximized and minimized"):
        pareto_front([{"a": 1}], maximize="a", minimize="a")
    with pytest.raises(ModelscaleError, match="list of keys"):
        pareto_front([{"a": 1}], maximize=[1])
