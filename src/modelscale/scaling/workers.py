"""A scaling sweep shared by many workers through one Optuna study (the same trial engine as the search).

`modelscale scale study.yaml --storage URL` creates (or resumes) the study: every grid point of the
sweep is one trial of Optuna's `GridSampler`, enqueued up front, so each point is trained exactly once —
a waiting trial is taken by exactly one worker, atomically, by the RDB storage. `--worker` joins the
study from another process or machine (PostgreSQL for several machines, SQLite for one). Workers send
heartbeats: a killed worker's point is marked failed and enqueued again, once. Each worker keeps
running points until none is left, then waits for the running ones; the fit runs when the last point
has landed, in every worker that finishes (each writes its own `--out`), from the records stored in
the study — so every worker's summary is the same.

Example::

    text, data = scale_command("study.yaml", storage="postgresql://user@host/db")           # machine 1
    text, data = scale_command("study.yaml", storage="postgresql://user@host/db", worker=True)  # machine 2
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

from modelscale.core.errors import ModelscaleError
from modelscale.scaling.sweep import SweepConfig, SweepResult, point_settings, sweep_points

POLL_SECONDS = 1.0
READY_SECONDS = 60.0  # how long a joiner waits for the starter to enqueue the points


def _storage(url: str, heartbeat: int) -> Any:
    import inspect

    import optuna

    kwargs: dict[str, Any] = {"heartbeat_interval": heartbeat, "grace_period": 2 * heartbeat}
    params = inspect.signature(optuna.storages.RDBStorage.__init__).parameters
    if "heartbeat_stale_trial_callback" in params and hasattr(
        optuna.storages, "RetryHeartbeatStaleTrialCallback"
    ):
        kwargs["heartbeat_stale_trial_callback"] = optuna.storages.RetryHeartbeatStaleTrialCallback(
            max_retry=1
        )
    else:
        kwargs["failed_trial_callback"] = optuna.storages.RetryFailedTrialCallback(max_retry=1)
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else None
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=engine, **kwargs)
    except Exception as exc:  # noqa: BLE001 - a bad URL or an unreachable server: one line
        raise ModelscaleError(f"cannot open the study storage {url!r}: {str(exc).splitlines()[0]}") from None


def run_sweep_workers(
    config: SweepConfig,
    *,
    storage: str,
    out_dir: str | Path,
    store: Any = None,
    worker: bool = False,
    study_name: str | None = None,
    gpu_sizes: bool = False,
    progress: bool = True,
    allow_pickle: bool = False,
    heartbeat: int = 30,
    join_wait: float = 0.0,
) -> SweepResult:
    """Run this process's share of the sweep's points; returns the whole sweep once every point landed."""
    import warnings

    import optuna

    from modelscale.core.trust import file_options
    from modelscale.pipeline.printer import Printer
    from modelscale.pipeline.store import open_store
    from modelscale.scaling.point import execute_point

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    file_options(
        config.model_options, where=f"study {config.name!r} model_options", allow_pickle=allow_pickle
    )
    t0 = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    points, notes = sweep_points(config, gpu_sizes=gpu_sizes)
    by_key = {p.key: p for p in points}
    keys = list(by_key)
    name = study_name or f"scale:{config.name}"
    rdb = _storage(storage, heartbeat)
    if not join_wait >= 0 or join_wait != join_wait:
        raise ModelscaleError(f"--join-wait must be a number of seconds >= 0, got {join_wait!r}")
    say = Printer(progress)
    existing = [s.study_name for s in optuna.get_all_study_summaries(rdb)]
    if worker and name not in existing and join_wait > 0:
        say(f"waiting up to {join_wait:g} s for study {name!r} to be started")
        deadline = time.monotonic() + join_wait
        while name not in existing and time.monotonic() < deadline:
            time.sleep(min(POLL_SECONDS, max(deadline - time.monotonic(), 0.0)))
            existing = [s.study_name for s in optuna.get_all_study_summaries(rdb)]
    if worker and name not in existing:
        waited = f" after waiting {join_wait:g} s" if join_wait > 0 else ""
        raise ModelscaleError(
            f"no study {name!r} in {storage} to join{waited}; start it first without --worker "
            "(or give --join-wait SECONDS)"
        )
    sampler = optuna.samplers.GridSampler({"point": keys}, seed=0)
    study = optuna.create_study(storage=rdb, study_name=name, sampler=sampler, load_if_exists=True)
    settings = {k: point_settings(config, by_key[k]) for k in keys}
    if name in existing:
        stored = _settings_when_ready(study, READY_SECONDS)
        if stored is not None and stored != settings:
            raise ModelscaleError(
                f"study {name!r} in {storage} holds a different sweep (sizes, data or training changed); "
                "give another study name with --study"
            )
    else:
        study.set_user_attr("settings", settings)
        for key in keys:
            study.enqueue_trial({"point": key}, skip_if_exists=True)
        study.set_user_attr("ready", True)  # joiners wait for this: every point is enqueued
    db = open_store(store)
    location = db.location if "://" in db.location else str(Path(db.location).resolve())
    db.close()
    config_data = config.to_dict()
    config_data["train"]["progress"] = False
    executed: list[str] = []

    def objective(trial: Any) -> float:
        key = trial.suggest_categorical("point", keys)
        if key in _landed(study) or key in _running_elsewhere(study, trial.number):
            raise optuna.TrialPruned(f"point {key} is done or running elsewhere")
        trial.set_user_attr("worker", _worker_id())
        rec, error = execute_point(
            config_data, dataclasses.asdict(by_key[key]), location, str(out), allow_pickle
        )
        if rec is None:
            raise ModelscaleError(f"point {key} failed: {error}")
        trial.set_user_attr("record", rec)
        executed.append(key)
        say(f"[{len(_landed(study))}/{len(keys)}] {config.name} {key}: trained by this worker")
        return float(rec["test_loss"])

    while True:
        waiting = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,))
        if waiting:
            study.optimize(objective, n_trials=len(waiting), catch=(ModelscaleError,))
            continue
        landed = _landed(study)
        if len(landed) == len(keys):
            break
        running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
        if not running:
            break  # some points failed for good: the sweep reports them
        optuna.storages.fail_stale_trials(study)  # a dead worker's point goes back to WAITING (once)
        time.sleep(POLL_SECONDS)
    landed = _landed(study)
    failed = [
        {"key": k, "error": "failed in every attempt (see the run store of the worker that ran it)"}
        for k in keys
        if k not in landed
    ]
    return SweepResult(
        config=config,
        points=[landed[k] for k in keys if k in landed],
        executed=len(executed),
        skipped=len(landed) - len(executed),
        failed=failed,
        out_dir=str(out),
        store=storage,
        notes=[
            *notes,
            f"shared sweep: study {name!r}, this worker trained {len(executed)} of {len(keys)} points",
        ],
        seconds=time.perf_counter() - t0,
    )


def _settings_when_ready(study: Any, seconds: float) -> Any:
    """The starter's sweep settings, once it has enqueued every point."""
    deadline = time.monotonic() + seconds
    while True:
        attrs = study.user_attrs
        if attrs.get("ready"):
            return attrs.get("settings")
        if time.monotonic() >= deadline:
            raise ModelscaleError(
                f"study {study.study_name!r} was created but its points were not enqueued within "
                f"{seconds:g} s; is the process that started it still running?"
            )
        time.sleep(0.2)


def _landed(study: Any) -> dict[str, dict[str, Any]]:
    import optuna

    out: dict[str, dict[str, Any]] = {}
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        key = t.params.get("point")
        if key is not None and key not in out and "record" in t.user_attrs:
            out[key] = t.user_attrs["record"]
    return out


def _running_elsewhere(study: Any, number: int) -> set[str]:
    import optuna

    running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    return {t.params.get("point") for t in running if t.number != number and "point" in t.params}


def _worker_id() -> str:
    import os
    import socket

    return f"{socket.gethostname()}:{os.getpid()}"
