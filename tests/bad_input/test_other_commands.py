"""`scale`, `fit-law`, `search`, `demo`, `list`: bounds, files, e-notation, output locations."""

from __future__ import annotations

import pytest
import yaml


def study(files, **changes):
    body = {
        "name": "s",
        "model": "mlp",
        "data": f"npz:{files['wine']}",
        "widths": [0.5],
        "train": {"epochs": 1, "progress": False},
        "n_boot": 0,
        "save_models": False,
    }
    body.update(changes)
    return body


def scale(expect_bad, tmp_path, body, *fragments, extra=()):
    path = tmp_path / "study.yaml"
    path.write_text(body if isinstance(body, str) else yaml.safe_dump(body))
    store = tmp_path / "store.db"
    argv = ["scale", path, "--store", store, "--out", tmp_path / "out", *extra]
    return expect_bad(argv, *fragments, watch=(store, tmp_path / "out"))


def test_scale_missing_file(expect_bad, tmp_path):
    expect_bad(["scale", tmp_path / "nope.yaml"], "not found")


def test_scale_unknown_key(expect_bad, files, tmp_path):
    scale(expect_bad, tmp_path, study(files, epochs=3), "epochs")


def test_scale_epochs_bound(expect_bad, files, tmp_path):
    scale(expect_bad, tmp_path, study(files, train={"epochs": "1e20"}), "epochs")


def test_scale_cnn_on_flat_data(expect_bad, files, tmp_path):
    scale(expect_bad, tmp_path, study(files, model="cnn"), "cnn", "(13,)")


def test_scale_nan_data(expect_bad, files, tmp_path):
    scale(expect_bad, tmp_path, study(files, data=f"npz:{files['wine_nan']}"), "nan")


def test_scale_alias_bomb(expect_bad, files, tmp_path):
    levels = ["a0: &a0 [1.0, 2.0]"]
    for i in range(1, 10):
        levels.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    scale(expect_bad, tmp_path, "\n".join(levels) + "\n" + yaml.safe_dump(study(files)), "alias")


@pytest.mark.parametrize(
    "extra, fragment",
    [
        (["--jobs", "0"], "--jobs"),
        (["--heartbeat", "0"], "--heartbeat"),
        (["--join-wait", "-1"], "--join-wait"),
    ],
)
def test_scale_bad_option(expect_bad, files, tmp_path, extra, fragment):
    scale(expect_bad, tmp_path, study(files), fragment, extra=extra)


def test_scale_out_is_a_file(expect_bad, files, tmp_path):
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study(files)))
    expect_bad(
        ["scale", path, "--store", tmp_path / "s.db", "--out", files["a_file"]],
        "--out",
        watch=(tmp_path / "s.db",),
    )


def test_scale_n_boot_bound(expect_bad, files, tmp_path):
    scale(expect_bad, tmp_path, study(files, n_boot="1e11"), "n_boot")


# --- fit-law ----------------------------------------------------------------------------------------
def csv(tmp_path, rows, name="runs.csv"):
    path = tmp_path / name
    path.write_text("params,loss\n" + "".join(f"{n},{loss}\n" for n, loss in rows))
    return path


GOOD = [(1e5, 3.1), (3e5, 2.7), (1e6, 2.4), (3e6, 2.2), (1e7, 2.05), (3e7, 1.97)]


def test_fit_law_missing_file(expect_bad, tmp_path):
    expect_bad(["fit-law", tmp_path / "nope.csv", "--n", "params", "--loss", "loss"], "not found")


def test_fit_law_missing_column(expect_bad, tmp_path):
    expect_bad(["fit-law", csv(tmp_path, GOOD), "--n", "N", "--loss", "loss"], "'N'")


@pytest.mark.parametrize("n_boot", ["100000000000", "-1", "1e11"])
def test_fit_law_n_boot_bounds(expect_bad, tmp_path, n_boot):
    expect_bad(
        ["fit-law", csv(tmp_path, GOOD), "--n", "params", "--loss", "loss", "--n-boot", n_boot], "n-boot"
    )


def test_fit_law_nan_value(expect_bad, tmp_path):
    rows = [*GOOD[:-1], (3e7, "nan")]
    expect_bad(["fit-law", csv(tmp_path, rows), "--n", "params", "--loss", "loss", "--n-boot", "0"], "loss")


def test_fit_law_too_few_rows(expect_bad, tmp_path):
    expect_bad(
        ["fit-law", csv(tmp_path, GOOD[:2]), "--n", "params", "--loss", "loss", "--n-boot", "0"], "too few"
    )


def test_fit_law_d_and_c(expect_bad, tmp_path):
    expect_bad(
        ["fit-law", csv(tmp_path, GOOD), "--n", "params", "--loss", "loss", "--d", "a", "--c", "b"], "--d"
    )


# --- search -----------------------------------------------------------------------------------------
def test_search_on_other_data(expect_bad, files, models):
    expect_bad(
        ["search", models["wine"], "--data", f"npz:{files['breast_cancer']}", "--out", "s", "--trials", "1"],
        "(13,)",
    )


@pytest.mark.parametrize(
    "extra, fragment",
    [
        (["--trials", "0"], "trials"),
        (["--constraint", "garbage"], "constraint"),
        (["--objective", "nope"], "nope"),
        (["--space", "nope.yaml"], "not found"),
        (["--timeout", "-5"], "timeout"),
        (["--threads", "0"], "threads"),
    ],
)
def test_search_bad_option(expect_bad, files, models, extra, fragment):
    expect_bad(["search", models["wine"], "--data", f"npz:{files['wine']}", "--out", "s", *extra], fragment)


def test_search_out_is_a_file(expect_bad, files, models):
    (expect_bad.work / "taken").write_text("mine\n")
    expect_bad(
        ["search", models["wine"], "--data", f"npz:{files['wine']}", "--out", "taken", "--trials", "1"],
        "--out",
    )


# --- demo, list -------------------------------------------------------------------------------------
def test_demo_out_is_a_file(expect_bad):
    (expect_bad.work / "taken").write_text("mine\n")
    expect_bad(["demo", "--quick", "--out", "taken"], "--out")


def test_list_unknown(expect_bad):
    expect_bad(["list", "widgets"], "widgets")


def test_unknown_subcommand(expect_bad):
    expect_bad(["frobnicate"], "frobnicate")
