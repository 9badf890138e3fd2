"""`modelscale train`: model ↔ data mismatches, broken data, bad options and output locations."""

from __future__ import annotations

import pytest

TRAIN = ["--epochs", "1", "--progress", "false"]


@pytest.mark.parametrize(
    "data_key, fragments",
    [
        ("wine_nan", ("nan", "row 5")),
        ("wine_inf", ("inf", "row 7")),
        ("wine_negative", ("negative",)),
        ("wine_gaps", ("0, 2, 5",)),
        ("wine_float_labels", ("integer",)),
        ("wine_one_class", ("one class",)),
        ("wine_short_y", ("y must have shape",)),
        ("wine_no_y", ("lacks",)),
        ("wine_empty", ("no examples",)),
        ("wine_strings", ("numeric",)),
        ("wine_objects", ("npz",)),
        ("wine_2d_y", ("y must have shape",)),
        ("not_npz", ("npz",)),
    ],
)
def test_broken_data(expect_bad, files, data_key, fragments):
    expect_bad(["train", "mlp", "--data", f"npz:{files[data_key]}", "--out", "m", *TRAIN], *fragments)


def test_missing_npz(expect_bad, tmp_path):
    expect_bad(["train", "mlp", "--data", f"npz:{tmp_path / 'nope.npz'}", "--out", "m", *TRAIN], "not found")


def test_input_shape_contradicts_data(expect_bad, files):
    # the first case: a 13-feature table with an image shape
    expect_bad(
        ["train", "mlp", "--data", f"npz:{files['wine']}", "--input-shape", "1,3,8,8", "--out", "m", *TRAIN],
        "--input-shape",
        "(13,)",
    )


def test_cnn_on_flat_data(expect_bad, files):
    expect_bad(["train", "cnn", "--data", f"npz:{files['wine']}", "--out", "m", *TRAIN], "cnn", "(13,)")


def test_token_model_on_float_data(expect_bad, files):
    expect_bad(["train", "gpt", "--data", f"npz:{files['wine']}", "--out", "m", *TRAIN], "token")


def test_float_model_on_token_data(expect_bad, files):
    expect_bad(["train", "cnn", "--data", f"text:{files['text']}", "--out", "m", *TRAIN], "token")


def test_num_classes_smaller_than_labels(expect_bad, files):
    expect_bad(
        ["train", "mlp", "--data", f"npz:{files['wine']}", "--num-classes", "2", "--out", "m", *TRAIN],
        "--num-classes 2",
        "3 classes",
    )


@pytest.mark.parametrize(
    "option, value, fragment",
    [
        ("--epochs", "0", "epochs"),
        ("--epochs", "-1", "epochs"),
        ("--epochs", "1.5", "epochs"),
        ("--epochs", "1e20", "epochs"),
        ("--batch-size", "0", "batch_size"),
        ("--batch-size", "1e23", "batch_size"),
        ("--lr", "-1", "lr"),
        ("--lr", "nan", "lr"),
        ("--lr", "inf", "lr"),
        ("--lr", "abc", "lr"),
        ("--optimizer", "adam2", "optimizer"),
        ("--grad-clip", "-1", "grad_clip"),
        ("--max-steps", "0", "max_steps"),
        ("--label-smoothing", "1", "label_smoothing"),
        ("--warmup-steps", "1e12", "warmup_steps"),
        ("--schedule", "linear", "schedule"),
    ],
)
def test_bad_train_option(expect_bad, files, option, value, fragment):
    argv = ["train", "mlp", "--data", f"npz:{files['wine']}", "--out", "m", "--progress", "false"]
    if option != "--epochs":
        argv += ["--epochs", "1"]
    expect_bad([*argv, option, value], fragment)


@pytest.mark.parametrize(
    "option, value, fragment",
    [
        ("--seed", "-1", "seed"),
        ("--width", "0", "width"),
        ("--depth", "-1", "depth"),
        ("--device", "tpu", "device"),
        ("--width", "1e9", "width"),
    ],
)
def test_bad_common_option(expect_bad, files, option, value, fragment):
    expect_bad(
        ["train", "mlp", "--data", f"npz:{files['wine']}", "--out", "m", *TRAIN, option, value], fragment
    )


def test_out_is_an_existing_file(expect_bad, files):
    (expect_bad.work / "taken").write_text("mine\n")
    expect_bad(["train", "mlp", "--data", f"npz:{files['wine']}", "--out", "taken", *TRAIN], "--out", "file")


def test_out_below_a_file(expect_bad, files):
    expect_bad(
        ["train", "mlp", "--data", f"npz:{files['wine']}", "--out", f"{files['a_file']}/m", *TRAIN],
        "--out",
        watch=(files["a_file"],),
    )


def test_out_unwritable(expect_bad, files):
    expect_bad(
        ["train", "mlp", "--data", f"npz:{files['wine']}", "--out", "/proc/modelscale-m", *TRAIN], "--out"
    )


def test_weights_file_missing(expect_bad, files):
    expect_bad(
        [
            "train",
            "mlp",
            "--data",
            f"npz:{files['wine']}",
            "--weights",
            "nope.safetensors",
            "--out",
            "m",
            *TRAIN,
        ],
        "not found",
    )


def test_config_file_missing(expect_bad, files):
    expect_bad(
        ["train", "mlp", "--data", f"npz:{files['wine']}", "--config", "nope.yaml", "--out", "m"], "not found"
    )


def test_config_unknown_field(expect_bad, files):
    (expect_bad.work / "../train.yaml").write_text("epochs: 1\nlearning_rate: 0.1\n")
    expect_bad(
        ["train", "mlp", "--data", f"npz:{files['wine']}", "--config", "../train.yaml", "--out", "m"],
        "learning_rate",
    )


def test_diverging_lr_fails_and_saves_nothing(expect_bad, files):
    # lr 1e10 (written in e-notation) drives batch-norm statistics to inf: the run fails naming the
    # cause and writes no model
    expect_bad(
        ["train", "cnn", "--data", f"npz:{files['digits_images']}", "--out", "m", "--lr", "1e10", *TRAIN],
        "diverged",
        "lr",
    )


def test_a_finite_blow_up_fails_and_saves_nothing(expect_bad, files):
    # Adam at lr 1e6 keeps the weights finite but the loss explodes (2.3 -> ~1e20): still diverged
    expect_bad(
        ["train", "mlp", "--data", f"npz:{files['digits_images']}", "--out", "m", "--lr", "1e6", *TRAIN],
        "diverged",
        "first batch",
    )


def test_data_source_unknown(expect_bad):
    expect_bad(["train", "mlp", "--data", "wine", "--out", "m", *TRAIN], "unknown data source")
