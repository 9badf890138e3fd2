"""The GPU benchmark script runs every case end to end on CPU (`--quick`) and writes a complete JSON.

No timings are asserted: only that each case produced rows that carry either numbers or an error.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("benchmarks_gpu", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def result(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("gpu") / "gpu.json"
    env = dict(os.environ, OMP_NUM_THREADS="2", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SCRIPT.parents[1] / "src"), env.get("PYTHONPATH")]))
    cmd = [sys.executable, str(SCRIPT), "--device", "cpu", "--quick", "--threads", "2", "--json", str(out)]
    # ~20 s on two idle cores; the generous limit only guards against a hang on a loaded machine.
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "case 6 done" in proc.stdout and "notes / error" in proc.stdout  # progress lines and the table
    return json.loads(out.read_text())


def test_metadata(result):
    meta = result["meta"]
    assert meta["torch"] == torch.__version__ and meta["device"] == "cpu" and meta["quick"] is True
    assert meta["date"][:2] == "20" and set(meta["cases"]) == {str(i) for i in range(1, 7)}


def test_every_row_has_numbers_or_an_error(result):
    rows = result["rows"]
    assert {r["case"] for r in rows} == set(range(1, 7))
    for r in rows:
        if r["error"]:
            assert isinstance(r["error"], str) and len(r["error"]) > 5, r
            continue
        assert r["baseline_ms"] > 0 and r["variant_ms"] > 0, r
        assert r["baseline_p90_ms"] >= r["baseline_ms"] and r["variant_p90_ms"] >= r["variant_ms"], r
        assert math.isclose(r["speedup"], r["baseline_ms"] / r["variant_ms"], rel_tol=1e-9), r


def test_cpu_paths_measure_and_refusals_are_recorded(result):
    rows = result["rows"]
    for case in (1, 2, 3, 4, 6):  # each has a CPU kernel for at least one variant
        assert any(r["case"] == case and not r["error"] for r in rows), f"case {case} measured nothing"
    sparse = [r for r in rows if r["case"] == 5]
    # 2:4 semi-structured kernels are CUDA-only: both backends refuse, the dense baseline is still timed
    assert sparse and all("refused" in r["error"] and r["baseline_ms"] > 0 for r in sparse)
    half = [r for r in rows if r["case"] == 6 and r["variant"] == "half-width" and not r["error"]]
    assert len(half) == 2 and all(3.0 < r["theory"] < 4.5 for r in half)  # MACs shrink ~4x at half width
    gemv = [r for r in rows if r["name"] == "weight-only int8 GEMV" and not r["error"]]
    assert gemv and all(float(r["notes"].split("relerr vs bf16 ")[1][:7]) < 0.05 for r in gemv)


def test_half_width_builder_matches_torchvision():
    torchvision = pytest.importorskip("torchvision")
    gpu = _load_script()
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(gpu.resnet50_width(1.0)) == count(torchvision.models.resnet50(weights=None)) == 25_557_032
    x = torch.randn(1, 3, 64, 64)
    assert gpu.resnet50_width(0.5).eval()(x).shape == (1, 1000)


def test_mask_2_4_and_stats():
    gpu = _load_script()
    w = torch.randn(16, 32)
    keep = gpu.mask_2_4(w)
    assert torch.equal(keep.view(16, 8, 4).sum(-1), torch.full((16, 8), 2))
    kept, dropped = w.abs()[keep].view(16, 8, 2), w.abs()[~keep].view(16, 8, 2)
    assert torch.all(kept.min(-1).values >= dropped.max(-1).values)
    timing = sys.modules["gpu_timing"]  # loaded by the script as its sibling
    assert timing._stats([5.0, 1.0, 3.0, 2.0, 4.0, 10.0]) == (3.5, 10.0)
