"""Scaling-law forms and their robust fit: Huber loss on log-loss residuals, log-sum-exp parametrisation.

Forms (Hoffmann et al. 2022, "Training Compute-Optimal Large Language Models", approach 3;
re-fit by Besiroglu et al. 2024, "Chinchilla Scaling: A replication attempt": E=1.82, A=482,
B=2085, α=0.348, β=0.366)::

    one variable:  L(x)    = E + A·x^(−α)                 x = parameters N, tokens D or compute C
    joint:         L(N, D) = E + A/N^α + B/D^β

Both are fitted in log space with a = log A, b = log B, e = log E::

    log L̂ = LSE(a − α·log N, b − β·log D, e)        (LSE = log-sum-exp)
    objective = mean_i Huber_δ(log L̂_i − log L_i) / δ

minimised with scipy's L-BFGS-B (analytic gradient) from a grid of starting points; the best end
point wins. Internally log N and log D are centred (a_c = a − α·mean log N), which makes the problem
far better conditioned without changing the optimum. No torch here: numpy and scipy only.

Example::

    import numpy as np
    from modelscale.scaling.laws import JointLaw, fit_joint
    truth = JointLaw(E=1.82, A=482.0, B=2085.0, alpha=0.348, beta=0.366)
    n, d = np.meshgrid(np.logspace(7, 10, 10), np.logspace(9, 12, 6))
    fit = fit_joint(n.ravel(), d.ravel(), truth.predict(n.ravel(), d.ravel()))
    print(fit.law)
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize

DEFAULT_DELTA = 1e-3
# Starting-grid axes. Exponents are tried directly; E is a fraction of the smallest observed loss;
# the coefficient(s) are set so that the reducible loss at the median point is split between the
# N and D terms in the given shares. This keeps the grid meaningful whatever the units of N, D and L.
ALPHA_GRID = (0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 1.5, 2.0)
JOINT_EXPONENT_GRID = (0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 1.5)
E_FRACTIONS = (0.02, 0.25, 0.5, 0.75, 0.9, 0.97)
SHARES = (0.1, 0.3, 0.5, 0.7, 0.9)
_EXP_BOUNDS = (0.0, 10.0)
_OPTIONS = {"maxiter": 2000, "ftol": 1e-13, "gtol": 1e-10, "maxcor": 20}


@contextlib.contextmanager
def single_threaded() -> Iterator[None]:
    """Run BLAS on one thread: L-BFGS-B's tiny matrix products are ~50× slower with a thread pool."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl ships with scikit-learn
        yield
        return
    with threadpool_limits(1, user_api="blas"):
        yield


@dataclass(frozen=True)
class PowerLaw:
    """L(x) = E + A·x^(−α), with x named by `variable` ("N", "D" or "C")."""

    E: float
    A: float
    alpha: float
    variable: str = "N"

    names = ("E", "A", "alpha")

    def predict(self, x) -> np.ndarray:
        x = np.asarray(x, dtype=float)
        return self.E + self.A * x ** (-self.alpha)

    def values(self) -> tuple[float, ...]:
        return (self.E, self.A, self.alpha)

    def to_dict(self) -> dict:
        return {
            "form": "E + A*x^-alpha",
            "variable": self.variable,
            "E": self.E,
            "A": self.A,
            "alpha": self.alpha,
        }

    def __str__(self) -> str:
        return f"L({self.variable}) = {self.E:.4g} + {self.A:.4g}·{self.variable}^(−{self.alpha:.4g})"


@dataclass(frozen=True)
class JointLaw:
    """L(N, D) = E + A/N^α + B/D^β (the Chinchilla form)."""

    E: float
    A: float
    B: float
    alpha: float
    beta: float

    names = ("E", "A", "B", "alpha", "beta")

    def predict(self, n, d) -> np.ndarray:
        n = np.asarray(n, dtype=float)
        d = np.asarray(d, dtype=float)
        return self.E + self.A * n ** (-self.alpha) + self.B * d ** (-self.beta)

    def values(self) -> tuple[float, ...]:
        return (self.E, self.A, self.B, self.alpha, self.beta)

    def to_dict(self) -> dict:
        return {
            "form": "E + A/N^alpha + B/D^beta",
            "E": self.E,
            "A": self.A,
            "B": self.B,
            "alpha": self.alpha,
            "beta": self.beta,
        }

    def __str__(self) -> str:
        return f"L(N, D) = {self.E:.4g} + {self.A:.4g}/N^{self.alpha:.4g} + {self.B:.4g}/D^{self.beta:.4g}"


@dataclass
class Problem:
    """Centred log inputs of one fit: `u[j]` = log x_j − `centre[j]` for each variable, `y` = log L."""

    u: np.ndarray  # (k, n)
    centre: np.ndarray  # (k,)
    y: np.ndarray  # (n,)
    delta: float = DEFAULT_DELTA

    @classmethod
    def from_data(cls, xs: list[np.ndarray], loss: np.ndarray, delta: float = DEFAULT_DELTA) -> Problem:
        logs = np.log(np.vstack([np.asarray(x, dtype=float) for x in xs]))
        centre = logs.mean(axis=1)
        return cls(
            u=logs - centre[:, None], centre=centre, y=np.log(np.asarray(loss, dtype=float)), delta=delta
        )

    @property
    def k(self) -> int:
        return self.u.shape[0]

    def subset(self, index: np.ndarray) -> Problem:
        """The same problem on some points (keeps the centre, so parameters stay comparable)."""
        return Problem(u=self.u[:, index], centre=self.centre, y=self.y[index], delta=self.delta)

    # θ (internal) = [c_1..c_k, e, p_1..p_k]; term j = c_j − p_j·u_j, last term = e.
    def objective(self, theta: np.ndarray, weights: np.ndarray | None = None) -> tuple[float, np.ndarray]:
        """Mean Huber/δ of the log residuals and its gradient; `weights` (counts) give a weighted mean."""
        k = self.k
        coef, e, expo = theta[:k], theta[k], theta[k + 1 :]
        terms = np.empty((k + 1, self.y.size))
        terms[:k] = coef[:, None] - expo[:, None] * self.u
        terms[k] = e
        top = terms.max(axis=0)
        s = np.exp(terms - top)
        total = s.sum(axis=0)
        r = top + np.log(total) - self.y
        w = s / total
        delta = self.delta
        absr = np.abs(r)
        h = np.where(absr <= delta, 0.5 * r * r / delta, absr - 0.5 * delta)
        g = np.clip(r, -delta, delta) / delta
        if weights is None:
            scale = 1.0 / r.size
            f = h.sum() * scale
        else:
            scale = 1.0 / weights.sum()
            f = (h * weights).sum() * scale
            g = g * weights
        gw = w * g  # (k+1, n)
        grad = np.empty_like(theta)
        grad[:k] = gw[:k].sum(axis=1) * scale
        grad[k] = gw[k].sum() * scale
        grad[k + 1 :] = -(gw[:k] * self.u).sum(axis=1) * scale
        return float(f), grad

    def predict_log(self, theta: np.ndarray, u: np.ndarray) -> np.ndarray:
        k = self.k
        terms = np.vstack([theta[:k, None] - theta[k + 1 :, None] * u, np.full((1, u.shape[1]), theta[k])])
        top = terms.max(axis=0)
        return top + np.log(np.exp(terms - top).sum(axis=0))

    def minimize(self, start: np.ndarray, weights: np.ndarray | None = None) -> tuple[np.ndarray, float]:
        """One L-BFGS-B run from `start`; returns (θ, objective)."""
        k = self.k
        bounds = [(None, None)] * (k + 1) + [_EXP_BOUNDS] * k
        res = minimize(
            self.objective,
            np.asarray(start, dtype=float),
            args=(weights,),
            jac=True,
            method="L-BFGS-B",
            bounds=bounds,
            options=_OPTIONS,
        )
        return np.asarray(res.x, dtype=float), float(res.fun)

    def best_of(
        self, starts: np.ndarray, weights: np.ndarray | None = None
    ) -> tuple[np.ndarray, float, np.ndarray]:
        """L-BFGS-B from every start; returns (best θ, its objective, all end objectives)."""
        best_theta, best_f, ends = None, math.inf, []
        for start in starts:
            theta, f = self.minimize(start, weights)
            ends.append(f)
            if np.isfinite(f) and f < best_f:
                best_theta, best_f = theta, f
        if best_theta is None:
            raise FloatingPointError("every start ended in a non-finite objective")
        return best_theta, best_f, np.asarray(ends)

    def screen(self, starts: np.ndarray, keep: int) -> np.ndarray:
        """The `keep` starts with the lowest objective (vectorised evaluation of the whole grid)."""
        if keep >= len(starts):
            return starts
        k = self.k
        values = np.empty(len(starts))
        for lo in range(0, len(starts), 256):
            chunk = starts[lo : lo + 256]
            terms = np.concatenate(
                [
                    chunk[:, :k, None] - chunk[:, k + 1 :, None] * self.u[None],
                    np.broadcast_to(chunk[:, k, None, None], (len(chunk), 1, self.y.size)),
                ],
                axis=1,
            )
            top = terms.max(axis=1)
            r = top + np.log(np.exp(terms - top[:, None]).sum(axis=1)) - self.y
            absr = np.abs(r)
            values[lo : lo + 256] = np.where(
                absr <= self.delta, 0.5 * r * r / self.delta, absr - 0.5 * self.delta
            ).mean(axis=1)
        return starts[np.argsort(values, kind="stable")[:keep]]

    # --- conversions between internal θ and the user's parameters ----------------------------------
    def to_external(self, theta: np.ndarray) -> np.ndarray:
        """Internal θ → (E, A[, B], α[, β]) in the user's units."""
        k = self.k
        expo = theta[k + 1 :]
        coef = theta[:k] + expo * self.centre
        return np.concatenate([[math.exp(theta[k])], np.exp(coef), expo])

    def to_internal(self, params: np.ndarray) -> np.ndarray:
        """(E, A[, B], α[, β]) → internal θ."""
        k = self.k
        params = np.asarray(params, dtype=float)
        coef = np.log(params[1 : k + 1])
        expo = params[k + 1 :]
        return np.concatenate([coef - expo * self.centre, [math.log(params[0])], expo])

    def default_starts(self) -> np.ndarray:
        """Starting grid in internal coordinates (see the module constants)."""
        y = np.exp(self.y)
        level, floor = float(np.median(y)), float(y.min())
        starts = []
        exps = ALPHA_GRID if self.k == 1 else JOINT_EXPONENT_GRID
        shares = (1.0,) if self.k == 1 else SHARES
        for frac in E_FRACTIONS:
            e_val = frac * floor
            reducible = max(level - e_val, 1e-3 * level)
            for share in shares:
                parts = (reducible,) if self.k == 1 else (reducible * share, reducible * (1 - share))
                for expo in itertools.product(exps, repeat=self.k):
                    # term j at the centre (u = 0) equals parts[j]: c_j = log(parts[j]).
                    starts.append([*np.log(parts), math.log(e_val), *expo])
        return np.asarray(starts, dtype=float)


@dataclass
class RawFit:
    """Result of `fit_power` / `fit_joint`: the law, the internal optimum and how it was found."""

    law: PowerLaw | JointLaw
    theta: np.ndarray
    objective: float
    problem: Problem
    n_starts: int
    n_grid: int

    def predict(self, *xs) -> np.ndarray:
        return self.law.predict(*xs)


def _law_from(params: np.ndarray, variable: str, k: int) -> PowerLaw | JointLaw:
    values = [float(v) for v in params]
    if k == 1:
        return PowerLaw(E=values[0], A=values[1], alpha=values[2], variable=variable)
    return JointLaw(E=values[0], A=values[1], B=values[2], alpha=values[3], beta=values[4])


def _fit(
    problem: Problem,
    variable: str,
    starts: np.ndarray | None,
    n_starts: int | None,
) -> RawFit:
    if starts is None:
        grid = problem.default_starts()
    else:
        grid = np.vstack([problem.to_internal(s) for s in np.atleast_2d(np.asarray(starts, dtype=float))])
    chosen = grid if n_starts is None else problem.screen(grid, n_starts)
    with single_threaded():
        theta, f, _ = problem.best_of(chosen)
    law = _law_from(problem.to_external(theta), variable, problem.k)
    return RawFit(law=law, theta=theta, objective=f, problem=problem, n_starts=len(chosen), n_grid=len(grid))


def fit_power(
    x,
    loss,
    *,
    variable: str = "N",
    delta: float = DEFAULT_DELTA,
    starts=None,
    n_starts: int | None = None,
) -> RawFit:
    """Fit L(x) = E + A·x^(−α) (no input checks: use `modelscale.scaling.fit_law` for those).

    `starts`: rows of (E, A, α) to start from instead of the default grid (54 points, all optimised
    unless `n_starts` keeps only the best ones after a cheap vectorised screening).
    """
    return _fit(Problem.from_data([x], loss, delta), variable, starts, n_starts)


def fit_joint(
    n,
    d,
    loss,
    *,
    delta: float = DEFAULT_DELTA,
    starts=None,
    n_starts: int | None = 40,
) -> RawFit:
    """Fit L(N, D) = E + A/N^α + B/D^β (no input checks: use `modelscale.scaling.fit_law` for those).

    The default grid has 1470 starts (6 E fractions × 5 shares × 7 α × 7 β); all are scored in one
    vectorised pass and L-BFGS-B runs from the best `n_starts` (None: from every one).
    `starts`: rows of (E, A, B, α, β) to use instead of the default grid.
    """
    return _fit(Problem.from_data([n, d], loss, delta), "N,D", starts, n_starts)


def law_from_theta(problem: Problem, theta: np.ndarray, variable: str = "N") -> PowerLaw | JointLaw:
    """Build the law for an internal θ of `problem` (used by bootstrap and leave-one-out)."""
    return _law_from(problem.to_external(theta), variable, problem.k)
