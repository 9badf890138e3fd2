"""Scaling laws: fit L(x) = E + A·x^(−α) or L(N, D) = E + A/N^α + B/D^β with intervals (numpy/scipy only).

Robust fit (Huber on log-loss residuals, log-sum-exp parametrisation, L-BFGS-B from a grid; Hoffmann
et al. 2022, approach 3), percentile-bootstrap intervals, leave-one-out error and compute-optimal
allocation under C = 6·N·D. Importing this package does not import torch.

Example::

    from modelscale.scaling import fit_law, fit_law_csv, law_markdown
    result = fit_law_csv("runs.csv", "params", "val_loss", d_column="tokens")
    print(law_markdown(result))
    print(result.compute_optimal.n_opt, result.predict_interval([1e10], [2e11]).high)
"""

from modelscale.scaling.fit import fit_law, fit_law_command, fit_law_csv
from modelscale.scaling.laws import JointLaw, PowerLaw, fit_joint, fit_power
from modelscale.scaling.optimal import (
    ComputeOptimal,
    ExponentFit,
    compute_optimal,
    fit_compute_exponent,
    frontier,
    optimal_exponents,
)
from modelscale.scaling.render import law_markdown
from modelscale.scaling.result import Estimate, Goodness, LawFit, Prediction

__all__ = [
    "ComputeOptimal",
    "Estimate",
    "ExponentFit",
    "Goodness",
    "JointLaw",
    "LawFit",
    "PowerLaw",
    "Prediction",
    "compute_optimal",
    "fit_compute_exponent",
    "fit_joint",
    "fit_law",
    "fit_law_command",
    "fit_law_csv",
    "fit_power",
    "frontier",
    "law_markdown",
    "optimal_exponents",
]
