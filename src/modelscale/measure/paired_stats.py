"""Statistics of a paired A/B timing that stay honest on a busy machine.

Two models are timed interleaved (`measure.latency`), so repeat i gives a pair (a_i, b_i) taken
moments apart under the same neighbours. The timing runs in **rounds** (fresh copies of both models,
so a new memory placement, and the order swapped); pair i carries its round's label. The ratio
reported is the **median of the per-pair ratios** r_i = a_i / b_i (a load spike inflates one pair, not
a whole median), after trimming outlier pairs whose log-ratio lies more than `TRIM_MADS` median
absolute deviations from its round's median log-ratio (their count is reported).

Its 95% confidence interval is a **hierarchical bootstrap** of that median: resample the rounds with
replacement, then, inside each drawn round, blocks of about n^(1/3) consecutive pairs (a moving-block
bootstrap, so a drift within a round widens the interval too); the pooled median of each resample
gives the percentile interval (seeded: the same samples give the same interval). Pairs of one round
share that round's memory placement, clock and neighbours, so they are not independent evidence:
only differences *between* rounds show how much those conditions move the ratio, and resampling
rounds lets them widen the interval. With R rounds the bootstrap sees R values of that between-round
level, so its half-widths are scaled by t(0.975, R−1) / z(0.975) · √(R / (R−1)) (Student's small-sample
quantile, and the bootstrap's (R−1)/R variance bias); with one round it is the plain moving-block
interval. Rounds continue until the interval's relative width ((hi − lo) / ratio) is at most
`target_width`, or the time budget or the repeat cap is spent.

A measurement is **unstable** when the interval stayed wider than the target, when either side's
p90 is more than `P90_LIMIT`× its median, when more than `TRIM_LIMIT` of the pairs were outliers, when
the machine's 1-minute load (before or after) exceeded the machine's core count (the load average
counts the whole machine, so it is compared with all its cores, not with a pinned process's), or when
the machine was busy while timing (`measure.contention`): the timing thread had its core less than
`OWN_SHARE_MIN` of the time, other processes used at least `BUSY_LIMIT` of the cores it left free
(their use of shared caches, memory bandwidth and clock speed shifts a ratio in a way that every
pair of the call shares, so no interval computed from the call can show it: with one busy loop on
the other core of a 2-core machine, `benchmarks/latency_under_load.py` saw ratios about 3% below the
quiet figure), or the median of the runnable-task counts sampled during timing exceeded the cores. The verdict is "faster" or "slower" only for
a stable measurement whose whole interval lies above or below 1; otherwise "no clear difference" or
"unstable" — never a speedup.

Example::

    from modelscale.measure.paired_stats import pair_stats
    stats = pair_stats(a_ms, b_ms, rounds=labels, load_before=0.4, load_after=0.5)
    print(stats.ratio, stats.ci_low, stats.ci_high, stats.rounds, stats.verdict, stats.reasons)
"""

from __future__ import annotations

import math
import os
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from modelscale.measure._report import Report
from modelscale.measure.contention import Contention

TARGET_WIDTH = 0.10  # relative width of the 95% interval the repeats aim for
TRIM_MADS = 5.0  # a pair whose log-ratio is this many MADs from its round's median is an outlier
TRIM_LIMIT = 0.10  # more outliers than this fraction of the pairs: unstable
P90_LIMIT = 1.5  # p90 / median above this on either side: unstable
BOOTSTRAP = 400  # resamples for the interval
MIN_PAIRS = 10
OWN_SHARE_MIN = 0.9  # the timing thread ran less than this share of the wall time: unstable
BUSY_LIMIT = 0.5  # other processes used this share of the cores the timing left free: unstable
Z975 = 1.959964
T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
        2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
        2.052, 2.048, 2.045, 2.042)  # fmt: skip


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
    rounds: int = 1  # rounds the pairs were timed in (the bootstrap resamples them)
    round_spread: float | None = None  # std of the rounds' median log-ratios (≈ relative std; 2+ rounds)
    fresh_copies: bool = False  # each round timed fresh copies of both models (new memory placement)
    contention: Contention | None = None  # the machine while timing (`measure.contention`)

    def describe(self) -> str:
        """One line: ratio, interval, pairs, and the flag with its reasons."""
        text = f"{self.ratio:.2f}× [95% CI {self.ci_low:.2f}–{self.ci_high:.2f}], {self.pairs} pairs"
        if self.rounds > 1:
            text += f" in {self.rounds} rounds"
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


def t975(df: int) -> float:
    """Student's t 97.5% quantile with `df` degrees of freedom (table to 30, Cornish–Fisher above)."""
    if df < 1:
        return float("inf")
    if df <= len(T975):
        return T975[df - 1]
    z = Z975
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def small_sample_factor(rounds: int) -> float:
    """How much the hierarchical bootstrap's half-widths are widened for `rounds` resampled rounds."""
    if rounds < 2:
        return 1.0
    return t975(rounds - 1) / Z975 * math.sqrt(rounds / (rounds - 1))


def _grouped_logs(
    a_ms: Sequence[float], b_ms: Sequence[float], rounds: Sequence[int] | None
) -> tuple[list[list[float]], int]:
    """Kept log-ratios per round (time order), and how many pairs were trimmed as outliers."""
    labels = [0] * len(a_ms) if rounds is None else list(rounds)
    if len(labels) != len(a_ms) or len(a_ms) != len(b_ms):
        raise ValueError("a_ms, b_ms and rounds must have one entry per pair")
    groups: dict[int, list[float]] = {}
    for a, b, r in zip(a_ms, b_ms, labels):
        if a > 0 and b > 0:
            groups.setdefault(r, []).append(math.log(a / b))
    logs = [g for g in groups.values() if g]
    total = sum(len(g) for g in logs)
    if total < 3:
        return logs, 0
    centers = [statistics.median(g) for g in logs]
    deviations = [abs(x - c) for g, c in zip(logs, centers) for x in g]
    scale = max(statistics.median(deviations) * 1.4826, 1e-3)  # pooled within-round MAD, floored
    kept = [[x for x in g if abs(x - c) <= TRIM_MADS * scale] for g, c in zip(logs, centers)]
    kept = [g for g in kept if g]
    return kept, total - sum(len(g) for g in kept)


def _block_indices(rng: np.random.Generator, n: int) -> np.ndarray:
    block = min(n, max(1, round(n ** (1 / 3))))
    starts = rng.integers(0, n - block + 1, size=math.ceil(n / block))
    return (starts[:, None] + np.arange(block)).ravel()[:n]


def ratio_interval(
    a_ms: Sequence[float],
    b_ms: Sequence[float],
    *,
    rounds: Sequence[int] | None = None,
    seed: int = 0,
    resamples: int = BOOTSTRAP,
) -> tuple[float, float, float, int]:
    """(median ratio, 95% low, 95% high, pairs trimmed) of the paired samples; `rounds` labels
    each pair's round (None: one round). See the module docstring for the method."""
    groups, trimmed = _grouped_logs(a_ms, b_ms, rounds)
    if not groups:
        return float("nan"), float("nan"), float("nan"), trimmed
    arrays = [np.asarray(g, dtype=float) for g in groups]
    center = float(np.median(np.concatenate(arrays)))
    rng = np.random.default_rng(seed)
    r = len(arrays)
    medians = np.empty(resamples)
    for k in range(resamples):
        picks = rng.integers(0, r, size=r) if r > 1 else (0,)
        medians[k] = np.median(
            np.concatenate([arrays[i][_block_indices(rng, len(arrays[i]))] for i in picks])
        )
    lo, hi = np.quantile(medians, [0.025, 0.975])
    f = small_sample_factor(r)
    lo, hi = center - f * (center - min(lo, center)), center + f * (max(hi, center) - center)
    return math.exp(center), math.exp(lo), math.exp(hi), trimmed


def round_spread(a_ms: Sequence[float], b_ms: Sequence[float], rounds: Sequence[int] | None) -> float | None:
    """Standard deviation of the rounds' median log-ratios (None with fewer than 2 rounds)."""
    groups, _ = _grouped_logs(a_ms, b_ms, rounds)
    if len(groups) < 2:
        return None
    return statistics.stdev(statistics.median(g) for g in groups)


def contention_reasons(c: Contention | None, threads: int) -> list[str]:
    """Why the machine was too busy while timing for the ratio to be trusted (empty: it was not)."""
    if c is None:
        return []
    reasons = []
    if c.own_share is not None and c.own_share < OWN_SHARE_MIN:
        reasons.append(
            f"machine busy: the timing thread had its core only {100 * c.own_share:.0f}% of the time "
            "(other processes ran on it)"
        )
    free = c.cores - threads
    if c.others_cores is not None and free > 0 and c.others_cores >= BUSY_LIMIT * free:
        reasons.append(
            f"machine busy: other processes used {c.others_cores:.1f} of the {free} core(s) the timing "
            "left free (a neighbour's use of shared caches, memory bandwidth and clock speed shifts the ratio)"
        )
    if c.runnable_median is not None and c.runnable_median > c.cores:
        reasons.append(
            f"machine busy: {c.runnable_median:g} runnable tasks (median of {c.samples} samples) while "
            f"timing, above its {c.cores} cores"
        )
    return reasons


def pair_stats(
    a_ms: list[float],
    b_ms: list[float],
    *,
    rounds: Sequence[int] | None = None,
    load_before: float | None = None,
    load_after: float | None = None,
    threads: int = 1,
    target_width: float = TARGET_WIDTH,
    cores: int | None = None,
    fresh_copies: bool = False,
    contention: Contention | None = None,
) -> PairStats:
    """Robust statistics of paired timings `a_ms[i]`, `b_ms[i]` timed in round `rounds[i]` (see the
    module docstring); `contention` is what the machine did meanwhile (`measure.contention`)."""
    ratio, lo, hi, trimmed = ratio_interval(a_ms, b_ms, rounds=rounds)
    cores = machine_cores() if cores is None else cores
    width = (hi - lo) / ratio if ratio and math.isfinite(ratio) else float("inf")
    p90a = _quantile(a_ms, 0.9) / statistics.median(a_ms)
    p90b = _quantile(b_ms, 0.9) / statistics.median(b_ms)
    reasons = []
    if len(a_ms) < MIN_PAIRS:
        reasons.append(f"only {len(a_ms)} pairs (fewer than {MIN_PAIRS})")
    if width > target_width:
        reasons.append(f"95% interval is ±{50 * width:.1f}% (target ±{50 * target_width:.1f}%)")
    for name, value in (("base", p90a), ("other", p90b)):
        if value > P90_LIMIT:
            reasons.append(f"{name}'s p90 is {value:.1f}× its median")
    if trimmed > TRIM_LIMIT * len(a_ms):
        reasons.append(f"{trimmed} of {len(a_ms)} pairs were outliers")
    loads = [v for v in (load_before, load_after) if v is not None]
    if loads and max(loads) > cores:
        reasons.append(f"machine load {max(loads):.1f} above its {cores} cores")
    reasons.extend(contention_reasons(contention, threads))
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
        rounds=len(set(rounds)) if rounds is not None else 1,
        round_spread=round_spread(a_ms, b_ms, rounds),
        fresh_copies=fresh_copies,
        contention=contention,
    )


def trusted_speedup(stats: PairStats | None) -> bool:
    """Whether a ratio may be called a speedup (stable, and its whole interval above 1)."""
    return stats is not None and stats.verdict == "faster"
