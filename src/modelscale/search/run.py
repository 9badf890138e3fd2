"""`search`: the Pareto front of whole compression recipes for a user's objectives and constraints.

Optuna drives it (no home-made optimiser): TPE (multivariate, with the constraints) for one or two
objectives, NSGA-II for three or more; the seed is fixed and recorded. The study lives in Optuna's RDB
storage — a SQLite file next to the search folder by default, any SQLAlchemy URL (PostgreSQL for
several machines) with `storage=` — with heartbeats, so a killed worker's trial is marked failed and
retried once; `resume=True` continues a study, and several processes started with the same storage and
study name share it (`modelscale search --worker`). Every trial is a complete recipe run by the one
engine on a copy of the baseline, saved in `<out>/trials/<n>/` and measured on the validation split,
the saved file, and latency paired against the baseline; the first trials are warm starts (a
sensitivity knapsack aimed at byte goals, search/warm_start.py, then each quantizer alone and the
space's corners) so the front starts where compression is cheap; a trial that a paired sign test finds
less accurate than a no-larger feasible incumbent is stopped early (search/early_stop.py).

At the end the feasible Pareto set is evaluated once on the test split, written as `pareto.json`, and
each point's recipe as `recipes/<n>.yaml`, which `modelscale run` accepts as is.

Example::

    from modelscale.search import search
    result = search("runs/cnn", "digits", objectives=["accuracy", "bytes"],
                    constraints=["accuracy_drop <= 1", "bytes <= 24000"], n_trials=50, out="runs/search")
    print(result.markdown())
"""

from __future__ import annotations

import math
import os
import socket
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from modelscale.core.errors import ModelscaleError
from modelscale.search.early_stop import TrialStopped, make_check, rule_for
from modelscale.search.objectives import (
    check_feasible,
    needs_latency,
    objective_values,
    parse_constraints,
    parse_objectives,
)
from modelscale.search.space import SearchSpace, default_space, parse_space
from modelscale.search.study_setup import keyed_constraints, open_storage, sampler_for
from modelscale.search.trial import TrialPlan, baseline_metrics, recipe_of, run_trial, sample_steps

MAX_TRIALS = 100_000


@dataclass
class SearchResult:
    study: str
    storage: str
    objectives: list[dict[str, str]]
    constraints: list[str]
    baseline: dict[str, float]
    pareto: list[dict[str, Any]]  # feasible front: number, params, metrics, test metrics, recipe file
    trials: int
    feasible: int
    seconds: float
    out_dir: str
    notes: list[str] = field(default_factory=list)
    points: list[dict[str, Any]] = field(default_factory=list)  # every completed trial, for plots

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def markdown(self) -> str:
        from modelscale.core.formatting import human, table

        names = [o["metric"] for o in self.objectives]
        headers = ["trial", "recipe", *names, "test accuracy", "bytes", "speedup b1", "recipe file"]
        rows = []
        for p in self.pareto:
            m = p["metrics"]
            rows.append(
                [
                    str(p["number"]),
                    p["label"],
                    *[_cell(n, m.get(n)) for n in names],
                    _cell("accuracy", p.get("test", {}).get("accuracy")),
                    human(m.get("bytes")),
                    _cell("speedup_b1", m.get("speedup_b1")),
                    p["recipe_file"],
                ]
            )
        head = (
            f"Search {self.study}: {self.trials} trial(s), {self.feasible} feasible; Pareto set of "
            f"{len(self.pareto)} over {', '.join(names)} (constraints: {', '.join(self.constraints) or 'none'}). "
            f"Baseline: accuracy {_cell('accuracy', self.baseline.get('accuracy'))}, "
            f"{human(self.baseline.get('bytes'))} B.\n\n"
        )
        return (
            head
            + (table(headers, rows) if rows else "No feasible trial.")
            + "\n"
            + "\n".join(f"- {n}" for n in self.notes)
        )


def _cell(name: str, value: Any) -> str:
    from modelscale.core.formatting import DASH, human

    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return DASH
    if name == "accuracy":
        return f"{100 * value:.2f}%"
    if name.startswith("speedup"):
        return f"{value:.2f}×"
    if name == "accuracy_drop":
        return f"{value:+.2f} pt"
    return human(value)


def _label(steps: list[Any]) -> str:
    parts = []
    for s in steps:
        if s.kind == "technique":
            parts.append(s.config.label())
        elif s.kind == "finetune":
            parts.append(f"finetune({s.config.epochs})")
        elif s.kind == "distill":
            parts.append(f"distill({s.config.train.epochs}, α={s.config.config.alpha:.2f})")
    return " → ".join(parts) or "baseline"


def search(
    model: Any,
    data: Any,
    *,
    space: SearchSpace | dict[str, Any] | None = None,
    objectives: list[str] | tuple[str, ...] = ("accuracy", "bytes"),
    constraints: list[str] | tuple[str, ...] = (),
    n_trials: int = 50,
    timeout: float | None = None,
    out: str | Path = "runs/search",
    storage: str | None = None,
    study_name: str = "search",
    seed: int = 0,
    resume: bool = False,
    worker: bool = False,
    latency_batch: int = 32,
    repeats: int = 20,
    threads: int = 1,
    allow_pickle: bool = False,
    progress: bool = True,
    store_path: str | Path | None = None,
    heartbeat: int = 30,
    sampler: str = "auto",
    warm_start: bool = True,
    enqueue: list[dict[str, Any]] | None = None,
    confirm_seeds: int = 3,
    early_stop: bool | Any = True,
) -> SearchResult:
    """Search recipes for `model` (a saved folder or zoo name, trained) on `data`; see the module docstring.

    `resume`: continue the study stored under `out`/`storage` (default: refuse an existing one).
    `worker`: join an existing study (created by another process) and run trials until the study holds
    `n_trials` in all. `sampler`: "auto" (TPE, or NSGA-II for 3+ objectives) or "random" (the baseline
    the benchmark compares with); `warm_start`: enqueue the corner trials first; `enqueue`: more first
    trials, as Optuna parameter dicts (e.g. a grid, or recipes known to work); `confirm_seeds`: re-run the
    smallest Pareto point with that many training seeds and report its test accuracy mean ± sd (0: no);
    `early_stop`: stop a trial that a paired test finds worse than its incumbent (True, False, or an
    `EarlyStop` rule; see search/early_stop.py). Warm starts add the sensitivity-knapsack trials
    (search/warm_start.py) before the corner ones.
    """
    import warnings

    import optuna

    from modelscale.engine import open_session

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

    space = (
        default_space() if space is None else space if isinstance(space, SearchSpace) else parse_space(space)
    )
    objs = parse_objectives(list(objectives))
    cons = parse_constraints(list(constraints))
    if isinstance(n_trials, bool) or not isinstance(n_trials, int) or not 1 <= n_trials <= MAX_TRIALS:
        raise ModelscaleError(f"n_trials must be an integer in [1, {MAX_TRIALS}], got {n_trials!r}")
    if sampler not in ("auto", "random"):
        raise ModelscaleError(f"sampler must be auto or random, got {sampler!r}")
    if isinstance(heartbeat, bool) or not isinstance(heartbeat, int) or not 1 <= heartbeat <= 3600:
        raise ModelscaleError(f"heartbeat must be an integer of seconds in [1, 3600], got {heartbeat!r}")
    if timeout is not None and (not isinstance(timeout, int | float) or timeout <= 0):
        raise ModelscaleError(f"timeout must be a positive number of seconds, got {timeout!r}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ModelscaleError(f"--out {out} is a file; give a folder for the search")
    session = open_session(model, data=data, seed=seed, allow_pickle=allow_pickle, progress=False)
    if session.data is None:
        raise ModelscaleError("the search needs data with a validation split; pass --data (e.g. digits)")
    plan = TrialPlan({}, cons, needs_latency(objs, cons), latency_batch, repeats, threads=threads)
    out.mkdir(parents=True, exist_ok=True)
    base = baseline_metrics(session, plan.latency, plan, out / "baseline")
    plan.baseline_metrics = base
    check_feasible(cons, base)
    store, url = open_storage(storage, out, heartbeat)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    existing = [s.study_name for s in optuna.get_all_study_summaries(store)]
    if study_name in existing and not (resume or worker):
        raise ModelscaleError(
            f"study {study_name!r} already exists in {url}; pass --resume to continue it or --study NAME"
        )
    if worker and study_name not in existing:
        raise ModelscaleError(f"no study {study_name!r} in {url} to join; start it first without --worker")
    study = optuna.create_study(
        storage=store,
        study_name=study_name,
        directions=[o.direction for o in objs],
        sampler=sampler_for(len(objs), cons, seed, sampler),
        load_if_exists=True,
    )
    if study_name not in existing:
        study.set_user_attr("seed", seed)
        study.set_user_attr("space", space.to_dict())
        study.set_user_attr("objectives", [o.metric for o in objs])
        study.set_user_attr("constraints", [str(c) for c in cons])
        study.set_user_attr("baseline", base)
        from modelscale.search.warm_start import enqueue_starts

        enqueue_starts(study, session, space, cons, base, enqueue=enqueue, warm_start=warm_start)
    rule, why_not = rule_for(early_stop, objs)
    study.set_user_attr("early_stop", asdict(rule) if rule else {"off": why_not or "early_stop=False"})
    t0 = time.perf_counter()
    spec_data = {"source": session.data.name, "seed": seed}
    run_store = store_path or out / "modelscale.db"
    baseline_dir = str((out / "baseline").resolve())

    def objective(trial: Any) -> list[float]:
        if _completed(study) >= n_trials:  # another worker finished the budget meanwhile
            study.stop()
            raise optuna.TrialPruned("the study already holds its trials")
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        steps = sample_steps(trial, space)
        folder = out / "trials" / f"{trial.number + 1:04d}"
        label = _label(steps)
        trial.set_user_attr("label", label)
        record: dict[str, Any] = {}
        check = make_check(study, objs, rule, record) if rule else None
        try:
            metrics = run_trial(session, steps, folder, plan, check)
        except TrialStopped as stop:  # pruned in Optuna terms; it still spends one trial of the budget
            trial.set_user_attr("early_stop", stop.verdict)
            _say(progress, f"[trial {trial.number + 1}/{n_trials}] {label}: stopped early ({stop})")
            raise optuna.TrialPruned(str(stop)) from None
        except ModelscaleError as exc:  # a recipe that cannot run on this model is infeasible, not a crash
            trial.set_user_attr("error", str(exc).splitlines()[0])
            trial.set_user_attr("constraint_violation", [1.0] * len(cons))
            if keyed_constraints():
                for c in cons:
                    trial.set_constraint(str(c), 1.0)
            _say(
                progress,
                f"[trial {trial.number + 1}/{n_trials}] {label}: not applicable ({str(exc).splitlines()[0]})",
            )
            return [(-math.inf if o.direction == "maximize" else math.inf) for o in objs]
        violation = [c.violation(metrics, base) for c in cons]
        trial.set_user_attr("metrics", {k: v for k, v in metrics.items() if _plain(v)})
        trial.set_user_attr("constraint_violation", violation)
        if "val_scores" in record:
            trial.set_user_attr("val_scores", record["val_scores"])
        if keyed_constraints():
            for c, v in zip(cons, violation):
                trial.set_constraint(str(c), float(v))
        recipe = recipe_of(steps, baseline_dir, spec_data, {"metrics": ["params", "size", "accuracy"]})
        trial.set_user_attr("recipe", recipe)
        _record(run_store, study_name, trial.number + 1, recipe, metrics, folder, label)
        values = objective_values(objs, metrics)
        feasible = all(v <= 0 for v in violation)
        _say(progress, _progress_line(trial.number, n_trials, label, metrics, feasible, t0, objs))
        return values

    def enough(study: Any, _trial: Any) -> None:
        if _completed(study) >= n_trials:
            study.stop()

    if _completed(study) < n_trials:  # counts completed trials of every worker; a killed one's is retried
        study.optimize(objective, n_trials=None, timeout=timeout, callbacks=[enough], catch=())
    return _finish(study, session, objs, cons, base, out, url, t0, progress, confirm_seeds)


def _record(
    store: Any,
    study: str,
    number: int,
    recipe: dict[str, Any],
    metrics: dict[str, Any],
    folder: Path,
    label: str,
) -> None:
    """The trial as a run of the run store (recipe `search:<study>`), like any recipe run."""
    from modelscale.pipeline.store import open_store

    with open_store(store) as db:
        run_id, _ = db.open_run(
            recipe=f"search:{study}",
            variant=f"trial-{number:04d}",
            label=label,
            run_dir=str(folder.resolve()),
            config=recipe,
            sweep={"trial": number},
        )
        db.start_step(run_id, 0, name="trial", kind="search", config=recipe)
        rows = [
            {"name": f"search.{k}", "value": float(v)}
            for k, v in metrics.items()
            if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
        ]
        early = metrics.get("rejected_before_training")
        db.finish_step(
            run_id,
            0,
            status="completed",
            summary={"label": label, "rejected_before_training": early},
            metrics=rows,
            checkpoint=str(folder.resolve()) if (folder / "modelscale.json").is_file() else None,
            seconds=metrics.get("seconds"),
        )
        db.finish_run(run_id, "completed")


def confirm(session: Any, point: dict[str, Any], seeds: int, out: Path) -> dict[str, Any]:
    """Re-run a Pareto point's recipe with `seeds` training seeds (0, 1, ...): test accuracy mean ± sd."""
    import dataclasses
    import statistics

    import yaml

    from modelscale.models.loading import load_model_dir
    from modelscale.pipeline import load_recipe
    from modelscale.search.trial import TrialPlan, run_trial
    from modelscale.train import evaluate

    recipe = load_recipe(yaml.safe_load(Path(point["recipe_file"]).read_text())).variants[0]
    values = []
    for seed in range(seeds):
        steps = []
        for step in recipe.steps:
            if step.kind == "finetune":
                step = dataclasses.replace(step, config=dataclasses.replace(step.config, seed=seed))
            elif step.kind == "distill":
                cfg = dataclasses.replace(
                    step.config, train=dataclasses.replace(step.config.train, seed=seed)
                )
                step = dataclasses.replace(step, config=cfg)
            steps.append(step)
        folder = out / "confirm" / f"trial-{point['number']:04d}-seed{seed}"
        run_trial(session, steps, folder, TrialPlan(session._cache["baseline_metrics"], (), False))
        model = load_model_dir(folder).model.eval()
        values.append(float(evaluate(model, session.data.test, task=session.task)["accuracy"]))
    return {
        "seeds": list(range(seeds)),
        "test_accuracy": values,
        "mean": statistics.fmean(values),
        "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
    }


def _completed(study: Any) -> int:
    """Trials that spent the budget: completed ones and those stopped early by the paired test."""
    import optuna

    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return sum(
        1
        for t in study.get_trials(deepcopy=False, states=states)
        if t.state == optuna.trial.TrialState.COMPLETE or "early_stop" in t.user_attrs
    )


def _plain(value: Any) -> bool:
    return isinstance(value, bool | int | str | list) or (isinstance(value, float) and math.isfinite(value))


def _say(progress: bool, text: str) -> None:
    if progress:
        import sys

        print(text, file=sys.stderr, flush=True)


def _progress_line(
    number: int, total: int, label: str, metrics: dict[str, Any], ok: bool, t0: float, objs: Any
) -> str:
    shown = ", ".join(f"{o.metric} {_cell(o.metric, metrics.get(o.metric))}" for o in objs)
    early = " (rejected before training)" if metrics.get("rejected_before_training") else ""
    return (
        f"[trial {number + 1}/{total}] {label}: {shown}; {'feasible' if ok else 'infeasible'}{early}; "
        f"{time.perf_counter() - t0:.0f} s elapsed"
    )


def _finish(study: Any, session: Any, objs: Any, cons: Any, base: dict[str, float], out: Path, url: str,
            t0: float, progress: bool, confirm_seeds: int = 3) -> SearchResult:  # fmt: skip
    import yaml

    from modelscale.core.io import write_json, write_text
    from modelscale.models.loading import load_model_dir
    from modelscale.train import evaluate

    done = [t for t in study.trials if t.state.name == "COMPLETE" and "metrics" in t.user_attrs]
    feasible = [t for t in done if all(v <= 0 for v in t.user_attrs.get("constraint_violation", []))]
    from modelscale.analysis.pareto import pareto_front

    points = [dict(t.user_attrs["metrics"]) for t in feasible]
    front = [feasible[i] for i in pareto_front(
        points,
        maximize=[o.metric for o in objs if o.direction == "maximize"],
        minimize=[o.metric for o in objs if o.direction == "minimize"],
    )] if points else []  # fmt: skip
    pareto = []
    (out / "recipes").mkdir(parents=True, exist_ok=True)
    for t in sorted(front, key=lambda t: t.number):
        folder = out / "trials" / f"{t.number + 1:04d}"
        test = {}
        if (folder / "modelscale.json").is_file():  # the test split, once, for the chosen recipes only
            model = load_model_dir(folder).model.eval()
            test = {k: float(v) for k, v in evaluate(model, session.data.test, task=session.task).items()}
        recipe_file = out / "recipes" / f"trial-{t.number + 1:04d}.yaml"
        write_text(recipe_file, yaml.safe_dump(t.user_attrs["recipe"], sort_keys=False))
        binding = [
            str(c) for c, v in zip(cons, t.user_attrs["constraint_violation"]) if v > -0.05
        ]  # within 5% of the bound
        pareto.append(
            {
                "number": t.number + 1,
                "label": t.user_attrs.get("label", ""),
                "params": dict(t.params),
                "metrics": t.user_attrs["metrics"],
                "test": test,
                "binding_constraints": binding,
                "recipe_file": str(recipe_file),
                "folder": str(folder),
            }
        )
    base_test = {
        k: float(v) for k, v in evaluate(session.model, session.data.test, task=session.task).items()
    }
    notes = [
        f"baseline test accuracy {100 * base_test.get('accuracy', math.nan):.2f}% (same split as `test` below)",
        "accuracy, loss and accuracy_drop are on the validation split; `test` is evaluated once, for the "
        "Pareto set only",
        "bytes are the saved model.safetensors file; zipped_bytes the same file deflated",
    ]
    if any(t.user_attrs.get("metrics", {}).get("latency_unstable_b1") for t in done):
        notes.append("some latency pairs were unstable (p90 > 3× median): they were counted as no speedup")
    every = [
        {
            "number": t.number + 1,
            "label": t.user_attrs.get("label", ""),
            "feasible": t in feasible,
            **{k: t.user_attrs["metrics"].get(k) for k in ("accuracy", "bytes", "zipped_bytes", "latency_p50_b1",
                                                            "speedup_b1", "accuracy_drop")},
        }
        for t in done
    ]  # fmt: skip
    if pareto and confirm_seeds > 1:
        chosen = min(pareto, key=lambda p: p["metrics"]["bytes"])
        chosen["seeds"] = confirm(session, chosen, confirm_seeds, out)
        notes.append(
            f"trial {chosen['number']} (the smallest on the front) re-run with {confirm_seeds} training seeds: "
            f"test accuracy {100 * chosen['seeds']['mean']:.2f} ± {100 * chosen['seeds']['sd']:.2f}% (mean ± sd)"
        )
    result = SearchResult(
        study=study.study_name,
        storage=url,
        objectives=[{"metric": o.metric, "direction": o.direction} for o in objs],
        constraints=[str(c) for c in cons],
        baseline=base,
        pareto=pareto,
        trials=len(done),
        feasible=len(feasible),
        seconds=time.perf_counter() - t0,
        out_dir=str(out),
        notes=notes,
        points=every,
    )
    write_json(out / "pareto.json", result.to_dict())
    write_text(out / "pareto.md", result.markdown())
    return result
