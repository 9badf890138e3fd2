"""`modelscale scale` and `modelscale fit-law` end to end on real digits and a user CSV."""

from __future__ import annotations

import json

import numpy as np

from modelscale.cli import main


def test_scale_on_digits_fits_a_law_and_compares_compression(tmp_path, capsys):
    study = tmp_path / "study.yaml"
    study.write_text(
        "name: tiny\nmodel: mlp\ndata: digits\nwidths: [0.25, 1.0]\ndata_fractions: [0.5, 1.0]\n"
        "train: {epochs: 3, lr: 0.003, progress: false}\ncompress_or_train_small: true\n"
    )
    code = main(
        [
            "scale",
            str(study),
            "--store",
            str(tmp_path / "db.sqlite"),
            "--out",
            str(tmp_path / "out"),
            "--json",
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    data = json.loads(captured.out)
    assert data["fits"], "at least one law was fitted"
    figures = tmp_path / "out" / "tiny" / "figures"
    assert (figures / "loss_vs_params.png").is_file()
    assert (figures / "compress_or_train_small.png").is_file()
    table = data["compress_or_train_small"]["table"]
    assert len(table) == 2 and all("winner" in row for row in table)
    assert "Compress the largest model" in (tmp_path / "out" / "tiny" / "summary.md").read_text()


def test_fit_law_on_a_user_csv(tmp_path, capsys):
    rng = np.random.default_rng(0)
    n = np.exp(rng.uniform(np.log(1e7), np.log(1e10), 40))
    d = np.exp(rng.uniform(np.log(1e9), np.log(1e12), 40))
    loss = (1.82 + 482 / n**0.348 + 2085 / d**0.366) * np.exp(rng.normal(0, 0.005, 40))
    csv = tmp_path / "runs.csv"
    csv.write_text("params,tokens,loss\n" + "".join(f"{a},{b},{c}\n" for a, b, c in zip(n, d, loss)))
    code = main(["fit-law", str(csv), "--n", "params", "--d", "tokens", "--loss", "loss", "--n-boot", "50"])
    out = capsys.readouterr().out
    assert code == 0
    assert "95% interval" in out and "Compute-optimal" in out
    code = main(["fit-law", str(csv), "--n", "params", "--d", "nope", "--loss", "loss"])
    assert code == 2 and "available columns" in capsys.readouterr().err
