"""Fit a scaling law to runs, with bootstrap intervals, goodness of fit and compute-optimal sizes.

Given the final loss of runs at several model sizes N (parameters), data sizes D (tokens/examples) or
compute budgets C (FLOPs), `fit_law` fits either

    L(x)    = E + A·x^(−α)                (one variable: N, D or C alone)
    L(N, D) = E + A/N^α + B/D^β           (Hoffmann et al. 2022, approach 3; N with D, or with C)

by minimising a Huber loss (δ = 1e-3) on log-loss residuals in the log-sum-exp parametrisation
(`modelscale.scaling.laws`), then adds percentile-bootstrap intervals for every parameter
(`modelscale.scaling.bootstrap`), R² on log L, RMSE, leave-one-out error and, for the joint law, the
compute-optimal allocation N_opt(C), D_opt(C) under C = 6·N·D (`modelscale.scaling.optimal`).
With compute but no D, D = C/(6N) is derived and the result says so in its notes.

Example::

    from modelscale.scaling import fit_law, law_markdown
    result = fit_law(loss, n=params, d=tokens, n_boot=200, seed=0)
    print(result.law, result.interval("alpha"))
    print(law_markdown(result))
    text, data = fit_law_command("runs.csv", n="params", d="tokens", loss="val_loss")
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from modelscale.core.errors import ModelscaleError
from modelscale.scaling.bootstrap import bootstrap, leave_one_out, percentile_interval
from modelscale.scaling.csvio import check_varies, positive_array, read_columns
from modelscale.scaling.laws import DEFAULT_DELTA, JointLaw, RawFit, fit_joint, fit_power
from modelscale.scaling.optimal import (
    FLOPS_PER_PARAM_TOKEN,
    budget_groups,
    compute_optimal,
    fit_compute_exponent,
    frontier,
)
from modelscale.scaling.result import Estimate, Goodness, LawFit, check_confidence

MIN_POINTS = {"power": 4, "joint": 6}


def _check_options(n_boot, confidence, delta, seed) -> None:
    if isinstance(n_boot, bool) or not isinstance(n_boot, int | np.integer) or n_boot < 0:
        raise ModelscaleError(f"n_boot must be an integer >= 0 (0 skips the bootstrap), got {n_boot!r}")
    if 0 < n_boot < 20:
        raise ModelscaleError(
            f"n_boot={n_boot} is too few for percentile intervals; use 0 or >= 20 (200 is typical)"
        )
    check_confidence(confidence)
    if (
        isinstance(delta, bool)
        or not isinstance(delta, int | float)
        or not (delta > 0 and math.isfinite(delta))
    ):
        raise ModelscaleError(
            f"delta (the Huber threshold on log residuals) must be > 0, e.g. 1e-3; got {delta!r}"
        )
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
        raise ModelscaleError(f"seed must be an integer, got {seed!r}")


def _prepare(
    loss, n, d, c, names: dict[str, str]
) -> tuple[str, dict[str, np.ndarray], np.ndarray, list[str]]:
    """Validate inputs; returns (kind, variables, loss, notes). Joint variables are "N" and "D"."""
    given = {key: val for key, val in (("N", n), ("D", d), ("C", c)) if val is not None}
    if not given:
        raise ModelscaleError("give at least one of n (parameters), d (data) or c (compute) next to the loss")
    if len(given) == 3:
        raise ModelscaleError("give D or C, not both: with N and C, D is derived as C/(6N)")
    label = {key: names.get(key, key) for key in ("N", "D", "C", "loss")}
    loss = positive_array(label["loss"], loss)
    arrays = {key: positive_array(label[key], val) for key, val in given.items()}
    for key, arr in arrays.items():
        if arr.size != loss.size:
            raise ModelscaleError(
                f"{label[key]} has {arr.size} values but the loss has {loss.size}; give one per run"
            )
    notes: list[str] = []
    if len(arrays) == 1:
        kind = "power"
        ((key, x),) = arrays.items()
        variables = {key: x}
    else:
        kind = "joint"
        if "C" in arrays:
            if "N" in arrays:
                arrays["D"] = arrays["C"] / (FLOPS_PER_PARAM_TOKEN * arrays["N"])
                notes.append(
                    f"D was derived as C/(6·N) from {label['C']} and {label['N']} (no data column given)"
                )
            else:
                arrays["N"] = arrays["C"] / (FLOPS_PER_PARAM_TOKEN * arrays["D"])
                notes.append(
                    f"N was derived as C/(6·D) from {label['C']} and {label['D']} (no parameter column given)"
                )
        variables = {"N": arrays["N"], "D": arrays["D"]}
    need = MIN_POINTS[kind]
    what = "E + A/N^α + B/D^β (5 parameters)" if kind == "joint" else "E + A·x^(−α) (3 parameters)"
    if loss.size < need:
        raise ModelscaleError(f"{loss.size} runs are too few to fit {what}; give at least {need}")
    distinct = len({tuple(v[i] for v in variables.values()) for i in range(loss.size)})
    if distinct < need:
        raise ModelscaleError(
            f"only {distinct} distinct input points; {what} needs runs at >= {need} different sizes"
        )
    for key, arr in variables.items():
        check_varies(
            label[key] if key in given else f"{key} (derived)",
            arr,
            "E + A/N^α + B/D^β" if kind == "joint" else None,
        )
    if np.ptp(np.log(loss)) <= 1e-12:
        raise ModelscaleError(f"{label['loss']} is the same for every run; there is no trend to fit")
    if kind == "joint":
        ln, ld = np.log(variables["N"]), np.log(variables["D"])
        if abs(np.corrcoef(ln, ld)[0, 1]) > 1 - 1e-9:
            raise ModelscaleError(
                "log N and log D move in lockstep (D ∝ N^k in every run, e.g. a single compute budget); "
                "the joint law cannot separate the N and D terms: add runs with other D at the same N"
            )
    return kind, variables, loss, notes


def _default_budgets(n: np.ndarray, d: np.ndarray) -> np.ndarray:
    c = FLOPS_PER_PARAM_TOKEN * n * d
    lo, hi = math.floor(math.log10(c.min())), math.ceil(math.log10(c.max())) + 2
    exps = np.unique(np.round(np.linspace(lo, hi, min(6, hi - lo + 1))).astype(int))
    return 10.0**exps


def fit_law(
    loss,
    *,
    n=None,
    d=None,
    c=None,
    n_boot: int = 200,
    confidence: float = 0.95,
    seed: int = 0,
    delta: float = DEFAULT_DELTA,
    loo: bool = True,
    budgets=None,
    starts=None,
    n_starts: int | None = None,
    n_neighbours: int = 1,
    names: dict[str, str] | None = None,
) -> LawFit:
    """Fit a scaling law to per-run losses.

    Inputs decide the form: one of n / d / c → L(x) = E + A·x^(−α); n with d (or n with c, D = C/(6N);
    or d with c, N = C/(6D)) → L(N, D) = E + A/N^α + B/D^β.
    n_boot: bootstrap resamples for the intervals (0: none). confidence: interval coverage.
    delta: Huber threshold on log-loss residuals. loo: compute leave-one-out error (one refit per run).
    budgets: compute budgets (FLOPs) for the compute-optimal table (default: powers of ten spanning the
    runs and two decades beyond). starts: rows of parameters (E, A[, B], α[, β]) replacing the default
    starting grid; n_starts: optimise only the best n_starts grid points after a vectorised screening
    (default: 40 for the joint law, all 54 for one variable). n_neighbours: extra bootstrap/LOO starts
    around the optimum. names: display names of the inputs (keys N, D, C, loss) for messages.
    """
    _check_options(n_boot, confidence, delta, seed)
    for name, value, lo in (("n_starts", n_starts, 1), ("n_neighbours", n_neighbours, 0)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < lo):
            raise ModelscaleError(f"{name} must be an integer >= {lo}, got {value!r}")
    names = dict(names or {})
    kind, variables, loss, notes = _prepare(loss, n, d, c, names)
    if kind == "joint":
        raw: RawFit = fit_joint(
            variables["N"], variables["D"], loss, delta=delta, starts=starts, n_starts=n_starts or 40
        )
    else:
        ((var, x),) = variables.items()
        raw = fit_power(x, loss, variable=var, delta=delta, starts=starts, n_starts=n_starts)
    problem = raw.problem
    # Goodness of fit on the fitted points.
    log_pred = problem.predict_log(raw.theta, problem.u)
    resid_log = log_pred - problem.y
    ss_tot = float(((problem.y - problem.y.mean()) ** 2).sum())
    goodness = Goodness(
        r2_log=1.0 - float((resid_log**2).sum()) / ss_tot,
        rmse=float(np.sqrt(np.mean((np.exp(log_pred) - loss) ** 2))),
        rmse_log=float(np.sqrt(np.mean(resid_log**2))),
        huber=raw.objective,
    )
    if loo:
        errors = leave_one_out(problem, raw.theta, n_neighbours=0)
        goodness.loo_mare, goodness.loo_max = float(errors.mean()), float(errors.max())
    # Bootstrap.
    samples = np.empty((0, len(raw.law.values())))
    if n_boot:
        boot = bootstrap(problem, raw.theta, n_boot=n_boot, seed=seed, n_neighbours=n_neighbours)
        samples = boot.params
        notes.append(
            f"intervals: {confidence:.0%} percentile bootstrap over {n_boot} resamples of the runs (seed {seed})"
            + (f"; {boot.n_failed} refits failed and were dropped" if boot.n_failed else "")
        )
        if len(samples) < max(20, n_boot // 2):
            notes.append("too few bootstrap refits succeeded; intervals are omitted")
            samples = samples[:0]
    else:
        notes.append("no bootstrap (n_boot=0): parameters have no intervals")
    low = high = None
    if len(samples):
        low, high = percentile_interval(samples, confidence)
    meanings = {
        "E": "irreducible loss",
        "A": f"coefficient of {'N' if kind == 'joint' else raw.law.variable}",
        "B": "coefficient of D",
        "alpha": f"exponent of {'N' if kind == 'joint' else raw.law.variable}",
        "beta": "exponent of D",
    }
    parameters = [
        Estimate(
            name,
            float(value),
            None if low is None else float(low[i]),
            None if high is None else float(high[i]),
            meanings[name],
        )
        for i, (name, value) in enumerate(zip(raw.law.names, raw.law.values()))
    ]
    for i, name in enumerate(raw.law.names):
        if name in ("alpha", "beta") and (raw.law.values()[i] < 1e-4 or raw.law.values()[i] > 9.99):
            notes.append(
                f"{name} ended at its bound ({raw.law.values()[i]:.3g}); the law may be a poor description"
            )
    result = LawFit(
        kind=kind,
        law=raw.law,
        parameters=parameters,
        derived=[],
        goodness=goodness,
        n_points=int(loss.size),
        confidence=confidence,
        n_boot=n_boot,
        n_boot_ok=int(len(samples)),
        seed=seed,
        delta=delta,
        n_starts=raw.n_starts,
        n_grid=raw.n_grid,
        notes=notes,
        samples=samples,
    )
    notes.insert(
        0,
        f"fit: Huber (δ={delta:g}) on log-loss residuals, L-BFGS-B from {raw.n_starts} of {raw.n_grid} grid starts",
    )
    if kind == "joint":
        _add_compute_view(result, variables, loss, budgets)
    elif budgets is not None:
        notes.append("compute-optimal allocation needs the joint law (N with D or C); budgets ignored")
    return result


def _add_compute_view(result: LawFit, variables, loss, budgets) -> None:
    law: JointLaw = result.law  # type: ignore[assignment]
    n, d = variables["N"], variables["D"]
    budgets = _default_budgets(n, d) if budgets is None else budgets
    table = compute_optimal(
        law, budgets, samples=result.samples if len(result.samples) else None, confidence=result.confidence
    )
    result.compute_optimal = table
    total = law.alpha + law.beta
    a_s = b_s = None
    if len(result.samples):
        alpha_s, beta_s = result.samples[:, 3], result.samples[:, 4]
        a_s = beta_s / (alpha_s + beta_s)
        b_s = alpha_s / (alpha_s + beta_s)

    def est(name, value, draws, meaning):
        if draws is None:
            return Estimate(name, value, meaning=meaning)
        lo, hi = percentile_interval(draws, result.confidence)
        return Estimate(name, value, float(lo), float(hi), meaning)

    result.derived = [
        est("a", law.beta / total, a_s, "N_opt ∝ C^a"),
        est("b", law.alpha / total, b_s, "D_opt ∝ C^b"),
        est(
            "k",
            total / law.beta if law.beta > 0 else math.inf,
            None if a_s is None else 1.0 / a_s,
            "C ∝ N_opt^k (= 1/a)",
        ),
    ]
    c_max = float((FLOPS_PER_PARAM_TOKEN * n * d).max())
    if np.any(np.asarray(table.budgets) > c_max):
        result.notes.append(
            f"budgets above the largest run's compute ({c_max:.3g} FLOPs, C = 6·N·D) are extrapolations"
        )
    compute = FLOPS_PER_PARAM_TOKEN * n * d
    # Only for IsoFLOP-style sweeps: most runs share their budget with at least two others.
    shared = sum(len(g) for g in budget_groups(compute) if len(g) >= 3)
    n_best, c_best = frontier(n, compute, loss)
    if shared >= 0.5 * n.size and len(n_best) >= 3 and np.ptp(np.log(n_best)) > 0:
        result.empirical_exponent = fit_compute_exponent(
            n_best, c_best, confidence=result.confidence, source="frontier"
        )
        result.notes.append(
            f"empirical k: log-log least squares over the best run of each of {len(n_best)} IsoFLOP budgets"
        )


def fit_law_csv(
    path: str | Path,
    n_column: str,
    loss_column: str,
    d_column: str | None = None,
    c_column: str | None = None,
    **kwargs,
) -> LawFit:
    """`fit_law` on columns of a CSV file (header row required); at most one of d_column / c_column.

    Only n_column → L(N) = E + A·N^(−α); with d_column → the joint law; with c_column → the joint law
    with D = C/(6N) (noted in the result). Other keyword arguments go to `fit_law`.
    """
    if d_column is not None and c_column is not None:
        raise ModelscaleError("give a data column (d) or a compute column (c), not both; with c, D = C/(6N)")
    columns = {"N": n_column, "loss": loss_column}
    if d_column is not None:
        columns["D"] = d_column
    if c_column is not None:
        columns["C"] = c_column
    data = read_columns(path, columns)
    names = {key: f"column {col!r}" for key, col in columns.items()}
    result = fit_law(data["loss"], n=data["N"], d=data.get("D"), c=data.get("C"), names=names, **kwargs)
    result.source = {"path": str(path), **{f"{key.lower()}_column": col for key, col in columns.items()}}
    return result


def fit_law_command(
    path: str | Path,
    *,
    n: str,
    loss: str,
    d: str | None = None,
    c: str | None = None,
    n_boot: int = 200,
    seed: int = 0,
) -> tuple[str, dict]:
    """`modelscale fit-law data.csv --n N_COLUMN --loss LOSS_COLUMN [--d D_COLUMN | --c C_COLUMN]`.

    Returns (Markdown text, JSON-safe dict) like the other CLI commands.
    """
    from modelscale.scaling.render import law_markdown

    result = fit_law_csv(path, n, loss, d_column=d, c_column=c, n_boot=n_boot, seed=seed)
    return law_markdown(result), result.to_dict()
