import json
import subprocess
import sys

import numpy as np
import pytest
from scipy.optimize import check_grad

from modelscale.scaling import PowerLaw, fit_joint, fit_law, fit_power, law_markdown
from modelscale.scaling.laws import Problem

from .conftest import TRUTH, chinchilla_points


def test_importing_scaling_does_not_import_torch():
    code = "import sys, modelscale.scaling; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_analytic_gradient_matches_finite_differences(points):
    n, d, loss = points
    problem = Problem.from_data([n, d], loss, delta=0.05)  # δ large enough that FD sees a smooth function
    theta = problem.to_internal(TRUTH.values()) + np.array([0.1, -0.2, 0.05, 0.02, -0.03])
    weights = np.random.default_rng(1).integers(0, 3, n.size).astype(float)
    for w in (None, weights):
        err = check_grad(
            lambda t, w=w: problem.objective(t, w)[0], lambda t, w=w: problem.objective(t, w)[1], theta
        )
        assert err < 1e-5


def test_joint_fit_recovers_truth_inside_95_percent_intervals(joint_fit):
    assert joint_fit.kind == "joint"
    assert joint_fit.n_boot_ok == 200
    for est in joint_fit.parameters:
        truth = getattr(TRUTH, est.name)
        assert est.low < truth < est.high, (est.name, est.low, truth, est.high)
        assert est.low <= est.value <= est.high
    # Exponents and E are tight; the coefficients are poorly identified but within a factor 2.
    assert abs(joint_fit.law.alpha - TRUTH.alpha) < 0.02
    assert abs(joint_fit.law.beta - TRUTH.beta) < 0.03
    assert abs(joint_fit.law.E - TRUTH.E) / TRUTH.E < 0.03
    assert 0.5 < joint_fit.law.A / TRUTH.A < 2 and 0.5 < joint_fit.law.B / TRUTH.B < 2


def test_default_grid_reaches_the_optimum_found_from_the_truth(points):
    n, d, loss = points
    grid = fit_joint(n, d, loss)
    from_truth = fit_joint(n, d, loss, starts=[TRUTH.values()])
    assert grid.objective <= from_truth.objective + 1e-9
    assert grid.n_starts == 40 and grid.n_grid == 1470


def test_goodness_of_fit_matches_noise_level(joint_fit):
    g = joint_fit.goodness
    assert g.r2_log > 0.99
    assert 0.005 < g.rmse_log < 0.015  # 1 % multiplicative noise
    assert 0.004 < g.loo_mare < 0.015  # held-out error is of the noise's size, not larger
    assert g.loo_max >= g.loo_mare


def test_huber_fit_resists_outliers(points):
    n, d, loss = points
    spoiled = loss.copy()
    spoiled[[5, 27, 48]] *= 3.0
    clean = fit_joint(n, d, loss).law
    robust = fit_joint(n, d, spoiled).law
    squares = fit_joint(n, d, spoiled, delta=1.0).law  # δ ≫ residuals: plain least squares
    assert abs(robust.alpha - clean.alpha) < 0.01
    assert abs(robust.beta - clean.beta) < 0.02
    assert abs(robust.E - clean.E) / clean.E < 0.01
    # The same outliers drag least squares far away, so the test above is a real check.
    assert abs(squares.alpha - clean.alpha) + abs(squares.beta - clean.beta) > 0.1


def test_one_variable_fit_recovers_parameters():
    truth = PowerLaw(E=0.9, A=40.0, alpha=0.3, variable="N")
    x = np.logspace(4, 9, 16)
    loss = truth.predict(x) * np.exp(np.random.default_rng(3).normal(0.0, 0.005, x.size))
    result = fit_law(loss, n=x, n_boot=100, seed=1)
    assert result.kind == "power" and result.law.variable == "N"
    for est in result.parameters:
        value = getattr(truth, est.name)
        assert est.low < value < est.high, (est.name, est.low, value, est.high)
    assert abs(result.law.alpha - 0.3) < 0.03
    assert abs(result.law.E - 0.9) < 0.05
    assert result.compute_optimal is None
    raw = fit_power(x, truth.predict(x), variable="N")  # noiseless: near-exact
    np.testing.assert_allclose(raw.law.values(), truth.values(), rtol=2e-3)


def test_one_variable_fit_in_compute():
    c = np.logspace(15, 21, 8)
    loss = 2.0 + 1e3 * c**-0.15
    result = fit_law(loss, c=c, n_boot=0, loo=False)
    assert result.law.variable == "C"
    assert result.parameters[0].low is None
    np.testing.assert_allclose(result.law.values(), (2.0, 1e3, 0.15), rtol=5e-3)


def test_prediction_intervals_widen_with_extrapolation(joint_fit):
    inside = joint_fit.predict_interval([3e8], [3e10])
    far = joint_fit.predict_interval([1e12], [1e14])
    assert inside.low[0] < inside.loss[0] < inside.high[0]
    assert (far.high - far.low)[0] > 3 * (inside.high - inside.low)[0]
    truth_far = TRUTH.predict(1e12, 1e14)
    assert far.low[0] < truth_far < far.high[0]
    np.testing.assert_allclose(far.loss, joint_fit.predict(1e12, 1e14))


def test_results_are_json_safe_and_render(joint_fit):
    data = json.loads(json.dumps(joint_fit.to_dict(), allow_nan=False))
    assert data["law"]["form"] == "E + A/N^alpha + B/D^beta"
    assert [p["name"] for p in data["parameters"]] == ["E", "A", "B", "alpha", "beta"]
    assert data["compute_optimal"]["rows"][0]["loss_opt_low"] < data["compute_optimal"]["rows"][0]["loss_opt"]
    text = law_markdown(joint_fit)
    assert "| alpha | " in text and "95% interval" in text
    assert "Compute-optimal allocation" in text and "leave-one-out" in text
    low, high = joint_fit.interval("beta")
    assert f"{low:.4g} – {high:.4g}" in text


def test_bootstrap_is_seeded():
    n, d, loss = chinchilla_points(seed=4)
    one = fit_law(loss, n=n, d=d, n_boot=30, seed=7, loo=False)
    two = fit_law(loss, n=n, d=d, n_boot=30, seed=7, loo=False)
    other = fit_law(loss, n=n, d=d, n_boot=30, seed=8, loo=False)
    assert one.to_dict() == two.to_dict()
    assert one.interval("alpha") != other.interval("alpha")


def test_interval_lookup_names_valid_options(joint_fit):
    with pytest.raises(ValueError, match="valid names: E, A, B, alpha, beta, a, b, k"):
        joint_fit.interval("gamma")
