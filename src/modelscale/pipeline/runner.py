"""`run_recipe`: run every variant of a recipe step by step, checkpointing and measuring after each step.

Layout of a run folder::

    <run_dir>/recipe.json                       the recipe as given (with its sweeps)
    <run_dir>/<variant>/<index>-<name>/         one folder per step; 0-baseline first
        model.safetensors, modelscale.json      the model after the step (models.loading.save_model_dir)
        profile.json                            the measurements (one profile per device/dtype/batch)
        model.onnx                              export steps only
        DONE.json                               the step-complete marker, written LAST (atomically)

Crash safety: every file is written atomically and the marker last, so a step folder is either
complete (marker present) or is wiped and redone. Started again after a crash (even SIGKILL), the
runner skips every step whose marker exists and matches the recipe's fingerprint, loads the model of
the last completed step, and continues; the store rows of finished steps are not touched. If the
process died between the marker and the store update, the store is brought up to date from the
marker (which holds the metrics). A step shared by several variants (same model, data, baseline and
steps so far: e.g. the baseline of a sweep over a later step) is computed once and copied.

A failing step (NaN loss, shape error, ModelscaleError) is recorded as failed with its message; the
variant stops there and the other variants still run.

Example::

    result = run_recipe("recipes/digits_cnn_prune_finetune.yaml", store="runs/modelscale.db",
                        run_dir="runs/digits")
    result.ok, [v.status for v in result.variants]
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelscale.core.errors import ModelscaleError
from modelscale.pipeline.folders import MARKER, read_marker, run_lock
from modelscale.pipeline.preflight import all_steps, check_up_front, preflight
from modelscale.pipeline.printer import Printer, headline_text
from modelscale.pipeline.recipe import Recipe, RecipePlan, Step, load_recipe
from modelscale.pipeline.store import RunStore, open_store


@dataclass
class StepResult:
    index: int
    name: str
    kind: str
    status: str  # completed | failed
    how: str  # executed | resumed | reused
    seconds: float | None = None
    error: str | None = None
    headline: dict[str, float] = field(default_factory=dict)
    folder: str = ""


@dataclass
class VariantResult:
    label: str
    slug: str
    run_id: str
    status: str  # completed | failed
    error: str | None = None
    steps: list[StepResult] = field(default_factory=list)


@dataclass
class RunResult:
    name: str
    run_dir: str
    store: str
    variants: list[VariantResult]

    @property
    def ok(self) -> bool:
        return all(v.status == "completed" for v in self.variants)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def run_recipe(
    recipe: str | Path | dict[str, Any] | RecipePlan,
    *,
    store: RunStore | str | Path | None = None,
    run_dir: str | Path | None = None,
    resume: bool = True,
    progress: bool = True,
    allow_pickle: bool = False,
) -> RunResult:
    """Run (or resume) every variant of `recipe`; returns what happened to each step.

    `store`: a RunStore, a path / SQLAlchemy URL, or None for `runs/modelscale.db`. `run_dir`: the run
    folder (default `runs/<recipe name>`). `resume=False` wipes this recipe's variant folders first.
    `allow_pickle` is the user's own opt-in to pickled weights the recipe names; the recipe cannot set it.
    """
    plan = recipe if isinstance(recipe, RecipePlan) else load_recipe(recipe)
    run_path = Path(run_dir) if run_dir is not None else Path("runs") / plan.name
    data_cache: dict[str, Any] = {}
    preflight(plan, run_path, resume, allow_pickle)
    for r in plan.variants:
        check_up_front(r, data_cache, allow_pickle)
    own_store = not isinstance(store, RunStore)
    with run_lock(run_path):
        db = open_store(store)
        try:
            from modelscale.core.io import write_json

            write_json(run_path / "recipe.json", plan.data)
            say = Printer(progress)
            fresh: set[str] = set()  # variant folders (re)computed by this call
            results = []
            for r in plan.variants:
                variant = _Variant(r, db, run_path, data_cache, say, resume, progress, fresh, allow_pickle)
                results.append(variant.run())
                fresh.add(r.variant.slug)
            return RunResult(plan.name, str(run_path), db.location, results)
        finally:
            if own_store:
                db.close()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    first = text.splitlines()[0] if text else ""
    name = type(exc).__name__
    return first if isinstance(exc, ModelscaleError) and first else f"{name}: {first}" if first else name


class _Variant:
    """Runs one variant: resume scan, then each remaining step."""

    def __init__(
        self,
        recipe: Recipe,
        db: RunStore,
        run_path: Path,
        cache: dict[str, Any],
        say: Printer,
        resume: bool,
        progress: bool,
        fresh: set[str],
        allow_pickle: bool = False,
    ) -> None:
        self.recipe, self.db, self.run_path, self.cache, self.say = recipe, db, run_path, cache, say
        self.resume, self.progress, self.fresh, self.allow_pickle = resume, progress, fresh, allow_pickle
        self.vdir = run_path / recipe.variant.slug
        self.steps = all_steps(recipe)

    # --- helpers -------------------------------------------------------------------------------------
    def data(self) -> Any:
        key = json.dumps(self.recipe.data.to_dict(), sort_keys=True)
        if key not in self.cache:
            self.cache[key] = self.recipe.data.load()
        return self.cache[key]

    def step_config(self, step: Step) -> dict[str, Any]:
        if step.kind == "baseline":
            d = self.recipe.to_dict()
            return {"model": d["model"], "data": d["data"], "baseline": d["baseline"]}
        return step.to_dict()

    def line(
        self,
        step: Step,
        status: str,
        seconds: float | None = None,
        headline: dict[str, float] | None = None,
        style: str = "",
    ) -> None:
        n = len(self.steps) - 1
        took = f" in {seconds:.1f} s" if seconds is not None else ""
        kind = step.config.type if step.kind == "technique" else step.kind
        what = step.name if kind == step.name else f"{step.name} ({kind})"
        tail = f"  {headline_text(headline)}" if headline else ""
        self.say(
            f"{self.recipe.name}/{self.recipe.variant.label} [{step.index}/{n}] {what}: {status}{took}{tail}",
            style,
        )

    def donor(self, step: Step, key: str) -> Path | None:
        """A completed, identical step folder of another variant of this run (with resume=False, only
        of a variant computed by this call: starting over must not pick up old results)."""
        if not self.run_path.is_dir():
            return None
        for other in sorted(self.run_path.iterdir()):
            if other == self.vdir or not other.is_dir() or other.name.startswith("."):
                continue
            if not self.resume and other.name not in self.fresh:
                continue
            marker = read_marker(other / step.folder)
            if marker is not None and marker.get("key") == key:
                return other / step.folder
        return None

    # --- the run ---------------------------------------------------------------------------------------
    def run(self) -> VariantResult:
        r = self.recipe
        if not self.resume and self.vdir.exists():
            shutil.rmtree(self.vdir)
        self.vdir.mkdir(parents=True, exist_ok=True)
        for stale in self.vdir.glob(".*.tmp-*"):  # a copy interrupted by a crash
            shutil.rmtree(stale, ignore_errors=True)
        run_id, _ = self.db.open_run(
            recipe=r.name,
            variant=r.variant.slug,
            label=r.variant.label,
            run_dir=str(self.run_path.resolve()),
            config=r.to_dict(),
            sweep=r.variant.values,
            resume=self.resume,
        )
        result = VariantResult(r.variant.label, r.variant.slug, run_id, "running")
        stored = {s["idx"]: s for s in self.db.steps(run_id)}
        todo = 0
        for step in self.steps:
            marker = read_marker(self.vdir / step.folder) if self.resume else None
            if marker is None:
                break
            if stored.get(step.index, {}).get("status") != "completed":
                self.reconcile(run_id, step, marker, stored.get(step.index))
            head = _headline(marker.get("metrics", []))
            result.steps.append(
                StepResult(
                    step.index,
                    step.name,
                    step.kind,
                    "completed",
                    "resumed",
                    marker.get("seconds"),
                    None,
                    head,
                    str(self.vdir / step.folder),
                )
            )
            self.line(step, "done earlier (resumed)", headline=head, style="dim")
            todo += 1
        bundle = None
        if 0 < todo < len(self.steps):
            from modelscale.models.loading import load_model_dir

            last = self.steps[todo - 1]
            try:
                bundle = load_model_dir(self.vdir / last.folder)
            except Exception as exc:  # noqa: BLE001 - e.g. files removed by hand: this variant fails, others run
                result.status = "failed"
                result.error = f"cannot resume from step {last.index} ({last.name}): {_first_line(exc)}"
                self.db.finish_run(run_id, "failed", result.error)
                self.say(f"{r.name}/{r.variant.label}: FAILED: {result.error}", "bold red")
                return result
        for step in self.steps[todo:]:
            outcome = self.execute(run_id, step, bundle)
            result.steps.append(outcome[0])
            if outcome[0].status != "completed":
                result.status, result.error = "failed", f"step {step.index} ({step.name}): {outcome[0].error}"
                self.db.finish_run(run_id, "failed", result.error)
                return result
            bundle = outcome[1]
        self.record_views()
        result.status = "completed"
        self.db.finish_run(run_id, "completed")
        return result

    def record_views(self) -> None:
        """Weights, feature maps, agreement and CKA of the final model against the baseline, measured
        once and saved with the final step (the report renders them; it never reloads models)."""
        from modelscale.measure.model_views import VIEWS_JSON, record_views
        from modelscale.models.loading import load_model_dir

        final = next((s for s in reversed(self.steps) if s.kind != "export"), None)
        if final is None or final.index == 0:
            return
        folder = self.vdir / final.folder
        if (folder / VIEWS_JSON).is_file():
            return  # recorded by an earlier, resumed run
        try:
            base = load_model_dir(self.vdir / self.steps[0].folder).model
            record_views(base, load_model_dir(folder).model, self.data(), folder)
        except Exception as exc:  # noqa: BLE001 - views are a report's extra: a failure is a note, not a failed run
            self.say(
                f"{self.recipe.name}/{self.recipe.variant.label}: model views not recorded: {_first_line(exc)}"
            )

    def reconcile(self, run_id: str, step: Step, marker: dict[str, Any], row: dict[str, Any] | None) -> None:
        """The marker exists but the store missed the update (crash in between, or a new store)."""
        if row is None:
            self.db.start_step(
                run_id, step.index, name=step.name, kind=step.kind, config=self.step_config(step)
            )
        self.db.finish_step(
            run_id,
            step.index,
            status="completed",
            summary=marker.get("summary"),
            metrics=marker.get("metrics", []),
            artifacts=self.artifacts(self.vdir / step.folder),
            checkpoint=str((self.vdir / step.folder).resolve()),
            seconds=marker.get("seconds"),
            finished_at=marker.get("finished_at"),
        )

    def artifacts(self, step_dir: Path) -> list[dict[str, Any]]:
        kinds = {"model.safetensors": "checkpoint", "profile.json": "profile", "model.onnx": "onnx"}
        return [
            {
                "kind": kind,
                "path": str((step_dir / name).resolve()),
                "bytes": (step_dir / name).stat().st_size,
            }
            for name, kind in kinds.items()
            if (step_dir / name).is_file()
        ]

    def execute(self, run_id: str, step: Step, bundle: Any) -> tuple[StepResult, Any]:
        from modelscale.models.loading import load_model_dir

        sdir = self.vdir / step.folder
        key = self.recipe.prefix_key(step.index)
        self.db.start_step(run_id, step.index, name=step.name, kind=step.kind, config=self.step_config(step))
        t0 = time.time()
        try:
            donor = self.donor(step, key)
            if donor is not None:
                tmp = self.vdir / f".{step.folder}.tmp-{uuid.uuid4().hex[:8]}"
                shutil.copytree(donor, tmp)
                if sdir.exists():
                    shutil.rmtree(sdir)
                os.replace(tmp, sdir)
                marker = read_marker(sdir) or {}
                bundle = load_model_dir(sdir)
                how, reused = "reused", str(donor.resolve())
            else:
                marker, bundle = self.compute(step, bundle, sdir, key, t0)
                how, reused = "executed", None
        except Exception as exc:  # noqa: BLE001 - any failure of one step is recorded, the sweep goes on
            seconds = time.time() - t0
            error = _first_line(exc)
            self.db.finish_step(run_id, step.index, status="failed", error=error, seconds=seconds)
            self.line(step, f"FAILED: {error}", seconds, style="bold red")
            return StepResult(
                step.index, step.name, step.kind, "failed", "executed", seconds, error, {}, str(sdir)
            ), None
        seconds = marker.get("seconds") if how == "reused" else time.time() - t0
        self.db.finish_step(
            run_id,
            step.index,
            status="completed",
            summary=marker.get("summary"),
            metrics=marker.get("metrics", []),
            artifacts=self.artifacts(sdir),
            checkpoint=str(sdir.resolve()),
            reused_from=reused,
            seconds=seconds,
        )
        head = _headline(marker.get("metrics", []))
        self.line(
            step,
            "done" if how == "executed" else f"reused from {Path(reused or '').parent.name}",
            seconds,
            head,
            "green",
        )
        return StepResult(
            step.index, step.name, step.kind, "completed", how, seconds, None, head, str(sdir)
        ), bundle

    def compute(self, step: Step, bundle: Any, sdir: Path, key: str, t0: float) -> tuple[dict[str, Any], Any]:
        """Execute the step, save its checkpoint and measurements, then write the marker last."""
        from modelscale.core.io import write_json
        from modelscale.engine import Session, run_step
        from modelscale.models.loading import load_model_dir, save_model_dir
        from modelscale.pipeline.profiling import file_size_rows, measure, paired_with_baseline

        if sdir.exists():
            shutil.rmtree(sdir)  # leftovers of an attempt that did not finish
        sdir.mkdir(parents=True)
        data = self.data()
        session = Session(
            bundle, data, seed=self.recipe.data.seed, allow_pickle=self.allow_pickle, progress=self.progress
        )

        def teacher(name: str) -> Any:
            source = next(s for s in self.steps if s.name == name)
            return load_model_dir(self.vdir / source.folder)

        outcome = run_step(session, step, later=self.steps[step.index + 1 :], teacher=teacher, folder=sdir)
        save_model_dir(
            sdir,
            outcome.bundle,
            meta={
                "recipe": self.recipe.name,
                "variant": self.recipe.variant.label,
                "step": step.index,
                "name": step.name,
            },
        )
        profiles, rows, notes = (
            measure(outcome.bundle.model, data, self.recipe.measure) if outcome.profile else ([], [], [])
        )
        rows = file_size_rows(rows, sdir)  # the bytes of the file just written, not an estimate
        if profiles:
            write_json(sdir / "profile.json", profiles)
        if outcome.profile and step.index > 0 and "latency" in self.recipe.measure.metrics:
            baseline = self.vdir / self.steps[0].folder
            pair_rows, pair_notes = paired_with_baseline(
                outcome.bundle.model, baseline, data, self.recipe.measure
            )
            rows, notes = rows + pair_rows, notes + pair_notes
        finished = time.time()
        marker = {
            "status": "completed",
            "key": key,
            "index": step.index,
            "name": step.name,
            "kind": step.kind,
            "started_at": t0,
            "finished_at": finished,
            "seconds": finished - t0,
            "summary": {**outcome.summary, "measure_notes": notes},
            "metrics": outcome.metrics + rows,
            "files": sorted(p.name for p in sdir.iterdir() if p.is_file()),
        }
        write_json(sdir / MARKER, marker)  # LAST: the step is complete once this file exists
        return marker, outcome.bundle


def _headline(rows: list[dict[str, Any]]) -> dict[str, float]:
    from modelscale.pipeline.store import headline

    return headline(rows)


__all__ = ["MARKER", "RunResult", "StepResult", "VariantResult", "read_marker", "run_lock", "run_recipe"]
