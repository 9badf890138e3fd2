"""Reliability of the search's trial engine with real processes: two workers on one PostgreSQL study
finish with no duplicated and no lost trial; a worker killed with SIGKILL mid-trial loses at most that
trial, and `--resume` completes the study."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import optuna
import yaml

from tests.search.conftest import SPACE

SLOW_SPACE = {**SPACE, "stages": [*SPACE["stages"][:1], {"name": "tune", "finetune": {"epochs": [8, 10]}}]}


def _command(trained, space, out, *extra: str) -> list[str]:
    return [sys.executable, "-m", "modelscale", "search", str(trained), "--data", "digits", "--space", str(space),
            "--out", str(out), *extra]  # fmt: skip


def _trials(url: str, study: str, states=None) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=study, storage=url).get_trials(deepcopy=False, states=states)


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if predicate():
                return
        except Exception:  # noqa: BLE001 - the study or its database may not exist yet
            pass
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def _spent(trials) -> list[optuna.trial.FrozenTrial]:
    """Trials that spent the budget: completed, or stopped early by the paired test (pruned)."""
    return [
        t for t in trials
        if t.state == optuna.trial.TrialState.COMPLETE
        or (t.state == optuna.trial.TrialState.PRUNED and "early_stop" in t.user_attrs)
    ]  # fmt: skip


def _has_study(url: str, name: str) -> bool:
    return name in [s.study_name for s in optuna.get_all_study_summaries(url)]


def test_two_workers_share_one_postgres_study(trained, tmp_path, postgres_url):
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump(SLOW_SPACE))
    args = ["--storage", postgres_url, "--study", "shared", "--trials", "10"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    first = subprocess.Popen(_command(trained, space, tmp_path / "a", *args), env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    _wait_for(lambda: _has_study(postgres_url, "shared"), 180, "the study to be created")
    second = subprocess.Popen(_command(trained, space, tmp_path / "b", *args, "--worker"), env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    out_first, _ = first.communicate(timeout=400)
    out_second, _ = second.communicate(timeout=400)
    assert first.returncode == 0, out_first[-2000:]
    assert second.returncode == 0, out_second[-2000:]
    complete = _spent(_trials(postgres_url, "shared"))
    numbers = [t.number for t in complete]
    assert len(numbers) == len(set(numbers))  # nothing duplicated
    assert 10 <= len(complete) <= 11  # nothing lost; at most one trial over when both finish together
    assert all("metrics" in t.user_attrs or "early_stop" in t.user_attrs for t in complete)
    workers = {t.user_attrs["worker"] for t in complete}
    assert len(workers) == 2, workers  # both processes ran trials of the one study


def test_a_killed_worker_loses_at_most_its_trial_and_resume_completes(trained, tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump(SLOW_SPACE))
    out = tmp_path / "k"
    url = f"sqlite:///{out / 'search.db'}"
    cmd = _command(trained, space, out, "--trials", "6", "--heartbeat", "1")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for(
            lambda: len(_trials(url, "search", (optuna.trial.TrialState.COMPLETE,))) >= 2, 300, "2 trials"
        )
        _wait_for(lambda: _trials(url, "search", (optuna.trial.TrialState.RUNNING,)), 120, "a running trial")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    done_before = len(_trials(url, "search", (optuna.trial.TrialState.COMPLETE,)))
    resumed = subprocess.run([*cmd, "--resume"], capture_output=True, text=True, timeout=400)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    trials = _trials(url, "search")
    complete = _spent(trials)
    failed = [t for t in trials if t.state == optuna.trial.TrialState.FAIL]
    assert len(complete) == 6 and done_before < 6
    assert len(failed) <= 1  # only the trial that was running when the worker died
    assert not [t for t in trials if t.state == optuna.trial.TrialState.RUNNING]
