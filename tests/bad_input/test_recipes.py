"""`modelscale run`: a recipe that can only fail is refused before its first step; failed variants fail the run."""

from __future__ import annotations

import json

import pytest
import yaml


def recipe(files, **changes):
    body = {
        "version": 1,
        "name": "bad",
        "model": {"name": "mlp"},
        "data": {"source": f"npz:{files['wine']}"},
        "baseline": {"train": {"epochs": 1, "progress": False}},
        "steps": [],
        "measure": {"metrics": ["params"]},
    }
    for key, value in changes.items():
        body[key] = value
    return body


def write(tmp_path, body, name="recipe.yaml"):
    path = tmp_path / name
    path.write_text(body if isinstance(body, str) else yaml.safe_dump(body))
    return path


def run_args(path, tmp_path):
    return ["run", path, "--store", tmp_path / "store.db", "--run-dir", tmp_path / "runs"]


def expect_refused(expect_bad, tmp_path, body, *fragments):
    path = write(tmp_path, body)
    line = expect_bad(run_args(path, tmp_path), *fragments, watch=(tmp_path / "store.db", tmp_path / "runs"))
    return line


def test_cnn_on_flat_data(expect_bad, files, tmp_path):
    expect_refused(expect_bad, tmp_path, recipe(files, model={"name": "cnn"}), "cnn", "(13,)")


def test_token_model_on_table(expect_bad, files, tmp_path):
    expect_refused(expect_bad, tmp_path, recipe(files, model={"name": "gpt"}), "token")


def test_saved_model_on_other_data(expect_bad, files, models, tmp_path):
    body = recipe(files, model={"load": str(models["wine"])}, baseline=None)
    body["data"] = {"source": f"npz:{files['breast_cancer']}"}
    del body["baseline"]
    expect_refused(expect_bad, tmp_path, body, "(13,)")


def test_int8_then_onnx_export(expect_bad, files, tmp_path):
    steps = [{"technique": "dynamic_int8"}, {"export": {"format": "onnx"}}]
    expect_refused(expect_bad, tmp_path, recipe(files, steps=steps), "steps[1]", "int8")


def test_technique_for_other_family(expect_bad, files, tmp_path):
    expect_refused(
        expect_bad,
        tmp_path,
        recipe(files, steps=[{"technique": "prefix_tuning"}]),
        "steps[0]",
        "prefix_tuning",
    )


def test_nan_data(expect_bad, files, tmp_path):
    body = recipe(files)
    body["data"] = {"source": f"npz:{files['wine_nan']}"}
    expect_refused(expect_bad, tmp_path, body, "nan")


def test_missing_data_file(expect_bad, files, tmp_path):
    body = recipe(files)
    body["data"] = {"source": f"npz:{tmp_path / 'nope.npz'}"}
    expect_refused(expect_bad, tmp_path, body, "not found")


@pytest.mark.parametrize(
    "train, fragment",
    [
        ({"epochs": 1, "batch_size": "1e23"}, "batch_size"),
        ({"epochs": "1e20"}, "epochs"),
        ({"epochs": 1, "lr": "abc"}, "lr"),
        ({"epochs": 1, "lr": -1}, "lr"),
        ({"epochs": 0}, "epochs"),
    ],
)
def test_bounds_in_training(expect_bad, files, tmp_path, train, fragment):
    expect_refused(expect_bad, tmp_path, recipe(files, baseline={"train": train}), "baseline.train", fragment)


def test_batch_size_1e23_as_yaml_number(expect_bad, files, tmp_path):
    text = yaml.safe_dump(recipe(files)).replace("epochs: 1", "epochs: 1\n    batch_size: 1e23")
    path = write(tmp_path, text)
    expect_bad(run_args(path, tmp_path), "batch_size", watch=(tmp_path / "store.db",))


def test_measure_bounds(expect_bad, files, tmp_path):
    body = recipe(files, measure={"batch_sizes": [10**12], "metrics": ["latency"]})
    expect_refused(expect_bad, tmp_path, body, "batch_sizes")


def test_torchvision_os_system(expect_bad, files, tmp_path):
    expect_refused(
        expect_bad, tmp_path, recipe(files, model={"name": "torchvision:os.system"}), "model:", "os.system"
    )


def test_unknown_key(expect_bad, files, tmp_path):
    expect_refused(expect_bad, tmp_path, recipe(files, extra=1), "unknown key")


def test_unknown_technique(expect_bad, files, tmp_path):
    expect_refused(expect_bad, tmp_path, recipe(files, steps=[{"technique": "nope"}]), "steps[0].technique")


def test_yaml_alias_bomb(expect_bad, files, tmp_path):
    # a billion-laughs document of about 1 KB: every level multiplies by nine
    levels = ["a0: &a0 [0.1, 0.2]"]
    for i in range(1, 10):
        levels.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    body = yaml.safe_dump(recipe(files))
    text = "\n".join(levels) + "\n" + body
    path = write(tmp_path, text)
    expect_bad(run_args(path, tmp_path), "alias", watch=(tmp_path / "store.db",))


def test_sweep_too_large(expect_bad, files, tmp_path):
    sweep = {"sweep": [1e-3 * (i + 1) for i in range(100)]}
    body = recipe(files, baseline={"train": {"epochs": 1, "lr": sweep, "weight_decay": sweep}})
    expect_refused(expect_bad, tmp_path, body, "variants")


def test_recipe_file_missing(expect_bad, tmp_path):
    expect_bad(run_args(tmp_path / "nope.yaml", tmp_path), "not found")


def test_recipe_not_a_mapping(expect_bad, tmp_path):
    expect_bad(run_args(write(tmp_path, "- 1\n- 2\n"), tmp_path), "mapping")


@pytest.mark.parametrize("epochs", ["0", "-1"])
def test_epochs_override(expect_bad, files, tmp_path, epochs):
    path = write(tmp_path, recipe(files))
    expect_bad([*run_args(path, tmp_path), "--epochs", epochs], "epochs")


def test_store_not_sqlite(expect_bad, files, tmp_path):
    path = write(tmp_path, recipe(files))
    store = tmp_path / "notes.db"
    store.write_text("not a database\n" * 100)
    expect_bad(["run", path, "--store", store, "--run-dir", tmp_path / "runs"], "store", watch=(store,))


def test_store_is_a_directory(expect_bad, files, tmp_path):
    path = write(tmp_path, recipe(files))
    (tmp_path / "storedir").mkdir()
    expect_bad(["run", path, "--store", tmp_path / "storedir", "--run-dir", tmp_path / "runs"], "store")


def test_store_unwritable(expect_bad, files, tmp_path):
    path = write(tmp_path, recipe(files))
    expect_bad(["run", path, "--store", "/proc/modelscale.db", "--run-dir", tmp_path / "runs"], "store")


def test_run_dir_is_a_file(expect_bad, files, tmp_path):
    path = write(tmp_path, recipe(files))
    expect_bad(
        ["run", path, "--store", tmp_path / "s.db", "--run-dir", files["a_file"]],
        "run-dir",
        watch=(tmp_path / "s.db",),
    )


def test_every_variant_diverges_fails_the_run(run_ok, files, tmp_path):
    body = recipe(
        files,
        model={"name": "cnn"},
        baseline={"train": {"epochs": 1, "lr": {"sweep": [1e10, 1e12]}, "progress": False}},
    )
    body["data"] = {"source": f"npz:{files['digits_images']}", "data_fraction": 0.3}
    path = write(tmp_path, body)
    code, out, err = run_ok([*run_args(path, tmp_path), "--json"])
    assert code != 0
    last = err.strip().splitlines()[-1]  # after the per-step progress lines: one summary line
    assert last.startswith("modelscale: error: 2 of 2 variant(s) failed") and "diverged" in last
    data = json.loads(out)
    assert [r["status"] for r in data["runs"]] == ["failed", "failed"]


def test_one_variant_diverges(run_ok, files, tmp_path):
    body = recipe(
        files,
        model={"name": "cnn"},
        baseline={"train": {"epochs": 1, "lr": {"sweep": ["3e-4", 1e10]}, "progress": False}},
    )
    body["data"] = {"source": f"npz:{files['digits_images']}", "data_fraction": 0.3}
    path = write(tmp_path, body)
    code, out, err = run_ok(run_args(path, tmp_path))
    assert code == 1
    assert "1 of 2" in err and "diverged" in err


def test_e_notation_in_recipe_is_a_number(run_ok, files, tmp_path):
    text = yaml.safe_dump(recipe(files)).replace("epochs: 1", "epochs: 1\n    lr: 3e-4")
    path = write(tmp_path, text)
    code, out, err = run_ok(run_args(path, tmp_path))
    assert code == 0, err
