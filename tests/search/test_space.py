"""Search spaces, objectives and constraints are data, validated completely before any trial runs."""

from __future__ import annotations

import pytest

from modelscale.core.errors import ModelscaleError
from modelscale.search import default_space, parse_constraints, parse_objectives, parse_space
from modelscale.search.objectives import check_feasible


def test_default_space_round_trips():
    space = default_space()
    assert parse_space(space.to_dict()) == space
    assert [s.name for s in space.stages] == ["prune", "lowrank", "tune", "quantize"]


@pytest.mark.parametrize(
    "space, fragment",
    [
        ({}, "stages: [...]"),
        ({"stages": [{"options": [{"technique": "no_such"}]}]}, "unknown technique 'no_such'"),
        ({"stages": [{"options": [{"technique": "magnitude_prune", "knobs": {"amout": [0.5]}}]}]}, "no field 'amout'"),
        ({"stages": [{"options": [{"technique": "magnitude_prune", "knobs": {"amount": {"low": 0.9, "high": 0.1}}}]}]},
         "low 0.9 is above high 0.1"),
        ({"stages": [{"options": [{"technique": "magnitude_prune", "knobs": {"amount": {"low": 0.1, "high": 1.5}}}]}]},
         "amount must be"),
        ({"stages": [{"finetune": {"epochs": {"low": -1, "high": 3}}}]}, "whole numbers between 0 and 1000"),
        ({"stages": [{"name": "q", "options": [{"technique": "static_int8"}]},
                     {"name": "p", "options": [{"technique": "magnitude_prune"}]}]}, "move 'q' last"),
        ({"stages": [{"name": "q", "options": [{"technique": "dynamic_int8"}]},
                     {"name": "t", "finetune": {"epochs": [1]}}]}, "stage 't' trains"),
        ({"stages": [{"name": "a", "options": [{"technique": "cast"}]}, {"name": "a", "options": [{"technique": "cast"}]}]},
         "stage names must be unique"),
    ],
)  # fmt: skip
def test_invalid_spaces_are_one_line_errors(space, fragment):
    with pytest.raises(ModelscaleError, match=fragment.replace("[", r"\[").replace("]", r"\]")) as info:
        parse_space(space)
    assert "\n" not in str(info.value)


def test_objectives_and_constraints_parse():
    objs = parse_objectives(["accuracy", "bytes"])
    assert [(o.metric, o.direction) for o in objs] == [("accuracy", "maximize"), ("bytes", "minimize")]
    (c1, c2) = parse_constraints(["accuracy_drop <= 1.0", "latency_p90_b1 <= 0.5 * baseline"])
    assert c1.violation({"accuracy_drop": 0.5}, {}) < 0 < c1.violation({"accuracy_drop": 1.5}, {})
    assert c2.bound({"latency_p90_b1": 4.0}) == 2.0
    assert c2.violation({"latency_p90_b1": 3.0}, {"latency_p90_b1": 4.0}) > 0
    assert c1.violation({}, {}) > 0  # not measured: infeasible


@pytest.mark.parametrize(
    "call, fragment",
    [
        (lambda: parse_objectives(["acuracy"]), "unknown objective 'acuracy'"),
        (lambda: parse_objectives([]), "at least one objective"),
        (lambda: parse_constraints(["bytes < = 3"]), "must look like"),
        (lambda: parse_constraints(["speed <= 3"]), "unknown metric 'speed'"),
        (lambda: check_feasible(parse_constraints(["bytes <= 0"]), {}), "can never hold"),
        (lambda: check_feasible(parse_constraints(["accuracy >= 1.5"]), {}), "can never hold"),
    ],
)
def test_bad_objectives_and_constraints(call, fragment):
    with pytest.raises(ModelscaleError, match=fragment):
        call()
