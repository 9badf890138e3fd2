"""benchmarks/fit_law.py runs end to end on a small problem and writes complete JSON (no timing asserted)."""

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "fit_law.py"


def test_fit_law_benchmark_writes_json(tmp_path):
    out = tmp_path / "fit_law.json"
    args = [sys.executable, str(SCRIPT), "--points", "40", "--n-boot", "20", "--json", str(out)]
    run = subprocess.run(args, capture_output=True, text=True, timeout=300, check=True)
    assert "fit_law total:" in run.stdout
    data = json.loads(out.read_text())
    assert data["setup"]["points"] == 40 and data["result"]["n_boot_ok"] == 20
    assert set(data["seconds"]) >= {"fit_law_wall", "fit_law_cpu", "bootstrap_cpu"}
    assert data["machine"]["numpy"] and data["machine"]["scipy"] and data["machine"]["cpu"]
