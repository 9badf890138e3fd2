from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import pytest

from modelscale.core.config import Config, TechniqueConfig, check_range, param
from modelscale.core.errors import ModelscaleError
from modelscale.core.select import Target


@dataclass(kw_only=True)
class _Demo(TechniqueConfig):
    type: ClassVar[str] = "demo_technique"
    version: ClassVar[int] = 2
    amount: float = param(0.5, "how much")
    mode: Literal["a", "b"] = param("a", "which mode")
    sizes: tuple[int, ...] = param((1, 2), "some sizes")
    limit: int | None = param(None, "optional limit")

    def validate(self) -> None:
        check_range("amount", self.amount, 0.0, 1.0)

    @classmethod
    def migrate(cls, data, from_version):
        if from_version == 1 and "ratio" in data:
            data["amount"] = data.pop("ratio")
        return data


def test_keyword_only_and_defaults():
    with pytest.raises(TypeError):
        _Demo(0.3)  # type: ignore[misc]
    assert _Demo().amount == 0.5


def test_round_trip_through_dict_json_yaml():
    import json

    import yaml

    c = _Demo(amount=0.25, mode="b", sizes=(3, 4), limit=7, target=Target(include=("layer.*",)))
    assert _Demo.from_dict(c.to_dict()) == c
    assert _Demo.from_dict(json.loads(c.to_json())) == c
    assert _Demo.from_dict(yaml.safe_load(c.to_yaml())) == c


def test_json_lists_become_tuples_and_ints_become_floats():
    c = _Demo.from_dict({"amount": 1, "sizes": [5, 6], "target": {"types": ["Linear"]}})
    assert c.amount == 1.0 and isinstance(c.amount, float)
    assert c.sizes == (5, 6)
    assert c.target.types == ("Linear",)


@pytest.mark.parametrize(
    "data, message",
    [
        ({"amount": 2.0}, "amount must be <= 1.0"),
        ({"amount": "x"}, "amount must be float"),
        ({"mode": "c"}, "mode must be one of a, b"),
        ({"bogus": 1}, "unknown field"),
        ({"version": 3}, "version 3 is not supported"),
        ({"type": "other"}, "config type 'other'"),
        ({"target": {"typo": 1}}, "unknown key"),
        ({"target": {"overrides": {"x": {"amount": 5}}}}, "amount must be <= 1.0"),
        ({"target": {"overrides": {"x": {"nope": 5}}}}, "unknown field"),
        ({"sizes": "12"}, "sizes must be a list"),
    ],
)
def test_bad_values_give_one_line_errors(data, message):
    with pytest.raises(ModelscaleError, match=message) as info:
        _Demo.from_dict(data)
    assert "\n" not in str(info.value)


def test_old_version_migrates():
    assert _Demo.from_dict({"version": 1, "ratio": 0.125}).amount == 0.125


def test_per_layer_override():
    c = _Demo(amount=0.5, target=Target(overrides={"enc.*": {"amount": 0.1}, "enc.2": {"amount": 0.2}}))
    assert c.for_layer("dec.0", "amount") == 0.5
    assert c.for_layer("enc.0", "amount") == 0.1
    assert c.for_layer("enc.2", "amount") == 0.2  # later globs win


def test_fields_help_lists_every_field():
    names = [row[0] for row in _Demo.fields_help()]
    assert names == ["target", "amount", "mode", "sizes", "limit"]
    assert dict((r[0], r[2]) for r in _Demo.fields_help())["amount"] == "how much"


def test_plain_config_base_has_no_target():
    @dataclass(kw_only=True)
    class Plain(Config):
        type: ClassVar[str] = "plain"
        n: int = param(1, "n")

    assert Plain.from_dict({"n": 3}).to_dict() == {"type": "plain", "version": 1, "n": 3}
    with pytest.raises(ModelscaleError, match="n must be int"):
        Plain(n=True)
