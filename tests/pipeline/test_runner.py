"""The runner: per-step checkpoints and markers, resume after SIGKILL, failures recorded, sweeps go on."""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from modelscale.core.errors import ModelscaleError
from modelscale.models.loading import load_model_dir
from modelscale.pipeline import RunStore, run_recipe, runs_compare
from modelscale.pipeline.runner import MARKER, run_lock

HAS_ONNX = all(importlib.util.find_spec(m) for m in ("onnx", "onnxscript"))

SWEEP = {
    "version": 1,
    "name": "sweepy",
    "model": {"name": "mlp", "kwargs": {"hidden": 64}},
    "data": {"source": "digits", "seed": 0, "data_fraction": 0.5},
    "baseline": {"train": {"epochs": 3, "lr": 0.01, "progress": False}},
    "steps": [
        {"name": "prune", "technique": "magnitude_prune", "config": {"amount": 0.5}},
        # the second value makes SGD diverge: that variant must fail with a clear message
        {
            "name": "tune",
            "finetune": {"epochs": 1, "optimizer": "sgd", "lr": {"sweep": [0.01, 1e30]}, "progress": False},
        },
        *([{"name": "onnx", "export": {}}] if HAS_ONNX else []),
    ],
    "measure": {
        "metrics": ["accuracy", "params", "size", "latency"],
        "batch_sizes": [1, 4],
        "repeats": 2,
        "warmup": 1,
    },
}


def test_sweep_variants_checkpoints_failures_and_a_noop_rerun(tmp_path, capsys):
    db, run_dir = tmp_path / "runs.db", tmp_path / "run"
    result = run_recipe(SWEEP, store=db, run_dir=run_dir, progress=True)
    good, bad = result.variants
    assert (good.label, good.status) == ("lr=0.01", "completed")
    assert (bad.label, bad.status) == ("lr=1e+30", "failed")
    assert "step 2 (tune)" in bad.error and "training loss became" in bad.error
    n_steps = len(SWEEP["steps"]) + 1
    err = capsys.readouterr().err
    assert err.count("sweepy/lr=0.01 [") == n_steps and "FAILED: training loss became" in err

    # every finished step folder holds a loadable checkpoint, measurements and the marker
    vdir = run_dir / good.slug
    folders = ["0-baseline", "1-prune", "2-tune", *(["3-onnx"] if HAS_ONNX else [])]
    assert sorted(p.name for p in vdir.iterdir()) == folders
    for folder in folders:
        marker = json.loads((vdir / folder / MARKER).read_text())
        assert marker["status"] == "completed" and (vdir / folder / "model.safetensors").is_file()
    tuned = load_model_dir(vdir / "2-tune").model
    linear = [m.weight for m in tuned.modules() if isinstance(m, torch.nn.Linear)]
    assert linear and all(
        float((w == 0).float().mean()) >= 0.49 for w in linear
    )  # masks held through the fine-tune
    if HAS_ONNX:
        assert (vdir / "3-onnx" / "model.onnx").stat().st_size > 1000
    assert not (run_dir / bad.slug / "2-tune" / MARKER).exists()

    with RunStore(db) as store:
        steps = store.steps(good.run_id)
        assert [s["status"] for s in steps] == ["completed"] * n_steps
        assert [s["attempts"] for s in steps] == [1] * n_steps
        bad_steps = store.steps(bad.run_id)
        assert [s["status"] for s in bad_steps] == ["completed", "completed", "failed"]
        assert "training loss became" in bad_steps[2]["error"]
        # the failed variant shares its baseline and prune with the good one: copied, not recomputed
        assert bad_steps[0]["reused_from"].endswith("0-baseline") and bad_steps[1]["reused_from"]
        assert store.run(bad.run_id)["status"] == "failed"
        base_acc = [m for m in store.metrics(good.run_id, 0) if m["name"] == "quality.accuracy"]
        assert (
            len(base_acc) == 1 and base_acc[0]["batch_size"] == 1 and base_acc[0]["value"] > 0.7
        )  # real digits
        latencies = [m for m in store.metrics(good.run_id, 1) if m["name"] == "latency.median_ms"]
        assert sorted(m["batch_size"] for m in latencies) == [1, 4]
        kinds = {a["kind"] for a in store.artifacts(good.run_id)}
        assert {"checkpoint", "profile"} <= kinds and (("onnx" in kinds) == HAS_ONNX)
        before = {s["idx"]: (s["started_at"], s["attempts"]) for s in steps}

    # running again resumes: nothing finished is redone, the failed step is tried again
    # (showing a progress bar or not is display only and does not invalidate checkpoints)
    toggled = copy.deepcopy(SWEEP)
    toggled["baseline"]["train"]["progress"] = True
    again = run_recipe(toggled, store=db, run_dir=run_dir, progress=False)
    assert [s.how for s in again.variants[0].steps] == ["resumed"] * n_steps
    assert again.variants[0].run_id == good.run_id and again.variants[1].status == "failed"
    with RunStore(db) as store:
        assert {s["idx"]: (s["started_at"], s["attempts"]) for s in store.steps(good.run_id)} == before
        assert store.steps(bad.run_id)[2]["attempts"] == 2
    text, data = runs_compare([good.run_id, bad.run_id], store=db)
    assert data[0]["final_step"] == "2-tune" and data[0]["accuracy"] > 0.7

    # a new, empty store is rebuilt from the markers without executing anything finished
    fresh = tmp_path / "fresh.db"
    rebuilt = run_recipe(SWEEP, store=fresh, run_dir=run_dir, progress=False)
    assert [s.how for s in rebuilt.variants[0].steps] == ["resumed"] * n_steps
    with RunStore(fresh) as new, RunStore(db) as old:
        run_id = new.runs()[0]["id"]
        assert [s["status"] for s in new.steps(run_id)] == ["completed"] * n_steps

        def numbers(rows):
            return sorted((m["step_idx"], m["name"], m["batch_size"] or 0, m["value"]) for m in rows)

        assert numbers(new.metrics(run_id)) == numbers(old.metrics(good.run_id))


def test_runtime_errors_are_recorded_and_preflight_checks(tmp_path):
    recipe = {
        "version": 1,
        "name": "nolayers",
        "model": {"name": "mlp", "kwargs": {"hidden": 16}},
        "data": {"source": "digits"},
        "steps": [{"technique": "magnitude_prune", "config": {"target": {"include": ["nomatch*"]}}}],
        "measure": {"metrics": ["params"]},
    }
    db, run_dir = tmp_path / "r.db", tmp_path / "run"
    result = run_recipe(recipe, store=db, run_dir=run_dir, progress=False)
    (variant,) = result.variants
    assert variant.status == "failed" and "target selected no layers" in variant.error
    assert [s.status for s in variant.steps] == ["completed", "failed"]
    # a checkpoint removed by hand: that variant fails with a clear message instead of crashing the run
    (run_dir / "default" / "0-baseline" / "model.safetensors").unlink()
    broken = run_recipe(recipe, store=db, run_dir=run_dir, progress=False).variants[0]
    assert broken.status == "failed" and "cannot resume from step 0 (baseline)" in broken.error

    changed = copy.deepcopy(recipe)
    changed["model"]["kwargs"]["hidden"] = 32
    with pytest.raises(ModelscaleError, match="holds the result of a different recipe"):
        run_recipe(changed, store=db, run_dir=run_dir, progress=False)
    fresh = run_recipe(changed, store=db, run_dir=run_dir, resume=False, progress=False)
    assert fresh.variants[0].steps[0].how == "executed" and fresh.variants[0].run_id != variant.run_id
    with run_lock(run_dir), pytest.raises(ModelscaleError, match="another process is running a recipe"):
        run_recipe(changed, store=db, run_dir=run_dir, progress=False)
    if not torch.cuda.is_available():
        cuda = copy.deepcopy(recipe)
        cuda["measure"]["devices"] = ["cuda"]
        with pytest.raises(ModelscaleError, match="no.*cuda|cuda.*none is present"):
            run_recipe(cuda, store=db, run_dir=tmp_path / "other", progress=False)
        assert not (tmp_path / "other").exists()  # refused before anything ran


KILL_RECIPE = {
    "version": 1,
    "name": "killme",
    "model": {"name": "cnn", "kwargs": {"width": 0.5}},
    "data": {"source": "digits", "seed": 0},
    "baseline": {"train": {"epochs": 1, "lr": 0.003, "progress": False}},
    "steps": [
        {"name": "prune", "technique": "magnitude_prune", "config": {"amount": 0.6}},
        {"name": "long", "finetune": {"epochs": 6, "lr": 0.0005, "progress": False}},
        {"name": "short", "finetune": {"epochs": 1, "lr": 0.0002, "progress": False}},
    ],
    "measure": {"metrics": ["accuracy", "params"]},
}

RUNNER = textwrap.dedent(
    """
    import sys, torch
    torch.set_num_threads(1)
    from modelscale.pipeline import run_recipe
    run_recipe(sys.argv[1], store=sys.argv[2], run_dir=sys.argv[3], progress=False)
    """
)


def test_sigkill_mid_step_then_resume(tmp_path, capsys):
    recipe_path, db, run_dir = tmp_path / "r.json", tmp_path / "r.db", tmp_path / "run"
    recipe_path.write_text(json.dumps(KILL_RECIPE))
    vdir = run_dir / "default"
    proc = subprocess.Popen(
        [sys.executable, "-c", RUNNER, str(recipe_path), str(db), str(run_dir)],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    deadline = time.monotonic() + 240
    with RunStore(db) as store:  # wait until step 1's marker exists and step 2 is under way
        while True:
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, "step 2 never started"
            runs = store.runs()
            steps = store.steps(runs[0]["id"]) if runs else []
            if (vdir / "1-prune" / MARKER).exists() and any(
                s["idx"] == 2 and s["status"] == "running" for s in steps
            ):
                break
            time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL

    with RunStore(db) as store:
        (run,) = store.runs()
        killed = {s["idx"]: dict(s) for s in store.steps(run["id"])}
    assert killed[0]["status"] == killed[1]["status"] == "completed"
    assert killed[2]["status"] == "running"  # it died in the middle of step 2
    assert not (vdir / "2-long" / MARKER).exists()
    files_before = {
        p: (p.read_bytes(), p.stat().st_mtime_ns)
        for f in ("0-baseline", "1-prune")
        for p in (vdir / f).iterdir()
    }

    result = run_recipe(recipe_path, store=db, run_dir=run_dir, progress=True)
    (variant,) = result.variants
    assert variant.status == "completed" and variant.run_id == run["id"]
    assert [s.how for s in variant.steps] == ["resumed", "resumed", "executed", "executed"]
    err = capsys.readouterr().err
    assert err.count("done earlier (resumed)") == 2 and err.count(": done in") == 2

    with RunStore(db) as store:
        steps = {s["idx"]: s for s in store.steps(run["id"])}
        assert store.run(run["id"])["status"] == "completed"
    for idx in (0, 1):  # finished steps were not executed again
        assert (steps[idx]["started_at"], steps[idx]["attempts"]) == (killed[idx]["started_at"], 1)
    assert steps[2]["attempts"] == 2 and steps[3]["attempts"] == 1
    assert all(s["status"] == "completed" for s in steps.values())
    assert files_before == {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in files_before}
    leftovers = [p for p in Path(run_dir).rglob("*") if ".tmp" in p.name]
    assert leftovers == []
    final = load_model_dir(vdir / "3-short").model
    conv = [m.weight for m in final.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(float((w == 0).float().mean()) > 0.3 for w in conv)  # the masks survived the resume
    marker = json.loads((vdir / "3-short" / MARKER).read_text())
    assert any(m["name"] == "quality.accuracy" and m["value"] > 0.5 for m in marker["metrics"])
