"""Statistics of a paired A/B timing that stay honest on a busy machine.

Two models are timed interleaved (`measure.latency`), so repeat i gives a pair (a_i, b_i) taken
moments apart under the same neighbours. The ratio reported is the **median of the per-pair ratios**
r_i = a_i / b_i (a load spike inflates one pair, not a whole median), after trimming outlier pairs
whose log-ratio lies more than `TRIM_MADS` median absolute deviations from the median log-ratio (their
count is reported). Its 95% confidence interval is a percentile **moving-block** bootstrap of that
median over the kept pairs, in time order: blocks of about n^(1/3) consecutive pairs are resampled
together, so a slow drift (a neighbour starting, the clock stepping) widens the interval instead of
hiding inside it as it would with independent resampling (seeded: the same samples give the same
interval). Repeats continue in rounds until the
interval's relative width ((hi − lo) / ratio) is at most `target_width`, or the time budget or the
repeat cap is spent.

A measurement is **unstable** when the interval stayed wider than the target, when either side's
p90 is more than `P90_LIMIT`× its median, when more than `TRIM_LIMIT` of the pairs were outliers, or
when the machine's 1-minute load (before or after) exceeded the machine's core count (the load
average counts the whole machine, so it is compared with all its cores, not with a pinned process's). The
verdict is "faster" or "slower" only for a stable measurement whose whole interval lies above or
below 1; otherwise "no clear difference" or "unstable" — never a speedup.

Example::

    from modelscale.measure.paired_stats import pair_stats
    stats = pair_stats(a_ms, b_ms, load_before=0.4, load_after=0.5)
    print(stats.ratio, stats.ci_low, stats.ci_high, stats.verdict, stats.reasons)
"""

from __future__ import annotations

import math
import os
import random
import statistics
from dataclasses import dataclass, field

from modelscale.measure._report import Report

TARGET_WIDTH = 0.10  # relative width of the 95% interval the repeats aim for
TRIM_MADS = 5.0  # a pair whose log-ratio is this many MADs from the median is an outlier
TRIM_LIMIT = 0.10  # more outliers than this fraction of the pairs: unstable
P90_LIMIT = 1.5  # p90 / median above this on either side: unstable
BOOTSTRAP = 400  # resamples for the interval
MIN_PAIRS = 10


@dataclass
class PairStats(Report):
    """The robust ratio a / b of a paired timing, its 95% interval, and whether it can be trusted."""

    ratio: float  # median of per-pair ratios a_i / b_i over the kept pairs (> 1: b is faster)
    ci_low: float
    ci_high: float
    pairs: int  # pairs timed
    trimmed: int  # outlier pairs left out of the ratio
    target_width: float
    width: float  # (ci_high − ci_low) / ratio
    p90_over_median_a: float
    p90_over_median_b: float
    load_before: float | None  # 1-minute load average before timing (None where the OS has none)
    load_after: float | None
    cores: int  # CPU cores of the machine (the load average is machine-wide)
    threads: int  # intra-op threads used while timing
    unstable: bool = False
    reasons: list[str] = field(default_factory=list)
    verdict: str = "no clear difference"  # "faster" | "slower" | "no clear difference" | "unstable"

    def describe(self) -> str:
        """One line: ratio, interval, pairs, and the flag with its reasons."""
        text = f"{self.ratio:.2f}× [95% CI {self.ci_low:.2f}–{self.ci_high:.2f}], {self.pairs} pairs"
        if self.trimmed:
            text += f" ({self.trimmed} outliers trimmed)"
        if self.unstable:
            text += " — UNSTABLE: " + "; ".join(self.reasons)
        elif self.verdict == "no clear difference":
            text += " — no clear difference (the interval contains 1)"
        return text


def machine_load() -> float | None:
    """The 1-minute load average, or None where the OS does not report one."""
    try:
        return float(os.getloadavg()[0])
    except (AttributeError, OSError):
        return None


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity), for thread defaults."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def machine_cores() -> int:
    """CPU cores of the whole machine: what a machine-wide load average is compared with."""
    return os.cpu_count() or usable_cores()


def _quantile(values: list[float], q: float) -> float:
    s = sorted(values)
    pos = (len(s) - 1) * q
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def _kept_log_ratios(a_ms: list[float], b_ms: list[float]) -> tuple[list[float], int]:
    logs = [math.log(a / b) for a, b in zip(a_ms, b_ms, strict=True) if a > 0 and b > 0]
    if len(logs) < 3:
        return logs, 0
    center = statistics.median(logs)
    mad = statistics.median(abs(x - center) for x in logs)
    scale = max(mad * 1.4826, 1e-3)  # MAD as a normal-consistent spread; floor for near-identical pairs
    kept = [x for x in logs if abs(x - center) <= TRIM_MADS * scale]
    return kept, len(logs) - len(kept)


def ratio_interval(a_ms: list[float], b_ms: list[float], *, seed: int = 0) -> tuple[float, float, float, int]:
    """(median ratio, 95% low, 95% high, pairs trimmed) of the paired samples."""
    kept, trimmed = _kept_log_ratios(a_ms, b_ms)
    if not kept:
        return float("nan"), float("nan"), float("nan"), trimmed
    center = statistics.median(kept)
    rng = random.Random(seed)
    n = len(kept)
    block = max(1, round(n ** (1 / 3)))
    starts = range(n - block + 1)
    medians = []
    for _ in range(BOOTSTRAP):
        resample: list[float] = []
        while len(resample) < n:
            i = rng.choice(starts)
            resample.extend(kept[i : i + block])
        medians.append(statistics.median(resample[:n]))
    return math.exp(center), math.exp(_quantile(medians, 0.025)), math.exp(_quantile(medians, 0.975)), trimmed


def pair_stats(
    a_ms: list[float],
    b_ms: list[float],
    *,
    load_before: float | None = None,
    load_after: float | None = None,
    threads: int = 1,
    target_width: float = TARGET_WIDTH,
    cores: int | None = None,
) -> PairStats:
    """Robust statistics of paired timings `a_ms[i]`, `b_ms[i]` (see the module docstring)."""
    ratio, lo, hi, trimmed = ratio_interval(a_ms, b_ms)
    cores = machine_cores() if cores is None else cores
    width = (hi - lo) / ratio if ratio and math.isfinite(ratio) else float("inf")
    p90a = _quantile(a_ms, 0.9) / statistics.median(a_ms)
    p90b = _quantile(b_ms, 0.9) / statistics.median(b_ms)
    reasons = []
    if len(a_ms) < MIN_PAIRS:
        reasons.append(f"only {len(a_ms)} pairs (fewer than {MIN_PAIRS})")
    if width > target_width:
        reasons.append(f"95% interval is ±{50 * width:.0f}% (target ±{50 * target_width:.0f}%)")
    for name, value in (("base", p90a), ("other", p90b)):
        if value > P90_LIMIT:
            reasons.append(f"{name}'s p90 is {value:.1f}× its median")
    if trimmed > TRIM_LIMIT * len(a_ms):
        reasons.append(f"{trimmed} of {len(a_ms)} pairs were outliers")
    loads = [v for v in (load_before, load_after) if v is not None]
    if loads and max(loads) > cores:
        reasons.append(f"machine load {max(loads):.1f} above its {cores} cores")
    unstable = bool(reasons)
    if unstable:
        verdict = "unstable"
    elif lo > 1.0:
        verdict = "faster"
    elif hi < 1.0:
        verdict = "slower"
    else:
        verdict = "no clear difference"
    return PairStats(
        ratio=ratio,
        ci_low=lo,
        ci_high=hi,
        pairs=len(a_ms),
        trimmed=trimmed,
        target_width=target_width,
        width=width,
        p90_over_median_a=p90a,
        p90_over_median_b=p90b,
        load_before=load_before,
        load_after=load_after,
        cores=cores,
        threads=threads,
        unstable=unstable,
        reasons=reasons,
        verdict=verdict,
    )


def trusted_speedup(stats: PairStats | None) -> bool:
    """Whether a ratio may be called a speedup (stable, and its whole interval above 1)."""
    return stats is not None and stats.verdict == "faster"
