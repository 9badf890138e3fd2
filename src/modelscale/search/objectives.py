"""What the search optimises and what it must respect, as the user states them.

Metrics of a trial (all measured on the validation split and the saved artifact; the test split is
used once, for the final report of the chosen recipes):

- `accuracy` (maximise), `loss` (minimise), `accuracy_drop` (baseline − trial, in points);
- `bytes` (the saved folder's model file on disk), `zipped_bytes` (that file deflated);
- `latency_p50_b1`, `latency_p90_b1`, `latency_p50_bN`, `latency_p90_bN` (ms, timed paired and
  interleaved against the baseline on the target device), `speedup_b1`, `speedup_bN` (paired ratios);
- `params`, `macs` (analytic).

A constraint is `METRIC OP NUMBER [* baseline]`, e.g. `accuracy_drop <= 1.0`, `bytes <= 24000`,
`latency_p90_b1 <= 0.5 * baseline`. A latency figure flagged unstable never satisfies a latency
constraint by luck: it is replaced by the baseline's own figure (no speedup claimed).

Example::

    objectives = parse_objectives(["accuracy", "bytes"])
    constraints = parse_constraints(["accuracy_drop <= 1", "bytes <= 24000"])
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from modelscale.core.errors import ModelscaleError

# metric -> direction ("maximize" | "minimize")
METRICS = {
    "accuracy": "maximize",
    "loss": "minimize",
    "accuracy_drop": "minimize",
    "bytes": "minimize",
    "zipped_bytes": "minimize",
    "latency_p50_b1": "minimize",
    "latency_p90_b1": "minimize",
    "latency_p50_bN": "minimize",
    "latency_p90_bN": "minimize",
    "speedup_b1": "maximize",
    "speedup_bN": "maximize",
    "params": "minimize",
    "macs": "minimize",
}
LATENCY = tuple(m for m in METRICS if m.startswith("latency_") or m.startswith("speedup_"))
_CONSTRAINT = re.compile(r"^\s*([A-Za-z0-9_]+)\s*(<=|>=|<|>)\s*([-+0-9.eE]+)\s*(\*\s*baseline)?\s*$")


@dataclass(frozen=True)
class Objective:
    metric: str
    direction: str  # maximize | minimize


@dataclass(frozen=True)
class Constraint:
    metric: str
    op: str  # <= >= < >
    value: float
    relative: bool = False  # value × the baseline's metric

    def bound(self, baseline: dict[str, float]) -> float:
        if not self.relative:
            return self.value
        if self.metric not in baseline or baseline[self.metric] is None:
            raise ModelscaleError(f"constraint {self}: the baseline has no {self.metric} to scale")
        return self.value * baseline[self.metric]

    def violation(self, metrics: dict[str, float], baseline: dict[str, float]) -> float:
        """Optuna's convention: <= 0 when satisfied, > 0 by how much it is violated (relative)."""
        value = metrics.get(self.metric)
        if value is None or not math.isfinite(value):
            return 1.0  # not measured: infeasible
        bound = self.bound(baseline)
        scale = max(abs(bound), 1e-12)
        if self.op in ("<=", "<"):
            excess = value - bound
        else:
            excess = bound - value
        if self.op in ("<", ">") and excess == 0:
            excess = 1e-12
        return excess / scale

    def __str__(self) -> str:
        return f"{self.metric} {self.op} {self.value:g}" + (" * baseline" if self.relative else "")


def parse_objectives(names: list[str] | tuple[str, ...]) -> tuple[Objective, ...]:
    if not names:
        raise ModelscaleError("give at least one objective, e.g. --objective accuracy --objective bytes")
    out = []
    for name in names:
        if name not in METRICS:
            raise ModelscaleError(f"unknown objective {name!r}; valid: {', '.join(METRICS)}")
        out.append(Objective(name, METRICS[name]))
    if len({o.metric for o in out}) != len(out):
        raise ModelscaleError(f"an objective is listed twice: {list(names)}")
    return tuple(out)


def parse_constraints(texts: list[str] | tuple[str, ...]) -> tuple[Constraint, ...]:
    out = []
    for text in texts:
        match = _CONSTRAINT.match(str(text))
        if not match:
            raise ModelscaleError(
                f"constraint {text!r} must look like 'METRIC <= NUMBER' or 'METRIC <= NUMBER * baseline', "
                "e.g. 'accuracy_drop <= 1.0'"
            )
        metric, op, number, relative = match.groups()
        if metric not in METRICS:
            raise ModelscaleError(
                f"constraint {text!r}: unknown metric {metric!r}; valid: {', '.join(METRICS)}"
            )
        try:
            value = float(number)
        except ValueError:
            raise ModelscaleError(f"constraint {text!r}: {number!r} is not a number") from None
        if not math.isfinite(value):
            raise ModelscaleError(f"constraint {text!r}: the bound must be finite")
        if relative and metric in ("accuracy_drop",):
            raise ModelscaleError(f"constraint {text!r}: accuracy_drop is already relative to the baseline")
        out.append(Constraint(metric, op, value, bool(relative)))
    return tuple(out)


def check_feasible(constraints: tuple[Constraint, ...], baseline: dict[str, float]) -> None:
    """Refuse, before any trial, constraints no compressed model can meet (one line each)."""
    for c in constraints:
        bound = c.bound(baseline)
        if c.metric in ("bytes", "zipped_bytes", "params", "macs") and c.op in ("<=", "<") and bound <= 0:
            raise ModelscaleError(f"constraint {c} can never hold: {c.metric} is always positive")
        if c.metric == "accuracy_drop" and c.op in ("<=", "<") and bound < -100:
            raise ModelscaleError(f"constraint {c} can never hold: accuracy drops are at least -100 points")
        if c.metric == "accuracy" and c.op in (">=", ">") and bound > 1.0:
            raise ModelscaleError(f"constraint {c} can never hold: accuracy is a fraction in [0, 1]")
        if c.metric.startswith("latency_") and c.op in ("<=", "<") and bound <= 0:
            raise ModelscaleError(f"constraint {c} can never hold: latencies are positive")


def needs_latency(objectives: tuple[Objective, ...], constraints: tuple[Constraint, ...]) -> bool:
    return any(o.metric in LATENCY for o in objectives) or any(c.metric in LATENCY for c in constraints)


def objective_values(objectives: tuple[Objective, ...], metrics: dict[str, Any]) -> list[float]:
    values = []
    for o in objectives:
        v = metrics.get(o.metric)
        if v is None or not math.isfinite(float(v)):
            v = -math.inf if o.direction == "maximize" else math.inf
        values.append(float(v))
    return values
