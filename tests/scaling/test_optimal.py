import numpy as np
import pytest

from modelscale.core.errors import ModelscaleError
from modelscale.scaling import (
    JointLaw,
    compute_optimal,
    fit_compute_exponent,
    fit_law,
    frontier,
    optimal_exponents,
)

from .conftest import TRUTH


def brute_force(law: JointLaw, budget: float) -> tuple[float, float]:
    """argmin over a fine log grid of N of L(N, C/(6N)); returns (N, L)."""
    n = np.logspace(0, 18, 500_001)
    loss = law.predict(n, budget / (6.0 * n))
    i = int(np.argmin(loss))
    return float(n[i]), float(loss[i])


@pytest.mark.parametrize("law", [TRUTH, JointLaw(E=0.5, A=30.0, B=900.0, alpha=0.7, beta=0.25)])
def test_compute_optimal_matches_brute_force(law):
    budgets = np.array([1e15, 1e19, 1e23])
    table = compute_optimal(law, budgets)
    for i, budget in enumerate(budgets):
        n_best, loss_best = brute_force(law, budget)
        assert table.n_opt[i] == pytest.approx(n_best, rel=2e-4)
        assert table.loss_opt[i] == pytest.approx(loss_best, rel=1e-9)
        assert 6.0 * table.n_opt[i] * table.d_opt[i] == pytest.approx(budget, rel=1e-12)
    a, b, G = optimal_exponents(law)
    assert a + b == pytest.approx(1.0)
    assert a == pytest.approx(law.beta / (law.alpha + law.beta))


def test_compute_optimal_intervals_from_the_bootstrap(joint_fit):
    table = joint_fit.compute_optimal
    assert table is not None and table.confidence == 0.95
    low, high = table.intervals["loss_opt"]
    assert np.all(low < table.loss_opt) and np.all(table.loss_opt < high)
    true_n = compute_optimal(TRUTH, table.budgets).n_opt
    n_low, n_high = table.intervals["n_opt"]
    assert np.all(n_low < true_n) and np.all(true_n < n_high)
    a_low, a_high = joint_fit.interval("a")
    assert a_low < TRUTH.beta / (TRUTH.alpha + TRUTH.beta) < a_high


def test_empirical_exponent_recovers_known_slope():
    rng = np.random.default_rng(0)
    n = np.logspace(6, 10, 12)
    c = 7.0 * n**1.9 * np.exp(rng.normal(0.0, 0.05, n.size))
    fit = fit_compute_exponent(n, c)
    assert fit.low < 1.9 < fit.high
    assert fit.high - fit.low < 0.1
    assert fit.r2 > 0.99
    exact = fit_compute_exponent(n, 7.0 * n**1.9)
    assert exact.k == pytest.approx(1.9) and exact.high - exact.low < 1e-9


def test_empirical_exponent_refuses_bad_pairs():
    with pytest.raises(ModelscaleError, match="at least 3"):
        fit_compute_exponent([1e6, 1e7], [1e18, 1e19])
    with pytest.raises(ModelscaleError, match="same for every pair"):
        fit_compute_exponent([1e6, 1e6, 1e6], [1e18, 1e19, 1e20])
    with pytest.raises(ModelscaleError, match="positive"):
        fit_compute_exponent([1e6, -1e7, 1e8], [1e18, 1e19, 1e20])


def test_frontier_and_isoflop_exponent_follow_the_law():
    # IsoFLOP design: at each budget, 9 model sizes around the optimum; the loss comes from the law.
    budgets = np.logspace(18, 22, 5)
    n_rows, c_rows = [], []
    for budget in budgets:
        centre = compute_optimal(TRUTH, [budget]).n_opt[0]
        sizes = (
            centre
            * np.logspace(-0.4, 0.4, 9)
            * 10 ** (np.random.default_rng(int(np.log10(budget))).uniform(-0.01, 0.01))
        )
        n_rows.append(sizes)
        c_rows.append(np.full(sizes.size, budget))
    n, c = np.concatenate(n_rows), np.concatenate(c_rows)
    loss = TRUTH.predict(n, c / (6.0 * n))
    n_best, c_best = frontier(n, c, loss)
    assert len(n_best) == 5
    result = fit_law(loss, n=n, c=c, n_boot=0, loo=False)
    emp = result.empirical_exponent
    assert emp is not None and emp.n_points == 5 and emp.source == "frontier"
    implied = 1.0 / (TRUTH.beta / (TRUTH.alpha + TRUTH.beta))
    assert emp.k == pytest.approx(implied, abs=0.1)
    assert any("D was derived as C/(6·N)" in note for note in result.notes)
    np.testing.assert_allclose([result.law.alpha, result.law.beta], [TRUTH.alpha, TRUTH.beta], atol=0.01)


def test_no_empirical_exponent_without_shared_budgets(joint_fit):
    # A grid of N × D is not an IsoFLOP sweep: no spurious exponent from runs that happen to share C.
    assert joint_fit.empirical_exponent is None
    rng = np.random.default_rng(0)
    n, d = 10 ** rng.uniform(7, 10, 300), 10 ** rng.uniform(9, 12, 300)
    result = fit_law(TRUTH.predict(n, d), n=n, d=d, n_boot=0, loo=False)
    assert result.empirical_exponent is None


def test_frontier_skips_unbracketed_budgets():
    n = np.array([1e6, 2e6, 4e6, 1e6, 2e6, 4e6, 1e6, 2e6])
    c = np.array([1e18, 1e18, 1e18, 1e19, 1e19, 1e19, 1e20, 1e20])
    loss = np.array([3.0, 2.9, 3.1, 2.5, 2.6, 2.7, 2.0, 1.9])
    n_best, c_best = frontier(n, c, loss)
    np.testing.assert_array_equal(n_best, [2e6])  # 1e19: best at the edge; 1e20: only two runs
    np.testing.assert_array_equal(c_best, [1e18])


def test_compute_optimal_refuses_bad_budgets():
    with pytest.raises(ModelscaleError, match="positive"):
        compute_optimal(TRUTH, [1e20, -1.0])
