"""The main job end to end (reduced epochs): a run folder with results.json and a readable report."""

from __future__ import annotations

import json

from modelscale.demo import run_demo


def test_quick_demo_writes_run_folder(tmp_path):
    summary = run_demo(out=tmp_path / "run", quick=True)
    run = tmp_path / "run"
    results = json.loads((run / "results.json").read_text())
    report = (run / "report.md").read_text()

    assert results["baseline"]["test"]["accuracy"] > 0.9  # real digits, 4 epochs
    assert results["variants"], "at least one compression variant ran"
    for variant in results["variants"]:
        cmp = variant["comparison"]
        assert cmp["theoretical_speedup"] >= 1.0
        assert cmp["measured_speedup"] is not None and cmp["measured_speedup"] > 0
        assert variant["record"]["config"]["type"] in report or variant["label"] in report
    unstructured = results["variants"][0]
    assert unstructured["record"]["summary"]["sparsity"] >= 0.79
    assert unstructured["comparison"]["zipped_ratio"] > 1.5
    assert "| baseline |" in report and "Latency (measured speedup)" in report
    assert (run / "baseline" / "model.safetensors").is_file()
    assert summary["run_dir"] == str(run)
