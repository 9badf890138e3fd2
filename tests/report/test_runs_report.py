"""A report built from a real (1-epoch) run of the digits prune -> fine-tune -> int8 recipe."""

import re
from pathlib import Path

import pytest

from modelscale.core.errors import ModelscaleError
from modelscale.report.tables import percent

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "digits_cnn_prune_finetune.yaml"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Run the recipe once (two variants: amount 0.5 and 0.8) and build one report for both runs."""
    pytest.importorskip("matplotlib")
    from modelscale.pipeline import run_command
    from modelscale.report import build_report

    root = tmp_path_factory.mktemp("report")
    store = root / "runs.db"
    _, data = run_command(RECIPE, store=store, run_dir=root / "runs", epochs=1, progress=False)
    ids = [r["id"] for r in data["runs"]]
    assert [r["status"] for r in data["runs"]] == ["completed", "completed"]
    md, page = build_report(ids, store=store, out_dir=root / "out")
    return {"store": store, "ids": ids, "runs": data["runs"], "md": md, "html": page, "root": root}


def test_writes_markdown_with_png_plots_beside_it(built):
    md = built["md"]
    assert md.name == "report.md" and md.parent == built["root"] / "out"
    text = md.read_text(encoding="utf-8")
    images = re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", text)
    expected = {"accuracy_vs_size.png", "accuracy_vs_latency.png", "speedup.png", "weights.png", "cka.png"}
    expected |= {f"steps_{i}.png" for i in built["ids"]} | {f"activations_{i}.png" for i in built["ids"]}
    expected.add("layers_prune_sparsity.png")
    assert expected <= set(images)
    for name in images:
        data = (md.parent / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5000


def test_html_is_self_contained(built):
    page = built["html"].read_text(encoding="utf-8")
    assert built["html"].name == "report.html"
    assert 'src="http' not in page and "<script" not in page and "<link" not in page
    assert "<style>" in page
    assert page.count("data:image/png;base64,") >= 10
    assert len(re.findall(r'src="(?!data:image/png;base64,)', page)) == 0
    for run in built["runs"]:
        assert run["label"] in page and run["id"] in page
    assert "★" in page and "Pareto front" in page


def test_numbers_come_from_the_store(built):
    from modelscale.pipeline import runs_compare

    text = built["md"].read_text(encoding="utf-8")
    _, rows = runs_compare(built["ids"], store=built["store"])
    for row in rows:
        assert f"| {row['label']} | {row['final_step']} | {percent(row['accuracy'])} |" in text
    # global magnitude pruning zeroes exactly that share of the targeted conv/linear weights
    assert "| amount=0.5: final (3-int8) | 4 | 93.73 K | 50.00 % |" in text
    assert "| amount=0.8: final (3-int8) | 4 | 93.73 K | 80.00 % |" in text
    assert "| `features.2.1.conv` | 128×64×3×3 |" in text  # per-layer sparsity rows from the ChangeRecord
    assert re.search(r"\| amount=0\.5 \| 3-int8 \| 359 \| \d+\.\d\d % \| 0\.\d{4} \|", text)  # agreement, CKA


def test_report_command_for_one_run(built, tmp_path):
    from modelscale.report import report_command

    rid = built["ids"][0]
    text, data = report_command([rid], store=built["store"], out=tmp_path / "one")
    assert str(tmp_path / "one" / "report.html") in text
    assert data["runs"] == [rid]
    assert Path(data["html"]).read_text(encoding="utf-8").count("data:image/png;base64,") >= 8
    labels = [p["label"] for p in data["points"]]
    assert labels == ["baseline", built["runs"][0]["label"]]
    for key in ("nonzero_params", "zipped_bytes"):
        assert any(p[f"pareto_{key}"] for p in data["points"])
    # latency: only trusted (stable) figures compete; an unstable one never gets a star
    trusted = [p for p in data["points"] if p["latency_trusted_ms"] is not None]
    assert any(p["pareto_latency_trusted_ms"] for p in data["points"]) == bool(trusted)
    assert not any(p["pareto_latency_trusted_ms"] and p["latency_unstable"] for p in data["points"])
    # the variant has fewer non-zero parameters than its baseline, so it is always on that front
    assert data["points"][1]["pareto_nonzero_params"]


def test_unknown_run_id_raises(built, tmp_path):
    from modelscale.report import build_report, report_command

    with pytest.raises(ModelscaleError, match="no run 'nosuchrun'"):
        build_report(["nosuchrun"], store=built["store"], out_dir=tmp_path / "x")
    with pytest.raises(ModelscaleError, match="at least one run id"):
        report_command([], store=built["store"], out=tmp_path / "y")
    assert not (tmp_path / "x" / "report.html").exists()


def test_a_failed_run_with_nothing_measured_still_gives_a_report(tmp_path):
    from modelscale.pipeline.store import RunStore
    from modelscale.report import report_command

    with RunStore(tmp_path / "runs.db") as db:
        rid, _ = db.open_run(
            recipe="r",
            variant="default",
            label="default",
            run_dir=str(tmp_path / "runs"),
            config={"model": {"name": "cnn"}, "data": {"source": "digits"}, "steps": []},
            sweep={},
        )
        db.start_step(rid, 0, name="baseline", kind="baseline", config={})
        db.finish_step(rid, 0, status="failed", error="loss is nan")
        db.finish_run(rid, "failed", "step 0 (baseline): loss is nan")
        text, data = report_command([rid], store=db, out=tmp_path / "out")
    assert "no measured step" in text and data["points"] == [] and data["plots"] == []
    page = Path(data["html"]).read_text(encoding="utf-8")
    assert "No measured step." in page and "step 0 (baseline): loss is nan" in page
