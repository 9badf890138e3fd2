"""Result types of a law fit: estimates with intervals, goodness of fit, predictions, and `LawFit`.

All have `to_dict()` returning JSON-safe data (non-finite numbers become None).

Example::

    result = fit_law(loss, n=params, d=tokens)
    result.interval("alpha")                    # (low, high)
    result.predict_interval([1e10], [2e11])     # Prediction with low/high arrays
    json.dumps(result.to_dict())
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from modelscale.core.errors import ModelscaleError
from modelscale.scaling.bootstrap import percentile_interval
from modelscale.scaling.laws import JointLaw, PowerLaw
from modelscale.scaling.optimal import ComputeOptimal, ExponentFit


def _num(value) -> float | None:
    """A JSON-safe float (None for NaN/inf)."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


@dataclass
class Estimate:
    """A fitted (or derived) quantity with its bootstrap interval (None without a bootstrap)."""

    name: str
    value: float
    low: float | None = None
    high: float | None = None
    meaning: str = ""

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "value": _num(self.value),
            "low": _num(self.low),
            "high": _num(self.high),
            "meaning": self.meaning,
        }


@dataclass
class Goodness:
    """How well the law describes the runs it was fitted to."""

    r2_log: float  # R² of log L
    rmse: float  # root-mean-square error of L, in loss units
    rmse_log: float  # root-mean-square error of log L (≈ relative error)
    huber: float  # final objective: mean Huber(log residual) / δ
    loo_mare: float | None = None  # leave-one-out mean |L̂ − L| / L
    loo_max: float | None = None  # leave-one-out worst |L̂ − L| / L

    def to_dict(self) -> dict:
        return {k: _num(v) for k, v in self.__dict__.items()}


@dataclass
class Prediction:
    """Predicted loss at new inputs with a bootstrap interval for the law's value there."""

    inputs: dict[str, np.ndarray]
    loss: np.ndarray
    low: np.ndarray | None
    high: np.ndarray | None
    confidence: float

    def to_dict(self) -> dict:
        out = {k: [float(x) for x in v] for k, v in self.inputs.items()}
        out["loss"] = [float(x) for x in self.loss]
        out["low"] = None if self.low is None else [float(x) for x in self.low]
        out["high"] = None if self.high is None else [float(x) for x in self.high]
        out["confidence"] = self.confidence
        return out


@dataclass
class LawFit:
    """A fitted scaling law with intervals, goodness of fit and (joint law) compute-optimal sizes."""

    kind: str  # "power" (one variable) or "joint" (N and D)
    law: PowerLaw | JointLaw
    parameters: list[Estimate]
    derived: list[Estimate]
    goodness: Goodness
    n_points: int
    confidence: float
    n_boot: int
    n_boot_ok: int
    seed: int
    delta: float
    n_starts: int
    n_grid: int
    notes: list[str] = field(default_factory=list)
    compute_optimal: ComputeOptimal | None = None
    empirical_exponent: ExponentFit | None = None
    source: dict = field(default_factory=dict)
    samples: np.ndarray = field(default_factory=lambda: np.empty((0, 0)), repr=False)

    def interval(self, name: str) -> tuple[float | None, float | None]:
        """(low, high) of a parameter or derived quantity by name (E, A, B, alpha, beta, a, b, k)."""
        for est in (*self.parameters, *self.derived):
            if est.name == name:
                return est.low, est.high
        names = ", ".join(e.name for e in (*self.parameters, *self.derived))
        raise ModelscaleError(f"no estimate named {name!r}; valid names: {names}")

    def predict(self, *xs) -> np.ndarray:
        """The law at new inputs: predict(x) for a one-variable law, predict(n, d) for the joint law."""
        return self.law.predict(*xs)

    def predict_interval(self, *xs, confidence: float | None = None) -> Prediction:
        """Prediction at new inputs (extrapolation welcome) with a percentile-bootstrap interval."""
        confidence = self.confidence if confidence is None else confidence
        check_confidence(confidence)
        arrays = [np.atleast_1d(np.asarray(x, dtype=float)) for x in xs]
        expected = 1 if self.kind == "power" else 2
        if len(arrays) != expected:
            raise ModelscaleError(
                f"a {self.kind} law predicts from {expected} input(s) ({self._input_names()}), got {len(arrays)}"
            )
        arrays = list(np.broadcast_arrays(*arrays))
        loss = self.law.predict(*arrays)
        low = high = None
        if len(self.samples):
            draws = np.array(
                [law_from_row(self.kind, row, self.law).predict(*arrays) for row in self.samples]
            )
            low, high = percentile_interval(draws, confidence)
        names = self._input_names().split(", ")
        return Prediction(dict(zip(names, arrays)), loss, low, high, confidence)

    def _input_names(self) -> str:
        return "N, D" if self.kind == "joint" else self.law.variable

    def to_dict(self) -> dict:
        """JSON-safe summary (bootstrap samples left out; their count is `n_boot_ok`)."""
        return {
            "kind": self.kind,
            "law": self.law.to_dict(),
            "formula": str(self.law),
            "parameters": [p.to_dict() for p in self.parameters],
            "derived": [p.to_dict() for p in self.derived],
            "goodness": self.goodness.to_dict(),
            "n_points": self.n_points,
            "confidence": self.confidence,
            "n_boot": self.n_boot,
            "n_boot_ok": self.n_boot_ok,
            "seed": self.seed,
            "huber_delta": self.delta,
            "starts": {"optimised": self.n_starts, "grid": self.n_grid},
            "compute_optimal": None if self.compute_optimal is None else self.compute_optimal.to_dict(),
            "empirical_exponent": None
            if self.empirical_exponent is None
            else self.empirical_exponent.to_dict(),
            "notes": list(self.notes),
            "source": dict(self.source),
        }


def law_from_row(kind: str, row, like) -> PowerLaw | JointLaw:
    values = [float(v) for v in row]
    if kind == "power":
        return PowerLaw(*values, variable=like.variable)
    return JointLaw(*values)


def check_confidence(confidence: float) -> None:
    if isinstance(confidence, bool) or not isinstance(confidence, int | float) or not 0 < confidence < 1:
        raise ModelscaleError(f"confidence must be between 0 and 1 (e.g. 0.95), got {confidence!r}")
