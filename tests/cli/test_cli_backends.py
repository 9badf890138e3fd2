"""`--compile` and `--backend ort|both` on profile, compare and train: real torch.compile, real ORT sessions."""

from __future__ import annotations

import json

import pytest
import torch

from modelscale.cli import main

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

QUICK = ("--repeats", "10", "--latency-budget", "0", "--threads", "1")


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.fixture(scope="module")
def unexportable(tmp_path_factory):
    """A saved folder whose model no ONNX exporter handles (dynamic int8 kernels)."""
    out = tmp_path_factory.mktemp("int8")
    code = main(
        [
            "compress",
            "mlp",
            "--input-shape",
            "4,1,8,8",
            "--technique",
            "dynamic_int8",
            "--out",
            str(out),
            *QUICK,
        ]
    )
    assert code == 0
    return out / "model"


def test_profile_compile_and_ort_next_to_eager(capsys):
    code, out, err = run_cli(
        capsys,
        "profile",
        "mlp",
        "--input-shape",
        "4,1,8,8",
        "--compile",
        "--backend",
        "both",
        "--json",
        *QUICK,
    )
    assert code == 0, err
    report = json.loads(out)
    assert report["params"]["total"] > 0  # the profile itself is all there
    backends = report["backends"]
    runs = {r["backend"]: r for r in backends["runs"]}
    assert set(runs) == {"eager", "compiled", "ort"} and all(r["status"] == "ok" for r in runs.values())
    assert runs["compiled"]["setup"]["compile_s"] > 0 and runs["ort"]["setup"]["export_s"] > 0
    assert runs["compiled"]["cosine"] > 0.9999 and runs["ort"]["max_abs_diff"] < 1e-4
    pairs = {(r["a"], r["b"]): r["stats"] for r in backends["ratios"]}
    assert set(pairs) == {("model:eager", "model:compiled"), ("model:eager", "model:ort")}
    for stats in pairs.values():
        assert stats["pairs"] >= 10 and stats["ci_low"] <= stats["ratio"] <= stats["ci_high"]
        assert stats["threads"] == 1


def test_profile_text_names_compile_time_apart(capsys):
    code, out, err = run_cli(capsys, "profile", "mlp", "--input-shape", "2,1,8,8", "--compile", *QUICK)
    assert code == 0, err
    section = out[out.index("Backends") :]
    assert "model compiled: compiled (inductor, mode default) in" in section
    assert "model:eager / model:compiled:" in section and "model ort" not in section


def test_backend_ort_alone_that_cannot_run_is_exit_2_in_one_line(capsys, unexportable):
    code, out, err = run_cli(capsys, "profile", str(unexportable), "--backend", "ort", *QUICK)
    assert code == 2 and out == ""
    assert err.startswith("modelscale: error: --backend ort cannot run model") and "ONNX export failed" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_backend_both_keeps_the_torch_figure_and_says_why(capsys, unexportable):
    code, out, err = run_cli(capsys, "profile", str(unexportable), "--backend", "both", "--json", *QUICK)
    assert code == 0, err
    report = json.loads(out)
    runs = {r["backend"]: r for r in report["backends"]["runs"]}
    assert runs["ort"]["status"] == "failed" and "ONNX export failed" in runs["ort"]["reason"]
    assert runs["eager"]["latency"]["median_ms"] > 0 and report["latency"]["median_ms"] > 0
    assert report["backends"]["ratios"] == []


def test_compare_compiled_both_ways_and_across(capsys, unexportable):
    code, out, err = run_cli(capsys, "compare", "mlp", str(unexportable), "--compile", "--json", *QUICK)
    assert code == 0, err
    cmp = json.loads(out)
    assert cmp["measured_speedup"] is not None  # compare's own eager pair is still there
    pairs = {(r["a"], r["b"]) for r in cmp["backends"]["ratios"]}
    assert ("base:eager", "base:compiled") in pairs
    assert ("base:compiled", "other:compiled") in pairs or any(
        r["model"] == "other" and r["status"] == "failed" for r in cmp["backends"]["runs"]
    )


def test_no_latency_with_compile_is_refused(capsys):
    code, out, err = run_cli(capsys, "profile", "mlp", "--no-latency", "--compile")
    assert code == 2 and "drop --no-latency" in err and len(err.strip().splitlines()) == 1


def test_train_compile_records_the_compile(capsys, tmp_path):
    argv = ["train", "mlp", "--data", "digits", "--epochs", "1", "--max-steps", "3", "--batch-size", "32"]
    code, out, err = run_cli(
        capsys, *argv, "--compile", "--progress", "false", "--out", str(tmp_path / "m"), "--json"
    )
    assert code == 0, err
    compiled = json.loads(out)["train"]["compile"]
    assert compiled["status"] == "compiled" and compiled["compile_s"] > 0 and compiled["first_backward_s"] > 0
    saved = json.loads((tmp_path / "m" / "modelscale.json").read_text())
    assert "compile" in json.dumps(saved)  # the train config stored with the folder says it was compiled
