"""The main job end to end (reduced epochs, one point per sweep): run folder, results, report."""

from __future__ import annotations

import json
from pathlib import Path

from modelscale.demo import demo_recipes, run_demo


def test_quick_demo_writes_run_folder(tmp_path):
    summary = run_demo(out=tmp_path / "run", quick=True)
    run = tmp_path / "run"
    results = json.loads((run / "results.json").read_text())
    report = (run / "report.md").read_text()
    html = (run / "report.html").read_text()

    assert results["baseline"]["test"]["accuracy"] > 0.9  # real digits, 4 epochs
    recipes = {v["recipe"] for v in results["variants"]}
    assert recipes == {"unstructured", "structured", "lowrank", "int8", "prune-distill-int8"}
    assert all(v["status"] == "completed" for v in results["variants"]), results["variants"]
    assert len(results["runs"]) == len(results["variants"]) + 1  # the baseline is its own recorded run
    assert "Pareto" in report and "data:image/png;base64," in html and 'src="http' not in html
    assert (Path(results["baseline"]["folder"]) / "model.safetensors").is_file()
    # One baseline row: every variant loaded the same trained model, which was measured once.
    pareto = [line for line in report.splitlines() if line.startswith("| baseline")]
    assert len(pareto) == 1, pareto
    # Each variant's measured speedup is a paired ratio against that baseline.
    speedups = report.split("Theoretical vs measured speedup", 1)[1].split("\n## ", 1)[0]
    assert "paired and interleaved" in speedups
    assert (run / "modelscale.db").is_file()
    assert summary["run_dir"] == str(run)


def test_full_demo_sweeps_several_strengths(tmp_path):
    recipes = {r["name"]: r for r in demo_recipes(tmp_path)}
    amount = recipes["unstructured"]["steps"][0]["config"]["amount"]
    assert amount == {"sweep": [0.5, 0.8, 0.9]}
    assert [s.get("name") for s in recipes["prune-distill-int8"]["steps"]] == ["prune", "distill", "int8"]
