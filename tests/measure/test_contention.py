"""The machine-watching arithmetic on constructed /proc texts (no timing, no real load)."""

from __future__ import annotations

import pytest

from modelscale.measure.contention import ContentionProbe, parse_proc_stat, parse_runnable, summarize

STAT = """cpu  300 0 100 900 10 0 5 20 0 0
cpu0 100 0 50 450 5 0 2 10 0 0
cpu1 200 0 50 450 5 0 3 10 0 0
intr 12345
procs_running 3
"""


def test_proc_stat_sums_busy_and_steal_over_the_cpus_only():
    busy, steal, cpus = parse_proc_stat(STAT)
    assert (busy, steal, cpus) == (100 + 50 + 2 + 200 + 50 + 3, 20, 2)
    assert parse_proc_stat("intr 1\n") is None


def test_runnable_count_comes_from_loadavg():
    assert parse_runnable("0.52 0.40 0.31 3/412 9876\n") == 3
    assert parse_runnable("garbage") is None


def test_other_processes_are_the_busy_time_not_spent_by_this_process():
    # 1 s window, 100 ticks/s: the CPUs were busy 180 ticks = 1.8 core-seconds, 0.9 of them ours
    c = summarize(
        wall_s=1.0, thread_cpu_s=0.9, process_cpu_s=0.9, stat_before=(1000, 50, 2),
        stat_after=(1180, 60, 2), runnable=[2, 2, 3, 1], cores=2,
    )  # fmt: skip
    assert c.others_cores == pytest.approx(0.9) and c.steal_cores == pytest.approx(0.1)
    assert c.own_share == pytest.approx(0.9) and c.runnable_mean == 2.0 and c.runnable_max == 3
    assert c.runnable_median == 2.0
    quiet = summarize(
        wall_s=1.0, thread_cpu_s=1.0, process_cpu_s=1.02, stat_before=(0, 0, 2), stat_after=(100, 0, 2),
        runnable=[], cores=2,
    )  # fmt: skip
    assert quiet.others_cores == 0.0 and quiet.runnable_mean is None and quiet.samples == 0


def test_missing_counters_give_none_not_zero():
    c = summarize(
        wall_s=0.5, thread_cpu_s=None, process_cpu_s=0.5, stat_before=None, stat_after=None,
        runnable=[], cores=4,
    )  # fmt: skip
    assert c.own_share is None and c.others_cores is None and c.steal_cores is None


def test_the_probe_reports_a_window_it_watched():
    probe = ContentionProbe(cores=2).start()
    probe.sample()
    c = probe.stop()
    assert c.cores == 2 and c.window_s >= 0.0 and c.samples == len(probe.runnable)
    if c.own_share is not None:
        assert 0.0 <= c.own_share <= 1.0
