"""What else the machine was doing while a timing ran: the evidence behind a "machine busy" flag.

A paired timing cannot see a neighbour that slows both models for the whole call: the ratio shifts
(shared caches, memory bandwidth and clock speed do not slow every kernel alike) and every pair
agrees with the shift. So the timing loop watches the machine itself, from Linux's own counters:

- **own share**: CPU seconds of the timing thread / wall seconds. Below 1 the thread was waiting for
  its core (another process ran there, or the hypervisor took it): the timings hold someone else's work.
- **other processes' CPU use**, in cores: the busy time of all CPUs (`/proc/stat`: user, nice, system,
  irq, softirq) minus this process's own CPU time, over the wall time of the window.
- **runnable tasks**: `procs_running` of `/proc/loadavg` (this process included), sampled during the
  timing — the load at that moment, where the 1-minute load average lags by a minute (the flag reads
  the median of the samples, so a kernel thread passing at one sample does not decide it).

`paired_stats.contention_reasons` turns these into flags. Where the counters do not exist (not Linux)
every figure is None and nothing is flagged from them.

Example::

    from modelscale.measure.contention import ContentionProbe
    probe = ContentionProbe().start()
    for _ in range(100):
        model(x)
        probe.sample()
    print(probe.stop().to_dict())
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass

from modelscale.measure._report import Report

BUSY_FIELDS = (0, 1, 2, 5, 6)  # user, nice, system, irq, softirq of a /proc/stat cpu line
STEAL_FIELD = 7


@dataclass
class Contention(Report):
    """The machine during a timing window (None where the OS has no such counter)."""

    window_s: float  # wall seconds watched
    cores: int  # CPUs of the machine
    own_share: float | None  # timing thread's CPU seconds / wall seconds (1.0: it never waited)
    others_cores: float | None  # other processes' CPU use, in cores, averaged over the window
    steal_cores: float | None  # CPU time the hypervisor gave to other guests, in cores
    runnable_mean: float | None  # mean of the sampled runnable-task counts (this process included)
    runnable_max: int | None
    runnable_median: float | None = None  # what the flag reads: a passing kernel thread does not move it
    samples: int = 0  # runnable-task samples taken


def parse_proc_stat(text: str) -> tuple[int, int, int] | None:
    """(busy, steal, cpus) jiffies summed over the per-CPU lines of a /proc/stat text."""
    busy = steal = cpus = 0
    for line in text.splitlines():
        name, _, rest = line.partition(" ")
        if not (name.startswith("cpu") and name[3:].isdigit()):
            continue
        fields = [int(v) for v in rest.split()]
        busy += sum(fields[i] for i in BUSY_FIELDS if i < len(fields))
        steal += fields[STEAL_FIELD] if len(fields) > STEAL_FIELD else 0
        cpus += 1
    return (busy, steal, cpus) if cpus else None


def parse_runnable(text: str) -> int | None:
    """The running-task count of a /proc/loadavg text ("0.52 0.40 0.31 3/412 9876" -> 3)."""
    try:
        return int(text.split()[3].split("/")[0])
    except (IndexError, ValueError):
        return None


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def summarize(
    *,
    wall_s: float,
    thread_cpu_s: float | None,
    process_cpu_s: float,
    stat_before: tuple[int, int, int] | None,
    stat_after: tuple[int, int, int] | None,
    runnable: list[int],
    cores: int,
    ticks_per_s: float = 100.0,
) -> Contention:
    """The window's figures from its counter readings (pure arithmetic; what `ContentionProbe` calls)."""
    wall = max(wall_s, 1e-9)
    others = steal = None
    if stat_before and stat_after:
        busy_s = (stat_after[0] - stat_before[0]) / ticks_per_s
        others = max(0.0, (busy_s - process_cpu_s) / wall)
        steal = max(0.0, (stat_after[1] - stat_before[1]) / ticks_per_s / wall)
    return Contention(
        window_s=wall_s,
        cores=cores,
        own_share=None if thread_cpu_s is None else min(1.0, thread_cpu_s / wall),
        others_cores=others,
        steal_cores=steal,
        runnable_mean=sum(runnable) / len(runnable) if runnable else None,
        runnable_max=max(runnable) if runnable else None,
        runnable_median=float(statistics.median(runnable)) if runnable else None,
        samples=len(runnable),
    )


class ContentionProbe:
    """Watches the machine from `start()` to `stop()`; `sample()` records the runnable tasks now."""

    def __init__(self, cores: int | None = None) -> None:
        self.cores = cores or os.cpu_count() or 1
        try:
            self.ticks = float(os.sysconf("SC_CLK_TCK"))
        except (AttributeError, ValueError, OSError):
            self.ticks = 100.0
        self.runnable: list[int] = []

    def start(self) -> ContentionProbe:
        self.runnable = []
        self._stat = self._stat_now()
        self._wall = time.perf_counter()
        self._thread = _thread_time()
        self._process = time.process_time()
        return self

    def sample(self) -> None:
        text = _read("/proc/loadavg")
        count = parse_runnable(text) if text else None
        if count is not None:
            self.runnable.append(count)

    def stop(self) -> Contention:
        wall = time.perf_counter() - self._wall
        thread = _thread_time()
        process = time.process_time() - self._process
        return summarize(
            wall_s=wall,
            thread_cpu_s=None if thread is None or self._thread is None else thread - self._thread,
            process_cpu_s=process,
            stat_before=self._stat,
            stat_after=self._stat_now(),
            runnable=self.runnable,
            cores=self.cores,
            ticks_per_s=self.ticks,
        )

    @staticmethod
    def _stat_now() -> tuple[int, int, int] | None:
        text = _read("/proc/stat")
        return parse_proc_stat(text) if text else None


def _thread_time() -> float | None:
    try:
        return time.thread_time()
    except (AttributeError, OSError):
        return None
