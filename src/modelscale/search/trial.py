"""One trial of the search: sample a complete recipe from the space, run it through the one engine on a
copy of the baseline, save it, and measure it (validation split only).

Cheap before expensive: the whole recipe is first applied without its training steps to a throwaway
copy (milliseconds to seconds) and saved; training never changes a file's size, so a trial whose
artifact is already over a size bound is rejected there, before any fine-tune, with the size it has.

Example::

    steps = sample_steps(trial, space)             # Step list for the engine, from an Optuna trial
    metrics = run_trial(baseline_session, steps, out_dir, plan)
"""

from __future__ import annotations

import copy
import math
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelscale.core.errors import ModelscaleError
from modelscale.search.space import NONE, Knob, SearchSpace

SIZE_METRICS = ("bytes", "zipped_bytes", "params")


def sample_steps(trial: Any, space: SearchSpace) -> list[Any]:
    """The trial's recipe as engine steps (technique, finetune or distill), in the space's order."""
    from modelscale.core.registry import get_technique
    from modelscale.engine import DistillStep, Step
    from modelscale.train import TrainConfig

    steps: list[Any] = []
    for stage in space.stages:
        if stage.trains:
            epochs = int(stage.epochs.suggest(trial, f"{stage.name}.epochs"))
            if epochs == 0:
                continue
            lr = stage.lr.suggest(trial, f"{stage.name}.lr") if isinstance(stage.lr, Knob) else stage.lr
            train = TrainConfig(
                epochs=epochs, lr=float(lr), batch_size=stage.batch_size, seed=0, progress=False
            )
            if stage.distill is not None and trial.suggest_categorical(
                f"{stage.name}.distill", [False, True]
            ):
                from modelscale.techniques.distill import DistillConfig

                alpha, temperature = (k.suggest(trial, f"{stage.name}.{k.name}") for k in stage.distill)
                kd = DistillConfig(alpha=float(alpha), temperature=float(temperature))
                steps.append(Step(len(steps) + 1, stage.name, "distill", DistillStep("baseline", kd, train)))
            else:
                steps.append(Step(len(steps) + 1, stage.name, "finetune", train))
            continue
        choices = [o.technique for o in stage.options] + ([NONE] if stage.optional else [])
        chosen = trial.suggest_categorical(f"{stage.name}.technique", choices)
        if chosen == NONE:
            continue
        option = next(o for o in stage.options if o.technique == chosen)
        values = {k.name: k.suggest(trial, f"{stage.name}.{chosen}.{k.name}") for k in option.knobs}
        config = get_technique(chosen).config_cls.from_dict({**option.fixed, **values})
        steps.append(Step(len(steps) + 1, stage.name, "technique", config))
    return steps


def recipe_of(
    steps: list[Any], baseline_dir: str, data: dict[str, Any], measure: dict[str, Any]
) -> dict[str, Any]:
    """The trial as a recipe that `modelscale run` accepts as is."""
    body = []
    for s in steps:
        d = s.to_dict()
        if s.kind == "finetune":
            d = {"name": s.name, "finetune": s.config.to_dict()}
        body.append(d)
    return {
        "version": 1,
        "name": "searched",
        "model": {"load": baseline_dir},
        "data": data,
        "steps": body,
        "measure": measure,
    }


@dataclass
class TrialPlan:
    """Everything a trial needs besides its steps (shared by every trial of one search)."""

    baseline_metrics: dict[str, float]
    constraints: tuple[Any, ...]
    latency: bool  # measure latency (an objective or constraint asks for it)
    latency_batch: int = 32
    repeats: int = 20
    warmup: int = 3
    threads: int = 1


def _file_sizes(folder: Path) -> tuple[int, int]:
    weights = folder / "model.safetensors"
    raw = weights.read_bytes()
    return len(raw), len(zlib.compress(raw, 6))


def measure_artifact(bundle: Any, folder: Path) -> dict[str, float]:
    """Save the bundle and measure the file written (bytes and zipped bytes), params and MACs."""
    from modelscale.measure import count_params
    from modelscale.models.loading import save_model_dir

    save_model_dir(folder, bundle)
    size, zipped = _file_sizes(folder)
    return {
        "bytes": float(size),
        "zipped_bytes": float(zipped),
        "params": float(count_params(bundle.model).total),
    }


def _macs(model: Any, x: Any) -> float | None:
    from modelscale.measure import count_macs

    try:
        return float(count_macs(model, x).macs)
    except Exception:  # noqa: BLE001 - uncountable ops (some int8 kernels): no analytic figure
        return None


def _violated_sizes(metrics: dict[str, float], plan: TrialPlan) -> list[str]:
    return [
        str(c)
        for c in plan.constraints
        if c.metric in SIZE_METRICS and c.violation(metrics, plan.baseline_metrics) > 0
    ]


def run_trial(
    base_session: Any, steps: list[Any], folder: Path, plan: TrialPlan, check: Any = None
) -> dict[str, Any]:
    """Run `steps` on a copy of the baseline; returns the trial's metrics (and why it stopped early).

    `check(session, metrics)` runs once the file is measured, before the validation pass and latency
    (the search's paired-test early stop: it raises to stop the trial)."""
    from modelscale.engine import Session, run_step
    from modelscale.models.loading import ModelBundle

    t0 = time.perf_counter()
    base = base_session.bundle
    session = Session(
        ModelBundle(copy.deepcopy(base.model), dict(base.spec), list(base.records)),
        base_session.data,
        seed=base_session.seed,
        progress=False,
    )
    session._cache["baseline"] = base
    trains = any(s.kind in ("finetune", "distill") for s in steps)
    if trains and any(c.metric in SIZE_METRICS for c in plan.constraints):
        dry = Session(
            ModelBundle(copy.deepcopy(base.model), dict(base.spec), list(base.records)),
            base_session.data,
            seed=base_session.seed,
            progress=False,
        )
        untrained = [s for s in steps if s.kind == "technique"]
        for i, step in enumerate(untrained):
            run_step(dry, step, later=untrained[i + 1 :])
        early = measure_artifact(dry.bundle, folder)
        violated = _violated_sizes(early, plan)
        if violated:
            return {**early, "rejected_before_training": violated, "seconds": time.perf_counter() - t0}
    for i, step in enumerate(steps):
        run_step(session, step, later=steps[i + 1 :])
    metrics = measure_artifact(session.bundle, folder)
    if check is not None:
        check(session, metrics)
    metrics.update(_quality(session, base_session))
    x1 = session.example_inputs(1)
    macs = _macs(session.model, x1)
    if macs is not None:
        metrics["macs"] = macs
    if plan.latency:
        metrics.update(paired_latency(base.model, session.model, base_session, plan))
    metrics["seconds"] = time.perf_counter() - t0
    return metrics


def _quality(session: Any, base_session: Any) -> dict[str, float]:
    from modelscale.train import evaluate

    scores = evaluate(session.model, session.data.val, task=session.task, device="cpu")
    out = {"accuracy": float(scores.get("accuracy", math.nan)), "loss": float(scores["loss"])}
    base_acc = base_session._cache["baseline_metrics"]["accuracy"]
    out["accuracy_drop"] = 100.0 * (base_acc - out["accuracy"])
    return out


def paired_latency(base: Any, model: Any, session: Any, plan: TrialPlan) -> dict[str, Any]:
    """p50/p90 at batch 1 and batch N, timed interleaved with the baseline; an unstable pair claims none."""
    from modelscale.measure import measure_latency_pair

    out: dict[str, Any] = {}
    for tag, batch in (("b1", 1), ("bN", plan.latency_batch)):
        x = session.example_inputs(batch)
        pair = measure_latency_pair(
            base, model, x, warmup=plan.warmup, repeats=plan.repeats, threads=plan.threads
        )
        unstable = bool(getattr(pair, "unstable", False)) or pair.b.p90_ms > 3.0 * pair.b.median_ms
        speedup = float(pair.speedup)
        if unstable:  # never feed an unstable figure to the search as if it were exact
            out[f"latency_unstable_{tag}"] = True
            ratio = pair.b.median_ms / pair.a.median_ms if pair.a.median_ms else 1.0
            speedup = min(speedup, 1.0) if ratio < 1.0 else speedup
        base_p50 = session._cache["baseline_metrics"].get(f"latency_p50_{tag}") or pair.a.median_ms
        base_p90 = session._cache["baseline_metrics"].get(f"latency_p90_{tag}") or pair.a.p90_ms
        # Latency in the baseline's units: the paired ratio applied to the baseline's own figure, so
        # every trial is compared on the same footing whatever the machine's load when it ran.
        out[f"speedup_{tag}"] = speedup
        out[f"latency_p50_{tag}"] = base_p50 / speedup if speedup > 0 else math.inf
        p90_ratio = pair.a.p90_ms / pair.b.p90_ms if pair.b.p90_ms > 0 else speedup
        if unstable:
            p90_ratio = min(p90_ratio, 1.0)
        out[f"latency_p90_{tag}"] = base_p90 / p90_ratio if p90_ratio > 0 else math.inf
        out[f"measured_p50_ms_{tag}"] = pair.b.median_ms
    return out


def baseline_metrics(session: Any, plan_latency: bool, plan: TrialPlan, folder: Path) -> dict[str, float]:
    """The baseline measured exactly like a trial (validation split, saved file, paired latency with
    itself for the spread)."""
    from modelscale.measure import measure_latency

    if session.data is None or session.data.val is None or len(session.data.val) == 0:
        raise ModelscaleError("the search needs data with a validation split; pass --data (e.g. digits)")
    metrics = measure_artifact(session.bundle, folder)
    session._cache["baseline_metrics"] = {"accuracy": math.nan}
    from modelscale.train import evaluate

    scores = evaluate(session.model, session.data.val, task=session.task, device="cpu")
    metrics.update({"accuracy": float(scores.get("accuracy", math.nan)), "loss": float(scores["loss"])})
    metrics["accuracy_drop"] = 0.0
    macs = _macs(session.model, session.example_inputs(1))
    if macs is not None:
        metrics["macs"] = macs
    if plan_latency:
        for tag, batch in (("b1", 1), ("bN", plan.latency_batch)):
            report = measure_latency(
                session.model, session.example_inputs(batch), warmup=plan.warmup, repeats=plan.repeats,
                threads=plan.threads,
            )  # fmt: skip
            metrics[f"latency_p50_{tag}"] = report.median_ms
            metrics[f"latency_p90_{tag}"] = report.p90_ms
            metrics[f"speedup_{tag}"] = 1.0
    session._cache["baseline_metrics"] = metrics
    return metrics
