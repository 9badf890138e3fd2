"""Compute-optimal allocation from a joint law, and the empirical exponent of C ∝ N^k.

With training compute C = 6·N·D (Kaplan et al. 2020; Hoffmann et al. 2022), minimising
L(N, D) = E + A/N^α + B/D^β under that constraint gives (Hoffmann et al. 2022, appendix D.2)::

    N_opt(C) = G·(C/6)^a,   D_opt(C) = G⁻¹·(C/6)^b,
    a = β/(α+β),  b = α/(α+β),  G = (αA/(βB))^(1/(α+β))

so N_opt·D_opt = C/6 and C ∝ N_opt^(1/a). `fit_compute_exponent` estimates k in C ∝ N^k directly
from (N, C) pairs (e.g. the best run of each compute budget) by least squares on log C = k·log N + c,
with a Student-t interval for k.

Example::

    from modelscale.scaling.laws import JointLaw
    from modelscale.scaling.optimal import compute_optimal
    law = JointLaw(E=1.82, A=482.0, B=2085.0, alpha=0.348, beta=0.366)
    table = compute_optimal(law, [1e21, 1e23])
    print(table.n_opt, table.d_opt, table.loss_opt)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from modelscale.core.errors import ModelscaleError
from modelscale.scaling.laws import JointLaw

FLOPS_PER_PARAM_TOKEN = 6.0


def _safe(value) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


@dataclass
class ComputeOptimal:
    """N_opt, D_opt and L_opt for each compute budget (FLOPs), with bootstrap intervals when known."""

    budgets: np.ndarray
    n_opt: np.ndarray
    d_opt: np.ndarray
    loss_opt: np.ndarray
    a: float
    b: float
    G: float
    intervals: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    confidence: float | None = None

    def to_dict(self) -> dict:
        out: dict = {
            "formula": "C = 6*N*D; N_opt = G*(C/6)^a; D_opt = (C/6)^b / G",
            "a": _safe(self.a),
            "b": _safe(self.b),
            "G": _safe(self.G),
            "confidence": self.confidence,
            "rows": [],
        }
        for i, budget in enumerate(np.asarray(self.budgets, dtype=float).ravel()):
            row = {
                "compute": _safe(budget),
                "n_opt": _safe(self.n_opt[i]),
                "d_opt": _safe(self.d_opt[i]),
                "loss_opt": _safe(self.loss_opt[i]),
            }
            for key, (low, high) in self.intervals.items():
                row[f"{key}_low"] = _safe(low[i])
                row[f"{key}_high"] = _safe(high[i])
            out["rows"].append(row)
        return out


def optimal_exponents(law: JointLaw) -> tuple[float, float, float]:
    """(a, b, G) of the compute-optimal allocation for `law`."""
    total = law.alpha + law.beta
    if not total > 0:
        raise ModelscaleError("compute-optimal allocation needs alpha + beta > 0; the fitted law is flat")
    a = law.beta / total
    b = law.alpha / total
    G = ((law.alpha * law.A) / (law.beta * law.B)) ** (1.0 / total) if law.beta > 0 else math.inf
    return a, b, G


def allocate(law: JointLaw, budgets) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(N_opt, D_opt, L_opt) arrays for the compute budgets (FLOPs)."""
    c = np.asarray(budgets, dtype=float)
    a, b, G = optimal_exponents(law)
    scaled = c / FLOPS_PER_PARAM_TOKEN
    n_opt = G * scaled**a
    d_opt = scaled**b / G
    return n_opt, d_opt, law.predict(n_opt, d_opt)


def compute_optimal(law: JointLaw, budgets, *, samples=None, confidence: float = 0.95) -> ComputeOptimal:
    """Compute-optimal N, D and loss for each budget; `samples` (rows of E, A, B, α, β from a
    bootstrap) add percentile intervals for N_opt, D_opt and L_opt."""
    budgets = np.atleast_1d(np.asarray(budgets, dtype=float))
    if budgets.size == 0 or not np.all(np.isfinite(budgets)) or np.any(budgets <= 0):
        raise ModelscaleError("compute budgets must be positive, finite FLOP counts, e.g. [1e18, 1e20]")
    n_opt, d_opt, loss_opt = allocate(law, budgets)
    a, b, G = optimal_exponents(law)
    out = ComputeOptimal(budgets=budgets, n_opt=n_opt, d_opt=d_opt, loss_opt=loss_opt, a=a, b=b, G=G)
    if samples is not None and len(samples):
        draws = np.array([np.vstack(allocate(JointLaw(*map(float, row)), budgets)) for row in samples])
        tail = (1.0 - confidence) / 2.0
        low, high = np.quantile(draws, [tail, 1.0 - tail], axis=0)
        out.intervals = {name: (low[i], high[i]) for i, name in enumerate(("n_opt", "d_opt", "loss_opt"))}
        out.confidence = confidence
    return out


@dataclass
class ExponentFit:
    """k in C ∝ N^k (log C = k·log N + intercept), with a Student-t interval."""

    k: float
    low: float
    high: float
    intercept: float
    r2: float
    n_points: int
    confidence: float
    source: str = "pairs"

    def to_dict(self) -> dict:
        return {
            "k": self.k,
            "low": self.low,
            "high": self.high,
            "intercept": self.intercept,
            "r2": self.r2,
            "n_points": self.n_points,
            "confidence": self.confidence,
            "source": self.source,
        }


def fit_compute_exponent(n, c, *, confidence: float = 0.95, source: str = "pairs") -> ExponentFit:
    """Least-squares slope k of log C on log N with its `confidence` interval (needs ≥ 3 points)."""
    from scipy import stats

    n = np.asarray(n, dtype=float).ravel()
    c = np.asarray(c, dtype=float).ravel()
    if n.size != c.size:
        raise ModelscaleError(f"N and C need the same length, got {n.size} and {c.size}")
    if n.size < 3:
        raise ModelscaleError(f"the exponent k in C ∝ N^k needs at least 3 (N, C) pairs, got {n.size}")
    if not (np.all(np.isfinite(n)) and np.all(np.isfinite(c)) and np.all(n > 0) and np.all(c > 0)):
        raise ModelscaleError("N and C must be positive and finite to fit C ∝ N^k")
    x, y = np.log(n), np.log(c)
    if np.ptp(x) == 0:
        raise ModelscaleError("N is the same for every pair; C ∝ N^k needs several model sizes")
    fit = stats.linregress(x, y)
    dof = n.size - 2
    spread = stats.t.ppf(0.5 + confidence / 2.0, dof) * fit.stderr if dof > 0 else math.inf
    return ExponentFit(
        k=float(fit.slope),
        low=float(fit.slope - spread),
        high=float(fit.slope + spread),
        intercept=float(fit.intercept),
        r2=float(fit.rvalue**2),
        n_points=int(n.size),
        confidence=confidence,
        source=source,
    )


def frontier(n, c, loss, *, rtol: float = 1e-3, min_runs: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """(N, C) of the lowest-loss run of each compute budget (an IsoFLOP profile).

    Runs are grouped when their C differ by less than `rtol` (relative). A budget counts when it has
    at least `min_runs` runs and its best run is not the smallest or largest model of the group (the
    optimum is bracketed). The pairs feed `fit_compute_exponent` (the IsoFLOP view of "approach 2"
    in Hoffmann et al. 2022).
    """
    n = np.asarray(n, dtype=float)
    c = np.asarray(c, dtype=float)
    loss = np.asarray(loss, dtype=float)
    best = []
    for group in budget_groups(c, rtol=rtol):
        if len(group) < min_runs:
            continue
        i = group[int(np.argmin(loss[group]))]
        if n[group].min() < n[i] < n[group].max():
            best.append(i)
    return n[best], c[best]


def budget_groups(c, *, rtol: float = 1e-3) -> list[list[int]]:
    """Indices of runs grouped by (nearly) equal compute, in increasing order of compute."""
    c = np.asarray(c, dtype=float)
    groups: list[list[int]] = []
    for i in np.argsort(c, kind="stable"):
        if groups and abs(c[i] - c[groups[-1][0]]) <= rtol * c[groups[-1][0]]:
            groups[-1].append(int(i))
        else:
            groups.append([int(i)])
    return groups
