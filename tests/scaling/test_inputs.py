import numpy as np
import pytest

from modelscale.core.errors import ModelscaleError
from modelscale.scaling import fit_law, fit_law_command, fit_law_csv

from .conftest import TRUTH, chinchilla_points


def write_csv(path, header, rows, sep=","):
    lines = [sep.join(header)] + [sep.join(str(v) for v in row) for row in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture()
def runs_csv(tmp_path):
    n, d, loss = chinchilla_points(noise=0.005, seed=2)
    rows = [(f"{a:.6g}", f"{b:.6g}", f"{6 * a * b:.8g}", f"{c:.6f}") for a, b, c in zip(n, d, loss)]
    return write_csv(tmp_path / "runs.csv", ["params", "tokens", "flops", "val_loss"], rows)


def test_csv_with_data_column(runs_csv):
    result = fit_law_csv(runs_csv, "params", "val_loss", d_column="tokens", n_boot=0, loo=False)
    assert result.kind == "joint"
    assert abs(result.law.alpha - TRUTH.alpha) < 0.02 and abs(result.law.beta - TRUTH.beta) < 0.02
    assert result.source == {
        "path": str(runs_csv),
        "n_column": "params",
        "loss_column": "val_loss",
        "d_column": "tokens",
    }
    assert not any("derived" in note for note in result.notes)


def test_csv_with_compute_column_derives_data(runs_csv):
    with_d = fit_law_csv(runs_csv, "params", "val_loss", d_column="tokens", n_boot=0, loo=False)
    with_c = fit_law_csv(runs_csv, "params", "val_loss", c_column="flops", n_boot=0, loo=False)
    assert any("D was derived as C/(6·N)" in note and "'flops'" in note for note in with_c.notes)
    np.testing.assert_allclose(with_c.law.values(), with_d.law.values(), rtol=1e-3)


def test_fit_law_command_returns_text_and_data(runs_csv):
    text, data = fit_law_command(runs_csv, n="params", loss="val_loss", c="flops", n_boot=40, seed=3)
    assert text.startswith("## Scaling law fit") and "D was derived" in text
    assert data["n_boot"] == 40 and data["seed"] == 3 and data["source"]["c_column"] == "flops"
    alpha = next(p for p in data["parameters"] if p["name"] == "alpha")
    assert alpha["low"] < alpha["value"] < alpha["high"]


def test_csv_semicolon_and_one_variable(tmp_path):
    x = np.logspace(5, 8, 6)
    rows = [(f"{a:.6g}", f"{1.5 + 30 * a**-0.25:.8f}") for a in x]
    path = write_csv(tmp_path / "one.csv", ["N", "loss"], rows, sep=";")
    result = fit_law_csv(path, "N", "loss", n_boot=0, loo=False)
    assert result.kind == "power"
    np.testing.assert_allclose(result.law.values(), (1.5, 30.0, 0.25), rtol=5e-3)


def test_missing_column_lists_available(runs_csv):
    with pytest.raises(
        ModelscaleError, match=r"'loss' not in runs.csv; available columns: params, tokens, flops, val_loss"
    ):
        fit_law_csv(runs_csv, "params", "loss", d_column="tokens")


def test_csv_bad_cells_and_files(tmp_path, runs_csv):
    path = write_csv(tmp_path / "bad.csv", ["N", "loss"], [(1e6, 3.0), (2e6, "n/a"), (4e6, 2.5)])
    with pytest.raises(ModelscaleError, match="line 3, column 'loss': 'n/a' is not a number"):
        fit_law_csv(path, "N", "loss")
    with pytest.raises(ModelscaleError, match="not found"):
        fit_law_csv(tmp_path / "absent.csv", "N", "loss")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(ModelscaleError, match="empty"):
        fit_law_csv(tmp_path / "empty.csv", "N", "loss")
    with pytest.raises(ModelscaleError, match="not both"):
        fit_law_csv(runs_csv, "params", "val_loss", d_column="tokens", c_column="flops")


def test_too_few_points():
    n, d, loss = chinchilla_points()
    with pytest.raises(ModelscaleError, match="5 runs are too few .* at least 6"):
        fit_law(loss[:5], n=n[:5], d=d[:5])
    with pytest.raises(ModelscaleError, match="3 runs are too few .* at least 4"):
        fit_law(loss[:3], n=n[:3])
    with pytest.raises(ModelscaleError, match="only 2 distinct"):
        fit_law([3.0, 3.0, 2.0, 2.0], n=[1e6, 1e6, 1e7, 1e7])


@pytest.mark.parametrize(
    ("values", "match"),
    [
        ([1e6, -1e7, 1e8, 1e9], "must be positive"),
        ([1e6, 0.0, 1e8, 1e9], "must be positive"),
        ([1e6, np.nan, 1e8, 1e9], "non-finite"),
        ([1e6, np.inf, 1e8, 1e9], "non-finite"),
        ([1e6, 1e7, 1e8], "3 values but the loss has 4"),
    ],
)
def test_bad_values_refused(values, match):
    with pytest.raises(ModelscaleError, match=match):
        fit_law([4.0, 3.0, 2.5, 2.2], n=values)


def test_constant_inputs_refused():
    n, d, loss = chinchilla_points()
    with pytest.raises(ModelscaleError, match="N is the same .* for every run"):
        fit_law(loss, n=np.full(n.size, 1e8), d=d)
    with pytest.raises(ModelscaleError, match="the same for every run; there is no trend"):
        fit_law(np.full(6, 2.0), n=np.logspace(6, 9, 6))
    # One compute budget: D = C/(6N) moves in lockstep with N, so the N and D terms cannot be separated.
    with pytest.raises(ModelscaleError, match="lockstep"):
        fit_law(loss[:10], n=n[:10], c=np.full(10, 1e20))


def test_bad_options_refused():
    n, d, loss = chinchilla_points()
    with pytest.raises(ModelscaleError, match="give at least one"):
        fit_law(loss)
    with pytest.raises(ModelscaleError, match="not both"):
        fit_law(loss, n=n, d=d, c=6 * n * d)
    with pytest.raises(ModelscaleError, match="n_boot"):
        fit_law(loss, n=n, d=d, n_boot=5)
    with pytest.raises(ModelscaleError, match="confidence"):
        fit_law(loss, n=n, d=d, confidence=95)
    with pytest.raises(ModelscaleError, match="delta"):
        fit_law(loss, n=n, d=d, delta=0.0)


def test_prediction_needs_the_right_inputs(joint_fit):
    with pytest.raises(ModelscaleError, match="predicts from 2 input"):
        joint_fit.predict_interval([1e9])
    with pytest.raises(ModelscaleError, match="confidence"):
        joint_fit.predict_interval([1e9], [1e10], confidence=1.5)
