"""The statistics of a paired timing, on constructed samples: robust ratio, trimmed outliers, interval,
and the flags that keep an untrustworthy figure from being called a speedup."""

from __future__ import annotations

import math
import random

import pytest

from modelscale.measure.paired_stats import pair_stats, ratio_interval, trusted_speedup


def _samples(
    n: int, a: float, b: float, noise: float = 0.01, seed: int = 0
) -> tuple[list[float], list[float]]:
    rng = random.Random(seed)
    return [a * (1 + rng.gauss(0, noise)) for _ in range(n)], [
        b * (1 + rng.gauss(0, noise)) for _ in range(n)
    ]


def test_a_quiet_clear_speedup_is_faster_with_a_tight_interval():
    a, b = _samples(60, 2.0, 1.0)
    stats = pair_stats(a, b, load_before=0.2, load_after=0.3, cores=2)
    assert stats.ratio == pytest.approx(2.0, rel=0.02)
    assert stats.ci_low < 2.0 < stats.ci_high and stats.width < 0.05
    assert stats.verdict == "faster" and not stats.unstable and trusted_speedup(stats)


def test_load_spikes_in_a_few_pairs_are_trimmed_not_believed():
    a, b = _samples(60, 2.0, 1.0)
    for i in (3, 17, 40):
        b[i] *= 40.0  # a neighbour stole the core during three of other's calls
    stats = pair_stats(a, b, cores=2)
    plain = sorted(a)[30] / sorted(b)[30]
    assert stats.trimmed == 3 and stats.ratio == pytest.approx(2.0, rel=0.02)
    assert plain == pytest.approx(2.0, rel=0.05)  # the medians survive three spikes too …
    for i in range(0, 60, 3):
        b[i] *= 40.0  # … but not a third of the pairs: then the measurement is unstable
    worse = pair_stats(a, b, cores=2)
    assert worse.unstable and any("p90" in r or "outliers" in r for r in worse.reasons)
    assert worse.verdict == "unstable" and not trusted_speedup(worse)


def test_an_interval_containing_one_is_no_clear_difference():
    a, b = _samples(80, 1.0, 1.0, noise=0.01)
    stats = pair_stats(a, b, cores=2)
    assert stats.ci_low <= 1.0 <= stats.ci_high
    assert stats.verdict == "no clear difference" and not trusted_speedup(stats)


def test_a_loaded_machine_is_flagged_whatever_the_numbers():
    a, b = _samples(60, 2.0, 1.0)
    stats = pair_stats(a, b, load_before=4.5, load_after=5.1, cores=2)
    assert stats.unstable and "machine load 5.1 above its 2 cores" in stats.reasons
    assert "UNSTABLE" in stats.describe()


def test_a_wide_interval_is_flagged():
    a, b = _samples(12, 2.0, 1.0, noise=0.3, seed=4)
    stats = pair_stats(a, b, cores=2, target_width=0.05)
    assert stats.width > 0.05 and stats.unstable
    assert any("95% interval" in r for r in stats.reasons)


def test_too_few_pairs_are_flagged_and_slower_is_reported_as_slower():
    a, b = _samples(5, 1.0, 2.0)
    assert "only 5 pairs" in pair_stats(a, b, cores=2).reasons[0]
    a, b = _samples(50, 1.0, 2.0)
    assert pair_stats(a, b, cores=2).verdict == "slower"


def test_the_interval_is_reproducible_and_nan_free_for_degenerate_input():
    a, b = _samples(30, 3.0, 1.5, seed=9)
    assert ratio_interval(a, b) == ratio_interval(a, b)
    ratio, lo, hi, trimmed = ratio_interval([0.0], [0.0])
    assert math.isnan(ratio) and trimmed == 0


def test_a_drift_in_time_widens_the_interval():
    # the same per-pair ratios, once drifting slowly (a neighbour ramping up) and once shuffled:
    # the block bootstrap sees the drift in time order, so the ordered series gets the wider interval
    logs = [0.15 * i / 199 for i in range(200)]
    shuffled = logs[:]
    random.Random(0).shuffle(shuffled)
    drift = pair_stats([math.exp(x) for x in logs], [1.0] * 200, cores=2)
    mixed = pair_stats([math.exp(x) for x in shuffled], [1.0] * 200, cores=2)
    assert drift.ratio == mixed.ratio
    assert drift.width > 1.3 * mixed.width


def test_load_is_compared_with_the_machine_cores_not_a_pinned_process():
    import os

    a, b = _samples(60, 2.0, 1.0)
    cores = os.cpu_count() or 1
    stats = pair_stats(a, b, load_before=cores - 0.5, load_after=cores - 0.5)
    assert stats.cores == cores and not any("load" in r for r in stats.reasons)


def _rounds(levels: list[float], per_round: int, noise: float = 0.01, seed: int = 0):
    """Pairs whose ratio sits at exp(level) in each round (a placement / stretch of time), plus noise."""
    rng = random.Random(seed)
    a, labels = [], []
    for r, level in enumerate(levels):
        for _ in range(per_round):
            a.append(2.0 * math.exp(level) * (1 + rng.gauss(0, noise)))
            labels.append(r)
    return a, [1.0] * len(a), labels


def test_rounds_at_different_levels_widen_the_interval_to_cover_them():
    # the same pairs, once labelled by their rounds and once as one round: only the labelled interval
    # sees that the rounds disagree (as separate processes would), and it covers every round's level
    levels = [0.0, 0.06, -0.04, 0.03, -0.05, 0.05]
    a, b, labels = _rounds(levels, 80)
    pooled = pair_stats(a, b, cores=2)
    rounds = pair_stats(a, b, rounds=labels, cores=2)
    assert rounds.rounds == 6 and pooled.rounds == 1
    assert rounds.width > 3 * pooled.width
    assert rounds.round_spread == pytest.approx(0.047, abs=0.01)
    assert rounds.ci_low < 2.0 * math.exp(-0.02) and rounds.ci_high > 2.0 * math.exp(0.02)


def test_rounds_that_agree_keep_the_interval_tight():
    a, b, labels = _rounds([0.0] * 8, 60)
    stats = pair_stats(a, b, rounds=labels, cores=2)
    assert stats.rounds == 8 and stats.width < 0.02 and stats.verdict == "faster"


def test_a_shifted_round_is_not_trimmed_as_outliers():
    # trimming is around each round's own median: a whole round at another level is evidence, not spikes
    a, b, labels = _rounds([0.0, 0.0, 0.3, 0.0, 0.0, 0.0], 40, noise=0.005)
    stats = pair_stats(a, b, rounds=labels, cores=2)
    assert stats.trimmed == 0 and stats.ci_high > 2.0 * math.exp(0.05)


def test_fewer_rounds_get_the_small_sample_widening():
    from modelscale.measure.paired_stats import small_sample_factor, t975

    assert small_sample_factor(1) == 1.0
    assert small_sample_factor(3) > small_sample_factor(6) > small_sample_factor(30) > 1.0
    assert t975(4) == pytest.approx(2.776) and t975(200) == pytest.approx(1.972, abs=0.002)


def test_a_busy_machine_is_flagged_with_its_reason():
    from modelscale.measure.contention import Contention

    a, b, labels = _rounds([0.0] * 6, 40)
    quiet = Contention(
        window_s=0.5, cores=2, own_share=0.99, others_cores=0.05, steal_cores=0.0, runnable_mean=1.1,
        runnable_max=2, samples=30,
    )  # fmt: skip
    assert not pair_stats(a, b, rounds=labels, cores=2, threads=1, contention=quiet).unstable
    neighbour = Contention(**{**quiet.to_dict(), "others_cores": 0.97, "runnable_median": 2.0})
    stats = pair_stats(a, b, rounds=labels, cores=2, threads=1, contention=neighbour)
    assert stats.unstable and stats.verdict == "unstable"
    assert any("1.0 of the 1 core(s)" in r and "left free" in r for r in stats.reasons)
    assert not any("runnable" in r for r in stats.reasons)  # 2 runnable on 2 cores is not above them
    shared = Contention(**{**quiet.to_dict(), "own_share": 0.6, "runnable_median": 3.0})
    reasons = pair_stats(a, b, rounds=labels, cores=2, threads=1, contention=shared).reasons
    assert any("only 60% of the time" in r for r in reasons)
    assert any("3 runnable tasks" in r and "above its 2 cores" in r for r in reasons)
    # all cores used by the timing itself: others are not compared with a free core that is not there
    own = Contention(**{**quiet.to_dict(), "others_cores": 0.3})
    assert not pair_stats(a, b, rounds=labels, cores=2, threads=2, contention=own).unstable
