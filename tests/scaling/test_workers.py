"""A scaling sweep shared by two worker processes through one PostgreSQL study: every grid point is
trained exactly once, and the fit equals the single-process sweep's."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import optuna
import pytest

from tests.postgres import available, postgres_server

STUDY = (
    "name: shared\nmodel: mlp\ndata: digits\nwidths: [0.25, 0.5, 1.0]\ndata_fractions: [0.5, 1.0]\n"
    "train: {epochs: 30, lr: 0.003, progress: false}\nn_boot: 20\nsave_models: false\n"
)


@pytest.fixture(scope="module")
def postgres_url():
    if not available():
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL is missing: .ci/run installs it (apt-get install postgresql)")
        pytest.skip("PostgreSQL is not installed here (apt-get install postgresql); CI installs it")
    with postgres_server() as url:
        yield url


def _scale(study, out, *extra):
    return [sys.executable, "-m", "modelscale", "scale", str(study), "--out", str(out),
            "--store", str(out / "runs.db"), "--json", *extra]  # fmt: skip


def test_two_workers_train_each_point_once_and_fit_like_one_process(tmp_path, postgres_url):
    study = tmp_path / "study.yaml"
    study.write_text(STUDY)
    shared = ["--storage", postgres_url]
    # The joiner starts first and waits for the study, so both are running when the points are enqueued
    # (a joiner started after the study appears may find every point already trained on a fast machine).
    second = subprocess.Popen(
        _scale(study, tmp_path / "b", *shared, "--worker", "--join-wait", "300"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen = []
    while not seen or ("waiting up to 300 s for study 'scale:shared'" not in seen[-1] and seen[-1]):
        seen.append(second.stderr.readline())
    assert "waiting up to 300 s" in seen[-1], "".join(seen)
    first = subprocess.Popen(
        _scale(study, tmp_path / "a", *shared), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    out_a, err_a = first.communicate(timeout=600)
    out_b, err_b = second.communicate(timeout=600)
    assert first.returncode == 0, err_a[-2000:]
    assert second.returncode == 0, err_b[-2000:]
    trials = optuna.load_study(study_name="scale:shared", storage=postgres_url).get_trials()
    done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    keys = [t.params["point"] for t in done]
    assert len(keys) == 6 and len(set(keys)) == 6  # every point once, none twice
    assert len({t.user_attrs["worker"] for t in done}) == 2  # both processes trained points
    alone = subprocess.run(_scale(study, tmp_path / "c"), capture_output=True, text=True, timeout=600)
    assert alone.returncode == 0, alone.stderr[-2000:]
    fits = [json.loads(text)["fits"] for text in (out_a, out_b, alone.stdout)]
    assert fits[2], "the single-process sweep fitted a law"
    for name, fit in fits[2].items():
        numbers = {k: v for k, v in fit["law"].items() if isinstance(v, float)}
        assert numbers, fit["law"]
        for other in fits[:2]:
            for key, value in numbers.items():
                assert other[name]["law"][key] == pytest.approx(value, rel=1e-6), (name, key)
