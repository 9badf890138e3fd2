"""How a search study starts: its warm-start trials (derived from the space), the sampler (TPE for one
objective, NSGA-II for several, with constraints where Optuna supports them) and the storage (SQLite
in the output folder, or a shared RDB URL with heartbeats)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from modelscale.core.errors import ModelscaleError
from modelscale.search.space import NONE, Knob, SearchSpace


def warm_starts(space: SearchSpace) -> list[dict[str, Any]]:
    """First trials, all derived from the space: each quantizer alone; each option of the first optional
    technique stage at the middle of its knobs, with the longest fine-tune, followed by each quantizer;
    then the most compressed corner of every stage."""
    quantize = [s for s in space.stages if not s.trains and s.optional]
    starts: list[dict[str, Any]] = []

    def nothing() -> dict[str, Any]:
        params: dict[str, Any] = {}
        for s in space.stages:
            if s.trains:
                params[f"{s.name}.epochs"] = s.epochs.choices[0] if s.epochs.choices else s.epochs.low
                if s.distill is not None:
                    params[f"{s.name}.distill"] = False
            elif s.optional:
                params[f"{s.name}.technique"] = NONE
            else:
                params[f"{s.name}.technique"] = s.options[0].technique
        return params

    last = quantize[-1] if quantize else None
    if last is not None:
        for option in last.options:
            p = nothing()
            p[f"{last.name}.technique"] = option.technique
            for k in option.knobs:
                p[f"{last.name}.{option.technique}.{k.name}"] = k.choices[0] if k.choices else k.high
            starts.append(p)
    first = next((s for s in space.stages if not s.trains and s.optional and s is not last), None)
    tune = next((s for s in space.stages if s.trains), None)
    if (
        first is not None and last is not None
    ):  # each compressor at mid-strength, fully tuned, then each quantizer
        for option, quant in ((o, q) for o in first.options for q in last.options):
            p = nothing()
            p[f"{first.name}.technique"] = option.technique
            for k in option.knobs:
                p[f"{first.name}.{option.technique}.{k.name}"] = _middle(k)
            if tune is not None:
                p[f"{tune.name}.epochs"] = (
                    tune.epochs.choices[-1] if tune.epochs.choices else tune.epochs.high
                )
                if isinstance(tune.lr, Knob):
                    p[f"{tune.name}.lr"] = _middle(tune.lr)
            p[f"{last.name}.technique"] = quant.technique
            for k in quant.knobs:
                p[f"{last.name}.{quant.technique}.{k.name}"] = k.choices[0] if k.choices else k.high
            starts.append(p)
    corner = nothing()
    for s in space.stages:
        if s.trains:
            corner[f"{s.name}.epochs"] = s.epochs.choices[-1] if s.epochs.choices else s.epochs.high
        else:
            option = s.options[0]
            corner[f"{s.name}.technique"] = option.technique
            for k in option.knobs:
                corner[f"{s.name}.{option.technique}.{k.name}"] = k.choices[-1] if k.choices else k.high
    starts.append(corner)
    return starts


def _middle(knob: Knob) -> Any:
    if knob.choices:
        return knob.choices[len(knob.choices) // 2]
    if knob.log:
        mid = math.sqrt(knob.low * knob.high)
    else:
        mid = (knob.low + knob.high) / 2
    return int(round(mid)) if knob.is_int else mid


def keyed_constraints() -> bool:
    """Optuna 5 reads constraints from `trial.set_constraint`; older versions from `constraints_func`."""
    import optuna

    return hasattr(optuna.trial.Trial, "set_constraint")


def sampler_for(n_objectives: int, constraints: Any, seed: int, kind: str = "auto") -> Any:
    import optuna

    def constraints_func(trial: Any) -> list[float]:
        return list(trial.user_attrs.get("constraint_violation", [1.0] * len(constraints)))

    extra: dict[str, Any] = {}
    if constraints and not keyed_constraints():
        extra["constraints_func"] = constraints_func
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if n_objectives >= 3:
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=20, **extra)
    return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, n_startup_trials=8, **extra)


def open_storage(url: str | None, out: Path, heartbeat: int = 30) -> Any:
    import inspect

    import optuna

    url = url or f"sqlite:///{(out / 'search.db').resolve()}"
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
        return optuna.storages.RDBStorage(url, engine_kwargs=engine, **kwargs), url
    except Exception as exc:  # noqa: BLE001 - a bad URL or an unreachable server: one line
        raise ModelscaleError(f"cannot open the study storage {url!r}: {str(exc).splitlines()[0]}") from None
