"""Input that looks odd but is valid is accepted (e-notation, seeds reproduce), and data problems a user
can live with are warnings, not errors."""

from __future__ import annotations

import json

import numpy as np
import yaml


def test_lr_in_e_notation(run_ok, files):
    code, out, err = run_ok(
        [
            "train",
            "mlp",
            "--data",
            f"npz:{files['wine']}",
            "--out",
            "m",
            "--epochs",
            "1",
            "--lr",
            "3e-4",
            "--progress",
            "false",
            "--json",
        ]
    )
    assert code == 0, err
    assert json.loads(out)["train"]["epochs"] == 1


def test_seed_reproduces_the_weights(run_ok, files):
    for out in ("a", "b"):
        code, _, err = run_ok(
            [
                "train",
                "mlp",
                "--data",
                f"npz:{files['wine']}",
                "--out",
                out,
                "--epochs",
                "1",
                "--seed",
                "0",
                "--progress",
                "false",
            ]
        )
        assert code == 0, err
    from safetensors.torch import load_file

    a, b = (load_file(str(run_ok.work / f / "model.safetensors")) for f in ("a", "b"))
    assert a.keys() == b.keys() and all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)


def test_no_top5_for_three_classes(run_ok, files, models):
    code, out, err = run_ok(["eval", models["wine"], "--data", f"npz:{files['wine']}", "--json"])
    assert code == 0, err
    assert "accuracy" in json.loads(out) and "top5" not in json.loads(out)


def test_class_missing_from_a_split_warns(run_ok, files, tmp_path):
    d = np.load(files["wine"])
    x = np.concatenate([d["x"], d["x"][:1] + 1])
    y = np.concatenate([d["y"], [3]])  # class 3 has one example: it lands in one split only
    path = tmp_path / "rare.npz"
    np.savez(path, x=x, y=y)
    code, out, err = run_ok(["eval", "mlp", "--data", f"npz:{path}", "--num-classes", "4"])
    assert code == 0, err
    assert "warning" in err.lower() and "class 3" in err


def test_study_lr_in_e_notation(run_ok, files, tmp_path):
    body = yaml.safe_dump(
        {
            "name": "s",
            "model": "mlp",
            "data": f"npz:{files['wine']}",
            "widths": [0.5],
            "train": {"epochs": 1, "progress": False},
            "n_boot": 0,
            "save_models": False,
        }
    )
    path = tmp_path / "study.yaml"
    path.write_text(body.replace("epochs: 1", "epochs: 1\n  lr: 3e-4"))
    code, out, err = run_ok(["scale", path, "--store", tmp_path / "s.db", "--out", tmp_path / "out"])
    assert code == 0, err
