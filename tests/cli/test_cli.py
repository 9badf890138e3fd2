"""The `modelscale` command end to end: real models, real digits data, exit codes, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torchvision

from modelscale.cli import main


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    "name, params",
    [("resnet50", 25_557_032), ("mobilenet_v2", 3_504_872)],
)
def test_profile_torchvision_matches_published_counts(capsys, name, params):
    code, out, _ = run_cli(
        capsys, "profile", f"torchvision:{name}", "--input-shape", "1,3,224,224", "--json", "--no-latency"
    )
    assert code == 0
    report = json.loads(out)
    assert report["params"]["total"] == params
    reference_gmacs = torchvision.models.get_model_weights(name).DEFAULT.meta["_ops"]
    assert report["macs"]["macs"] / 1e9 == pytest.approx(reference_gmacs, rel=0.02)
    assert report["macs"]["flops"] == 2 * report["macs"]["macs"]


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["profile", "nosuchmodel"], "unknown model 'nosuchmodel'"),
        (["profile", "cnn", "--data", "cifar10:/no/such/folder"], "CIFAR-10 files missing"),
        (["profile", "cnn", "--data", "nosuchdata"], "unknown data source"),
        (["profile", "cnn", "--input-shape", "1,x"], "--input-shape"),
        (["compress", "cnn", "--technique", "nope"], "unknown technique 'nope'"),
        (["compress", "cnn", "--technique", "magnitude_prune", "--amount", "3"], "amount must be < 1.0"),
        (["train", "mlp", "--out", "x"], "needs --data"),
        (["eval", "/no/such/dir", "--data", "digits"], "unknown model"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(capsys, argv, fragment):
    code, out, err = run_cli(capsys, *argv)
    assert code == 2
    assert fragment in err
    assert len(err.strip().splitlines()) == 1
    assert "Traceback" not in err


def test_usage_error_is_one_line_exit_2():
    proc = subprocess.run(
        [sys.executable, "-m", "modelscale", "profile"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1


def test_compress_help_lists_generated_options(capsys):
    with pytest.raises(SystemExit) as info:
        main(["compress", "--technique", "magnitude_prune", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "--amount" in out and "--scope" in out and "fraction of targeted weights" in out


def test_list_commands(capsys):
    code, out, _ = run_cli(capsys, "list", "techniques", "--json")
    assert code == 0 and "magnitude_prune" in json.loads(out)
    code, out, _ = run_cli(capsys, "list", "data")
    assert code == 0 and "digits" in out


def test_train_eval_compress_compare_round_trip(capsys, tmp_path):
    base = tmp_path / "mlp"
    code, out, err = run_cli(
        capsys,
        "train",
        "mlp",
        "--data",
        "digits",
        "--epochs",
        "3",
        "--progress",
        "false",
        "--out",
        str(base),
        "--json",
    )
    assert code == 0, err
    trained = json.loads(out)["test"]["accuracy"]
    assert trained > 0.8  # three epochs of an MLP on real digits

    code, out, _ = run_cli(capsys, "eval", str(base), "--data", "digits", "--json")
    assert code == 0
    assert json.loads(out)["accuracy"] == pytest.approx(trained)

    pruned = tmp_path / "pruned"
    code, out, err = run_cli(
        capsys,
        "compress",
        str(base),
        "--data",
        "digits",
        "--technique",
        "magnitude_prune",
        "--amount",
        "0.7",
        "--scope",
        "global",
        "--exclude",
        "net.0",
        "--out",
        str(pruned),
        "--json",
    )
    assert code == 0, err
    result = json.loads(out)
    assert result["record"]["summary"]["sparsity"] == pytest.approx(0.7, abs=0.01)
    assert result["comparison"]["nonzero_ratio"] > 2.0
    assert (pruned / "report.md").read_text().count("|") > 10

    code, out, err = run_cli(
        capsys, "compare", str(base), str(pruned / "model"), "--data", "digits", "--json"
    )
    assert code == 0, err
    cmp = json.loads(out)
    assert cmp["zipped_ratio"] > 1.5  # sparsity shows in the zipped bytes
    assert cmp["serialized_ratio"] == pytest.approx(1.0, abs=0.05)  # but not in the dense bytes
