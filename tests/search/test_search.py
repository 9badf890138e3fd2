"""The search end to end on real digits: trials through the engine, the Pareto set, recipes that
`modelscale run` accepts, the run store, resume, and bad input refused before any trial."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from modelscale.cli import main
from modelscale.pipeline import load_recipe
from modelscale.pipeline.store import open_store
from modelscale.search import search
from tests.search.conftest import SPACE


def test_search_finds_a_front_and_writes_runnable_recipes(trained, tmp_path):
    out = tmp_path / "s"
    result = search(
        str(trained), "digits", space=SPACE, objectives=["accuracy", "bytes"],
        constraints=["accuracy_drop <= 5"], n_trials=6, out=out, progress=False,
    )  # fmt: skip
    assert result.trials == 6 and result.feasible >= 1 and result.pareto
    base_bytes = result.baseline["bytes"]
    for point in result.pareto:
        m = point["metrics"]
        folder = out / "trials" / f"{point['number']:04d}"
        assert m["bytes"] == (folder / "model.safetensors").stat().st_size  # the file's bytes
        assert m["accuracy_drop"] <= 5 and "accuracy" in point["test"]
        recipe = yaml.safe_load(Path(point["recipe_file"]).read_text())
        plan = load_recipe(recipe)  # `modelscale run` accepts it
        assert plan.variants[0].model.load
    assert min(p["metrics"]["bytes"] for p in result.pareto) < base_bytes
    chosen = min(result.pareto, key=lambda p: p["metrics"]["bytes"])  # re-run on 3 training seeds
    assert len(chosen["seeds"]["test_accuracy"]) == 3 and chosen["seeds"]["sd"] >= 0
    saved = json.loads((out / "pareto.json").read_text())
    assert saved["trials"] == 6 and len(saved["pareto"]) == len(result.pareto)
    from modelscale.report.search_report import search_report

    md, html = search_report(result)
    page = html.read_text()
    assert "Pareto set" in page and "data:image/png;base64," in page and 'src="http' not in page
    assert all(Path(p["recipe_file"]).name in md.read_text() for p in result.pareto)
    with open_store(out / "modelscale.db") as db:  # every trial is a run in the run store
        runs = [r for r in db.runs() if r["recipe"] == "search:search"]
    assert len(runs) == 6


def test_resume_continues_the_study_and_refuses_a_silent_overwrite(trained, tmp_path):
    from modelscale.core.errors import ModelscaleError

    out = tmp_path / "r"
    kwargs = {"space": SPACE, "objectives": ["accuracy", "bytes"], "out": out, "progress": False}
    search(str(trained), "digits", n_trials=2, **kwargs)
    with pytest.raises(ModelscaleError, match="already exists.*--resume"):
        search(str(trained), "digits", n_trials=4, **kwargs)
    again = search(str(trained), "digits", n_trials=4, resume=True, **kwargs)
    assert again.trials == 4  # two more, not four more


@pytest.mark.parametrize(
    "extra, fragment",
    [
        (["--objective", "speed"], "unknown objective 'speed'"),
        (["--constraint", "bytes <= -1"], "can never hold"),
        (["--constraint", "bytes <<= 3"], "must look like"),
        (["--trials", "0"], "n_trials must be"),
    ],
)
def test_cli_bad_input_is_refused_before_any_trial(capsys, trained, tmp_path, extra, fragment):
    out = tmp_path / "bad"
    code = main(["search", str(trained), "--data", "digits", "--out", str(out), *extra])
    err = capsys.readouterr().err
    assert code == 2 and fragment in err and len(err.strip().splitlines()) == 1
    assert not (out / "trials").exists()


def test_cli_invalid_space_file(capsys, trained, tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text(
        yaml.safe_dump({"stages": [{"options": [{"technique": "magnitude_prune", "knobs": {"x": [1]}}]}]})
    )
    code = main(
        ["search", str(trained), "--data", "digits", "--space", str(space), "--out", str(tmp_path / "o")]
    )
    assert code == 2 and "has no field 'x'" in capsys.readouterr().err
