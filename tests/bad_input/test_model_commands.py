"""`eval`, `profile`, `compare`, `compress`, `sensitivity`, `export`: a model meets data it was not built for."""

from __future__ import annotations

import json

import pytest


# --- eval -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("data_key", ["breast_cancer", "iris", "digits_images"])
def test_eval_on_other_data(expect_bad, files, models, data_key):
    line = expect_bad(["eval", models["wine"], "--data", f"npz:{files[data_key]}"], "(13,)")
    assert "--data" in line  # names both sides


def test_eval_on_builtin_digits(expect_bad, models):
    expect_bad(["eval", models["wine"], "--data", "digits"], "(13,)", "(1, 8, 8)")


def test_eval_class_count_mismatch(expect_bad, files, models, tmp_path):
    import numpy as np

    d = np.load(files["wine"])
    path = tmp_path / "wine4.npz"  # 13 features like wine, but 4 classes: the model has 3 outputs
    np.savez(path, x=d["x"], y=np.arange(len(d["y"])) % 4)
    expect_bad(["eval", models["wine"], "--data", f"npz:{path}"], "3 outputs", "4 classes")


def test_eval_input_shape_conflicts(expect_bad, files, models):
    expect_bad(
        ["eval", models["wine"], "--data", f"npz:{files['wine']}", "--input-shape", "1,3,8,8"],
        "--input-shape",
    )


def test_eval_needs_data(expect_bad, models):
    expect_bad(["eval", models["wine"]], "--data")


def test_eval_nan_data(expect_bad, files, models):
    expect_bad(["eval", models["wine"], "--data", f"npz:{files['wine_nan']}"], "nan")


def test_eval_corrupt_manifest(expect_bad, files, models, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(models["wine"], broken)
    (broken / "modelscale.json").write_text("{not json")
    expect_bad(["eval", broken, "--data", f"npz:{files['wine']}"], "modelscale.json")


def test_eval_missing_weights(expect_bad, files, models, tmp_path):
    import shutil

    broken = tmp_path / "noweights"
    shutil.copytree(models["wine"], broken)
    for f in broken.glob("*.safetensors"):
        f.unlink()
    expect_bad(["eval", broken, "--data", f"npz:{files['wine']}"], "weights")


def test_eval_folder_not_a_model(expect_bad, tmp_path, files):
    (tmp_path / "empty").mkdir()
    expect_bad(["eval", tmp_path / "empty", "--data", f"npz:{files['wine']}"], "modelscale.json")


# --- profile ----------------------------------------------------------------------------------------
def test_profile_saved_model_with_image_shape(expect_bad, models):
    expect_bad(
        ["profile", models["wine"], "--input-shape", "1,3,224,224", "--no-latency"], "(13,)", "--input-shape"
    )


def test_profile_on_other_data(expect_bad, files, models):
    expect_bad(
        ["profile", models["wine"], "--data", f"npz:{files['breast_cancer']}", "--no-latency"], "(13,)"
    )


def test_profile_cnn_needs_image_shape(expect_bad):
    expect_bad(["profile", "cnn", "--input-shape", "1,13", "--no-latency"], "--input-shape")


def test_profile_token_model_with_image_shape(expect_bad):
    expect_bad(["profile", "gpt", "--input-shape", "1,3,8,8", "--no-latency"], "token")


def test_profile_saved_cnn_wrong_channels(expect_bad, models):
    expect_bad(["profile", models["digits_cnn"], "--input-shape", "1,3,8,8", "--no-latency"], "(1, 8, 8)")


@pytest.mark.parametrize(
    "extra, fragment",
    [
        (["--batch-size", "0"], "batch"),
        (["--batch-size", "-3"], "batch"),
        (["--repeats", "0"], "repeats"),
        (["--input-shape", "0,1,8,8"], "--input-shape"),
        (["--input-shape", "1,x"], "--input-shape"),
        (["--input-shape", "1,1,100000,100000"], "--input-shape"),
        (["--device", "tpu"], "device"),
        (["--width", "0"], "width"),
    ],
)
def test_profile_bad_option(expect_bad, extra, fragment):
    expect_bad(["profile", "cnn", *extra], fragment)


def test_profile_unknown_model(expect_bad):
    expect_bad(["profile", "nosuchmodel"], "unknown model")


def test_profile_torchvision_unknown(expect_bad):
    expect_bad(["profile", "torchvision:os.system", "--no-latency"], "torchvision")


# --- compare ----------------------------------------------------------------------------------------
def test_compare_other_model_does_not_fit_data(expect_bad, files, models):
    expect_bad(
        ["compare", models["wine"], models["breast_cancer"], "--data", f"npz:{files['wine']}"], "(30,)"
    )


def test_compare_on_other_data(expect_bad, files, models):
    expect_bad(
        ["compare", models["wine"], models["wine"], "--data", f"npz:{files['breast_cancer']}"], "(13,)"
    )


def test_compare_models_of_different_inputs(expect_bad, models):
    expect_bad(["compare", models["wine"], models["digits_cnn"]], "(13,)", "(1, 8, 8)")


def test_compare_unknown_model(expect_bad, models):
    expect_bad(["compare", models["wine"], "nosuchmodel"], "unknown model")


def test_compare_repeats_zero(expect_bad, models):
    expect_bad(["compare", models["wine"], models["wine"], "--repeats", "0"], "repeats")


# --- compress ---------------------------------------------------------------------------------------
PRUNE = ["--technique", "magnitude_prune", "--amount", "0.5"]


def test_compress_with_other_data(expect_bad, files, models):
    expect_bad(["compress", models["wine"], *PRUNE, "--data", f"npz:{files['breast_cancer']}"], "(13,)")


@pytest.mark.parametrize(
    "extra, fragment",
    [
        (["--calibration-batches", "-1"], "calibration"),
        (["--finetune-epochs", "-1"], "finetune-epochs"),
        (["--finetune-epochs", "1", "--finetune-lr", "0"], "lr"),
        (["--finetune-epochs", "1", "--finetune-lr", "nan"], "lr"),
        (["--finetune-epochs", "1", "--distill-from", "nosuch"], "nosuch"),
        (
            ["--finetune-epochs", "1", "--distill-from", "TEACHER", "--distill-temperature", "0"],
            "temperature",
        ),
        (["--finetune-epochs", "1", "--distill-from", "TEACHER", "--distill-alpha", "2"], "alpha"),
        (["--config", "nope.yaml"], "not found"),
        (["--amount", "1e1"], "amount"),
    ],
)
def test_compress_bad_option(expect_bad, files, models, extra, fragment):
    extra = [str(models["wine"]) if a == "TEACHER" else a for a in extra]
    expect_bad(["compress", models["wine"], *PRUNE, "--data", f"npz:{files['wine']}", *extra], fragment)


def test_compress_distill_teacher_other_data(expect_bad, files, models):
    expect_bad(
        [
            "compress", models["wine"], *PRUNE, "--data", f"npz:{files['wine']}", "--finetune-epochs", "1",
            "--distill-from", models["breast_cancer"],
        ],
        "teacher",
    )  # fmt: skip


def test_compress_out_is_a_file(expect_bad, files, models):
    (expect_bad.work / "taken").write_text("mine\n")
    expect_bad(
        ["compress", models["wine"], *PRUNE, "--data", f"npz:{files['wine']}", "--out", "taken"], "--out"
    )


def test_compress_technique_for_other_family(expect_bad, files, models):
    expect_bad(
        ["compress", models["wine"], "--technique", "prefix_tuning", "--data", f"npz:{files['wine']}"],
        "prefix_tuning",
    )


# --- sensitivity ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "extra, fragment",
    [
        (["--strengths", "a,b"], "--strengths"),
        (["--strengths", "2"], "amount"),
        (["--strengths", ""], "--strengths"),
        (["--technique", "nope"], "unknown technique"),
        (["--field", "nope"], "nope"),
    ],
)
def test_sensitivity_bad_option(expect_bad, files, models, extra, fragment):
    expect_bad(["sensitivity", models["wine"], "--data", f"npz:{files['wine']}", *extra], fragment)


def test_sensitivity_other_data(expect_bad, files, models):
    expect_bad(["sensitivity", models["wine"], "--data", f"npz:{files['breast_cancer']}"], "(13,)")


# --- export -----------------------------------------------------------------------------------------
def test_export_out_is_a_file(expect_bad, models):
    (expect_bad.work / "taken").write_text("mine\n")
    expect_bad(["export", models["wine"], "--out", "taken"], "--out")


def test_export_other_data(expect_bad, files, models):
    expect_bad(["export", models["wine"], "--data", f"npz:{files['breast_cancer']}", "--out", "e"], "(13,)")


@pytest.mark.parametrize(
    "extra, fragment", [(["--repeats", "0"], "repeats"), (["--threads", "0"], "threads")]
)
def test_export_bad_option(expect_bad, models, extra, fragment):
    expect_bad(["export", models["wine"], "--out", "e", *extra], fragment)


def test_export_static_needs_data(expect_bad, models):
    expect_bad(["export", models["wine"], "--out", "e", "--quantize", "static"], "--data")


def test_export_quantized_model(expect_bad, files, models, tmp_path, capsys):
    from modelscale.cli import main

    out = tmp_path / "int8"
    code = main(["compress", str(models["wine"]), "--technique", "dynamic_int8", "--out", str(out)])
    capsys.readouterr()
    assert code == 0
    line = expect_bad(["export", out / "model", "--out", "e"], "int8")
    assert "--exporter" not in line and "exporter=" not in line  # names no option that does not exist


def test_json_is_strict(run_ok, models, files):
    # eval of a model that outputs finite numbers: the JSON parses without NaN/Infinity constants
    code, out, _ = run_ok(["eval", models["wine"], "--data", f"npz:{files['wine']}", "--json"])
    assert code == 0

    def refuse(name):
        raise AssertionError(f"non-standard JSON constant {name}")

    json.loads(out, parse_constant=refuse)
