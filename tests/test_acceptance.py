"""Acceptance figures of the foundation, checked on real data."""

from __future__ import annotations


def test_zoo_cnn_reaches_97_percent_on_digits(digits_cnn):
    _, accuracy = digits_cnn
    assert accuracy >= 0.97, accuracy
