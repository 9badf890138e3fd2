"""Scaling sweeps on real data (digits; Python stdlib bytes): size trend, reproducibility, resume, store, laws."""

from __future__ import annotations

import json
import math

import pytest

from modelscale.core.errors import ModelscaleError
from modelscale.pipeline.store import RunStore
from modelscale.scaling.sweep import SweepConfig, run_sweep, sweep_points

TRAIN = {"epochs": 3, "batch_size": 32, "lr": 3e-3, "progress": False, "deterministic": True}


def small_config(**overrides) -> SweepConfig:
    data = {
        "name": "small",
        "model": "cnn",
        "widths": [0.125, 1.0],
        "data_fractions": [0.5, 1.0],
        "train": TRAIN,
    }
    data.update(overrides)
    return SweepConfig.from_dict(data)


@pytest.fixture(scope="module")
def first(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    result = run_sweep(small_config(), store=root / "db.sqlite", out_dir=root / "out", progress=False)
    return root, result


def _by_key(result):
    return {p["key"]: p for p in result.points}


def test_loss_falls_with_width_and_records_are_complete(first):
    root, result = first
    assert result.executed == 4 and result.skipped == 0 and not result.failed
    pts = _by_key(result)
    for frac in (0.5, 1):
        small, big = pts[f"w0.125-d1-f{frac:g}-s0"], pts[f"w1-d1-f{frac:g}-s0"]
        assert big["params"] > 20 * small["params"]
        assert big["test_loss"] < small["test_loss"]
        assert big["test_accuracy"] > small["test_accuracy"]
    for p in result.points:
        assert p["generalization_gap"] == pytest.approx(p["test_loss"] - p["train_loss"])
        assert p["examples_seen"] == 3 * p["train_examples"]
        # forward + backward ≈ 3 forwards = 6 MACs; the first layer needs no input gradient, so a bit less.
        assert 4.0 * p["macs_per_example"] < p["train_flops_per_example"] <= 6.0 * p["macs_per_example"]
        assert p["train_flops"] == pytest.approx(p["train_flops_per_example"] * p["examples_seen"])
        assert p["flops_6nd"] is None and p["task"] == "classification"
    # Half the data: half the examples, same split sizes for val/test.
    assert pts["w1-d1-f0.5-s0"]["train_examples"] == pytest.approx(
        pts["w1-d1-f1-s0"]["train_examples"] / 2, abs=1
    )
    with RunStore(root / "db.sqlite") as db:
        runs = db.runs(recipe="scale:small")
        assert len(runs) == 4 and {r["status"] for r in runs} == {"completed"}
        names = {m["name"] for m in db.metrics(runs[0]["id"])}
        assert {"sweep.params", "sweep.test_loss", "sweep.train_flops", "sweep.generalization_gap"} <= names


def test_resume_runs_nothing_then_only_new_points(first):
    root, result = first
    again = run_sweep(small_config(), store=root / "db.sqlite", out_dir=root / "out", progress=False)
    assert again.executed == 0 and again.skipped == 4
    assert [p["test_loss"] for p in again.points] == [p["test_loss"] for p in result.points]
    wider = small_config(widths=[0.125, 1.0, 0.25], data_fractions=[1.0])
    more = run_sweep(wider, store=root / "db.sqlite", out_dir=root / "out", progress=False)
    assert more.executed == 1 and more.skipped == 2
    changed = small_config(widths=[0.125], data_fractions=[1.0], train={**TRAIN, "epochs": 2})
    rerun = run_sweep(changed, store=root / "db.sqlite", out_dir=root / "out", progress=False)
    assert rerun.executed == 1  # other settings: the stored point is not reused


def test_reproducible_in_deterministic_mode(first, tmp_path):
    _, result = first
    cfg = small_config(widths=[0.125, 1.0], data_fractions=[0.5])
    twin = run_sweep(cfg, store=tmp_path / "db.sqlite", out_dir=tmp_path / "out", progress=False)
    ref = _by_key(result)
    for p in twin.points:
        for key in ("train_loss", "val_loss", "test_loss", "test_accuracy", "train_flops"):
            assert p[key] == ref[p["key"]][key], (p["key"], key)


def test_parallel_workers_write_the_store(tmp_path):
    cfg = {"name": "par", "model": "mlp", "widths": [0.25, 0.5], "save_models": False,
           "train": {**TRAIN, "epochs": 1}}  # fmt: skip
    par = run_sweep(cfg, store=tmp_path / "db.sqlite", out_dir=tmp_path / "par", progress=False, jobs=2)
    ser = run_sweep(cfg, store=tmp_path / "db2.sqlite", out_dir=tmp_path / "ser", progress=False)
    assert par.executed == 2 and not par.failed
    assert [p["test_loss"] for p in par.points] == [p["test_loss"] for p in ser.points]
    with RunStore(tmp_path / "db.sqlite") as db:
        assert [r["status"] for r in db.runs(recipe="scale:par")] == ["completed", "completed"]


def test_failed_point_is_recorded_and_does_not_stop_the_sweep(tmp_path):
    cfg = small_config(name="bad", widths=[1.0], data_fractions=[1.0], model_options={"channels": [0]})
    result = run_sweep(cfg, store=tmp_path / "db.sqlite", out_dir=tmp_path / "out", progress=False)
    assert result.points == [] and len(result.failed) == 1 and "channels" in result.failed[0]["error"]
    with RunStore(tmp_path / "db.sqlite") as db:
        (run,) = db.runs(recipe="scale:bad")
        assert run["status"] == "failed"


def test_lm_sweep_counts_tokens_and_6nd(tmp_path):
    cfg = {
        "name": "lm", "model": "gpt", "data": "pystdlib", "max_bytes": 40_000, "block_size": 32,
        "model_options": {"n_layer": 1, "n_head": 2, "n_embd": 32}, "widths": [0.5, 1.0], "eval_examples": 64,
        "save_models": False, "train": {**TRAIN, "max_steps": 4, "epochs": 1, "batch_size": 16},
    }  # fmt: skip
    result = run_sweep(cfg, store=tmp_path / "db.sqlite", out_dir=tmp_path / "out", progress=False)
    assert not result.failed
    for p in result.points:
        assert p["task"] == "lm" and p["metric"] == "bits_per_byte"
        assert p["examples_seen"] == 4 * 16 and p["tokens_seen"] == 4 * 16 * 32
        assert p["test_bits_per_byte"] == pytest.approx(p["test_loss"] / math.log(2))
        assert p["params_non_embedding"] < p["params"]
        # Counted FLOPs include attention and the embedding-free lm head; 6·N·D is the same order.
        assert 0.5 < p["train_flops"] / p["flops_6nd"] < 3.0
    assert result.points[0]["params"] < result.points[1]["params"]


def test_config_checks_and_compound_points():
    cfg = SweepConfig(compound=[0, 1, 2], data="digits")
    points, notes = sweep_points(cfg)
    assert [round(p.width, 4) for p in points] == [1.0, 1.1, 1.21]
    assert [round(p.depth, 4) for p in points] == [1.0, 1.2, 1.44]
    assert all(p.resolution is None for p in points) and "resolution not scaled" in notes[0]
    folder, _ = sweep_points(
        SweepConfig(compound=[2], data="imagefolder:/x", data_options={"image_size": 32})
    )
    assert folder[0].resolution == round(32 * 1.15**2)
    assert SweepConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ModelscaleError, match="≈ 2"):
        SweepConfig(compound=[1], alpha=2.0)
    with pytest.raises(ModelscaleError, match="not both"):
        SweepConfig(compound=[1], widths=[0.5])
    with pytest.raises(ModelscaleError, match="twice"):
        SweepConfig(widths=[1.0, 1.0])
    with pytest.raises(ModelscaleError, match="data fraction"):
        SweepConfig(data_fractions=[1.5])
    with pytest.raises(ModelscaleError, match="unknown model"):
        run_sweep(SweepConfig(model="nope"), out_dir="/tmp/never-used", store=":memory:")


def test_scale_command_fits_laws_and_writes_files(tmp_path):
    from modelscale.scaling.study import scale_command

    study = {"name": "mlp4", "model": "mlp", "widths": [0.125, 0.25, 0.5, 1.0], "n_boot": 20,
             "save_models": False, "train": {**TRAIN, "epochs": 4}}  # fmt: skip
    text, data = scale_command(study, store=tmp_path / "db.sqlite", out=tmp_path / "scale", progress=False)
    fit = data["fits"]["loss_vs_params"]
    alpha = next(p for p in fit["parameters"] if p["name"] == "alpha")
    assert alpha["value"] > 0.05 and alpha["low"] is not None
    assert "joint" in data["skipped_fits"] and "loss_vs_data" in data["skipped_fits"]
    assert "## Fitted exponents" in text and "loss vs parameters" in text
    out = tmp_path / "scale" / "mlp4"
    assert (
        json.loads((out / "study.json").read_text())["exponents"]["loss_vs_params"]["alpha"]["value"]
        == alpha["value"]
    )
    assert (out / "summary.md").read_text() == text
    for path in data["figures"]:
        with open(path, "rb") as fh:
            assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
    assert any(p.endswith("loss_vs_params.png") for p in data["figures"])


def test_iso_flop_curves_are_drawn_when_budgets_repeat(tmp_path):
    from modelscale.scaling.study_plots import iso_flop_groups, plot_study

    # Plot layout only (no accuracy claim): three sizes share each of two compute budgets.
    rows = [
        {"width": w, "depth": 1.0, "phi": None, "data_fraction": f, "N": n, "D": c / (6 * n), "C": c,
         "loss": 1.0 + 1e3 / n + 50 * n / c**0.5, "loss_name": "test_loss", "gap": 0.01, "metric": "accuracy"}
        for c, f in ((1e9, 0.5), (1e10, 1.0))
        for w, n in ((0.5, 1e3), (1.0, 4e3), (2.0, 1.6e4))
    ]  # fmt: skip
    groups = iso_flop_groups(rows)
    assert [len(g) for _, g in groups] == [3, 3]
    paths = plot_study(rows, {}, tmp_path)
    assert any(p.endswith("isoflop.png") for p in paths)
    assert not iso_flop_groups(rows[:2])


def test_a_second_concurrent_sweep_of_one_study_is_refused(tmp_path):
    # another process holds the study folder's lock (as a running `modelscale scale` does): a second
    # sweep into the same folder stops before training anything, naming the way to share the work
    import subprocess
    import sys

    out = tmp_path / "out"
    out.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import fcntl, sys, time\n"
         f"fh = open({str(out / '.scale.lock')!r}, 'a+')\n"
         "fcntl.flock(fh.fileno(), fcntl.LOCK_EX)\n"
         "print('locked', flush=True)\n"
         "time.sleep(60)\n"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(
            ModelscaleError, match="another `modelscale scale` is running the study 'small'.*--worker"
        ):
            run_sweep(small_config(), store=tmp_path / "db.sqlite", out_dir=out, progress=False)
        assert not (tmp_path / "db.sqlite").exists()  # refused before the store was opened or a point trained
    finally:
        holder.kill()
        holder.wait()
    # once the other process is gone (the OS drops its lock), the sweep runs
    result = run_sweep(small_config(widths=[0.125], data_fractions=[0.5]), store=tmp_path / "db.sqlite",
                       out_dir=out, progress=False)  # fmt: skip
    assert result.executed == 1 and not result.failed
