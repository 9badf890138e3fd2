"""Uncertainty for fitted scaling laws: bootstrap refits, percentile intervals, leave-one-out error.

Bootstrap (Efron 1979): draw the points with replacement (as multinomial counts, i.e. weights on the
original points), refit, and take the (1−c)/2 and (1+c)/2 quantiles of each parameter over the
refits. Refits start from the full-data optimum and a few neighbours with the exponents scaled (in
centred coordinates this keeps the law's value at the centre of the data fixed), which is far
cheaper than the full starting grid and lands on the same basin for any reasonable resample.
Prediction intervals push every refit through the law at the new inputs: they describe the
uncertainty of the fitted law itself (not the scatter of single new runs around it).

Example::

    from modelscale.scaling.laws import fit_joint
    from modelscale.scaling.bootstrap import bootstrap, percentile_interval
    raw = fit_joint(n, d, loss)
    boot = bootstrap(raw.problem, raw.theta, n_boot=200, seed=0)
    low, high = percentile_interval(boot.params, 0.95)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from modelscale.scaling.laws import Problem, single_threaded

# Factors applied to the exponents for the extra bootstrap starting points.
NEIGHBOUR_FACTORS = (0.7, 1.4, 0.5, 2.0)


@dataclass
class BootstrapSamples:
    """Parameters of each successful refit, in the user's units: rows of (E, A[, B], α[, β])."""

    params: np.ndarray  # (m, p)
    thetas: np.ndarray  # (m, p) internal coordinates
    n_requested: int
    n_failed: int
    seed: int


def neighbourhood(theta: np.ndarray, k: int, n_neighbours: int) -> np.ndarray:
    """`theta` followed by `n_neighbours` copies with every exponent scaled by a factor."""
    rows = [np.asarray(theta, dtype=float)]
    for factor in NEIGHBOUR_FACTORS[:n_neighbours]:
        row = rows[0].copy()
        row[k + 1 :] = np.clip(row[k + 1 :] * factor, 1e-3, 10.0)
        rows.append(row)
    return np.vstack(rows)


def bootstrap(
    problem: Problem,
    theta: np.ndarray,
    *,
    n_boot: int = 200,
    seed: int = 0,
    n_neighbours: int = 1,
) -> BootstrapSamples:
    """Refit `problem` on `n_boot` resamples; a resample with too few distinct points is redrawn."""
    rng = np.random.default_rng(seed)
    n = problem.y.size
    n_params = 2 * problem.k + 1
    starts = neighbourhood(theta, problem.k, n_neighbours)
    thetas = []
    with single_threaded():
        for _ in range(n_boot):
            for _attempt in range(20):
                counts = rng.multinomial(n, np.full(n, 1.0 / n)).astype(float)
                if np.count_nonzero(counts) > n_params:
                    break
            keep = np.flatnonzero(counts)
            try:
                best, _, _ = problem.subset(keep).best_of(starts, counts[keep])
            except FloatingPointError:
                continue
            if np.all(np.isfinite(best)):
                thetas.append(best)
    thetas_arr = np.asarray(thetas, dtype=float).reshape(-1, n_params)
    params = np.vstack([problem.to_external(t) for t in thetas_arr]) if thetas else thetas_arr
    return BootstrapSamples(
        params=params, thetas=thetas_arr, n_requested=n_boot, n_failed=n_boot - len(thetas), seed=seed
    )


def percentile_interval(samples: np.ndarray, confidence: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Column-wise percentile interval (low, high) of `samples` (rows = replicates)."""
    samples = np.asarray(samples, dtype=float)
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(samples, [tail, 1.0 - tail], axis=0)
    return low, high


def leave_one_out(problem: Problem, theta: np.ndarray, *, n_neighbours: int = 0) -> np.ndarray:
    """Relative error |L̂₋ᵢ − Lᵢ| / Lᵢ of each point predicted by the law refitted without it."""
    n = problem.y.size
    starts = neighbourhood(theta, problem.k, n_neighbours)
    errors = np.empty(n)
    index = np.arange(n)
    with single_threaded():
        for i in range(n):
            best, _, _ = problem.subset(index != i).best_of(starts)
            log_pred = problem.predict_log(best, problem.u[:, i : i + 1])[0]
            errors[i] = abs(np.exp(log_pred - problem.y[i]) - 1.0)
    return errors
