import pytest
from torch import nn

from modelscale.core.errors import ModelscaleError
from modelscale.core.select import Target, select_modules


class _MyLinear(nn.Linear):
    pass


def _model():
    return nn.Sequential(
        nn.Conv2d(1, 4, 3),
        nn.Sequential(nn.Linear(4, 4), _MyLinear(4, 4)),
        nn.Embedding(10, 4),
        nn.Linear(4, 2),
    )


def test_types_match_subclasses():
    names = [n for n, _ in select_modules(_model(), Target(types=("Linear",)))]
    assert names == ["1.0", "1.1", "3"]


def test_include_and_exclude_globs():
    t = Target(types=("Linear", "Conv2d"), include=("1.*", "0"), exclude=("1.1",))
    assert [n for n, _ in select_modules(_model(), t)] == ["0", "1.0"]


def test_empty_selection_is_an_error_listing_types():
    with pytest.raises(ModelscaleError, match="this model has module types: .*Embedding"):
        select_modules(_model(), Target(types=("LSTM",)))
    assert select_modules(_model(), Target(types=("LSTM",)), required=False) == []


def test_string_is_accepted_as_one_pattern():
    assert Target(types="Linear").types == ("Linear",)
    with pytest.raises(ModelscaleError):
        Target(include=[1, 2])
