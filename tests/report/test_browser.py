"""A real browser (headless Chromium) renders the HTML report of a small real run.

The run: the digits prune -> fine-tune -> int8 recipe, one variant (amount 0.5), 1 epoch per training
section, 3 latency repeats at batch 1. Chromium is Debian's `chromium`, apt-installed by the session
fixture when missing and running as root (see tests/report/browser.py).
"""

from pathlib import Path

import pytest

from tests.report.browser import ensure_chromium, probe_page, screenshot, screenshot_stats

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "digits_cnn_prune_finetune.yaml"


@pytest.fixture(scope="session")
def chromium() -> str:
    """Path of the headless Chromium binary (installed with apt-get if missing and root; else skip)."""
    return ensure_chromium()


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    """report.html for one real 1-epoch run of the digits recipe (single variant, short measurement)."""
    pytest.importorskip("matplotlib")
    import yaml

    from modelscale.pipeline import run_command
    from modelscale.pipeline.recipe import patch_recipe, read_recipe
    from modelscale.report import build_report

    root = tmp_path_factory.mktemp("browser")
    data = patch_recipe(read_recipe(RECIPE), epochs=1, repeats=3, warmup=1, batch_sizes=[1])
    data["steps"][0]["config"]["amount"] = 0.5  # one variant instead of the sweep
    recipe = root / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(data), encoding="utf-8")
    _, result = run_command(recipe, store=root / "runs.db", run_dir=root / "runs", progress=False)
    assert [r["status"] for r in result["runs"]] == ["completed"]
    _, page = build_report([r["id"] for r in result["runs"]], store=root / "runs.db", out_dir=root / "out")
    return page


def _looks_rendered(stats: dict) -> list[str]:
    """What makes a screenshot look blank or plot-less (empty list: it shows a rendered report)."""
    problems = []
    if stats["distinct_colours"] < 500:
        problems.append(f"only {stats['distinct_colours']} distinct colours")
    if stats["non_white"] < 0.05:
        problems.append(f"only {stats['non_white']:.1%} non-white pixels")
    if stats["blue"] < 0.005 or stats["orange"] < 0.0005:
        problems.append(f"few plot colours (blue {stats['blue']:.2%}, orange {stats['orange']:.3%})")
    if stats["plot_tiles"] < 8:
        problems.append(f"only {stats['plot_tiles']} 100-px tiles with plot colours")
    return problems


def test_screenshot_shows_the_report_with_plots(chromium, report, tmp_path):
    pytest.importorskip("PIL")
    png = screenshot(chromium, report, tmp_path / "report.png")
    from PIL import Image

    assert Image.open(png).size == (1400, 3000)
    stats = screenshot_stats(png)
    assert _looks_rendered(stats) == [], stats


def test_every_image_loads_and_nothing_errors(chromium, report):
    found = probe_page(chromium, report.parent, report.name)
    assert found["title"].startswith("modelscale report"), found
    assert found["total"] >= 3 and found["loaded"] == found["total"], found["broken"]
    assert found["shown"] == found["total"], found
    assert all(w >= 200 and h >= 150 for w, h in found["sizes"]), found["sizes"]
    assert found["scripts"] == 0
    assert found["errors"] == [] and found["console"] == [], (found["errors"], found["console"])


def test_the_checks_catch_a_broken_page(chromium, report, tmp_path):
    """The same checks on a damaged copy of the report: a corrupt plot, a missing file, a throwing
    script; and on a blank page. Each must be reported, or the tests above prove nothing."""
    pytest.importorskip("PIL")
    page = report.read_text(encoding="utf-8")
    start = page.index("data:image/png;base64,") + len("data:image/png;base64,")
    page = page[:start] + "AAAA" + page[start + 40 :]  # corrupt the first plot's PNG header
    page = page.replace(
        "</body>", '<img src="missing.png" alt="gone"><script>nosuchfunction();</script></body>'
    )
    (tmp_path / "broken.html").write_text(page, encoding="utf-8")
    found = probe_page(chromium, tmp_path, "broken.html")
    assert found["total"] >= 3 and found["loaded"] == found["total"] - 2, found
    assert any("gone" in b for b in found["broken"]) and found["scripts"] == 1
    assert any("nosuchfunction is not defined" in line for line in found["console"]), found["console"]

    (tmp_path / "blank.html").write_text(
        "<!doctype html><title>blank</title><p>no plots</p>", encoding="utf-8"
    )
    stats = screenshot_stats(screenshot(chromium, tmp_path / "blank.html", tmp_path / "blank.png"))
    assert len(_looks_rendered(stats)) == 4, stats
