"""Recipes: a model, data, a baseline and an ordered list of steps, as versioned YAML or JSON data.

Every field is validated before anything runs, through the same config classes the library uses
(`TechniqueConfig.from_dict`, `TrainConfig.from_dict`, the distillation config). Errors name the field
path and the valid options (`steps[2].config.amount: must be < 1.0, got 1.5`); unknown keys are
rejected at every level. Any scalar may be a sweep (`{sweep: [0.3, 0.5]}`): the recipe expands into
the cartesian product of variants (see `variants.py`).

Example::

    version: 1
    name: digits-prune
    model: {name: cnn}
    data: {source: digits, seed: 0}
    baseline: {train: {epochs: 20, lr: 0.003}}
    steps:
      - {technique: magnitude_prune, config: {amount: {sweep: [0.5, 0.8]}}}
      - {name: tune, finetune: {epochs: 3, lr: 0.0005}}
    measure: {batch_sizes: [1, 32], metrics: [accuracy, latency, size]}

    plan = load_recipe("recipe.yaml")     # -> RecipePlan with .variants (validated Recipe objects)
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelscale.core.config import Config
from modelscale.core.errors import ModelscaleError
from modelscale.core.trust import TRUST_KEYS
from modelscale.engine.specs import DataSection, ExportConfig, MeasureSection, ModelSection
from modelscale.engine.steps import DistillStep, Step
from modelscale.pipeline.variants import Variant, expand_sweeps

__all__ = [
    "DataSection",
    "DistillStep",
    "ExportConfig",
    "MeasureSection",
    "ModelSection",
    "Recipe",
    "RecipePlan",
    "Step",
    "load_recipe",
    "patch_recipe",
    "read_recipe",
]

RECIPE_VERSION = 1
TOP_KEYS = ("version", "name", "model", "data", "baseline", "steps", "measure")
STEP_KINDS = ("technique", "finetune", "distill", "export")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass
class Recipe:
    """One validated variant of a recipe; `to_dict()` holds every config with its defaults filled in."""

    name: str
    model: ModelSection
    data: DataSection
    baseline_train: Any  # TrainConfig or None
    baseline_load: str | None
    steps: list[Step]
    measure: MeasureSection
    variant: Variant
    version: int = RECIPE_VERSION

    def to_dict(self) -> dict[str, Any]:
        baseline: dict[str, Any] = {}
        if self.baseline_train is not None:
            baseline["train"] = self.baseline_train.to_dict()
        if self.baseline_load:
            baseline["load"] = self.baseline_load
        return {
            "version": self.version,
            "name": self.name,
            "model": self.model.to_dict(),
            "data": self.data.to_dict(),
            "baseline": baseline,
            "steps": [s.to_dict() for s in self.steps],
            "measure": self.measure.to_dict(),
        }

    def prefix_key(self, upto: int) -> str:
        """Fingerprint of everything that decides the model after step `upto` (0 = baseline)."""
        d = self.to_dict()
        body = {k: d[k] for k in ("model", "data", "baseline", "measure")}
        body["steps"] = d["steps"][:upto]
        return hashlib.sha1(json.dumps(_without_progress(body), sort_keys=True).encode()).hexdigest()


def _without_progress(data: Any) -> Any:
    """Drop TrainConfig's `progress` flag (display only: toggling it must not invalidate checkpoints)."""
    if isinstance(data, dict):
        is_train = data.get("type") == "train"
        return {k: _without_progress(v) for k, v in data.items() if not (is_train and k == "progress")}
    if isinstance(data, list):
        return [_without_progress(v) for v in data]
    return data


@dataclass
class RecipePlan:
    name: str
    data: dict[str, Any]  # the recipe as written (with its sweeps)
    variants: list[Recipe]


# --- loading and validation ------------------------------------------------------------------------
def read_recipe(path: str | Path) -> dict[str, Any]:
    from modelscale.core.io import read_structured

    data = read_structured(path)
    if not isinstance(data, dict):
        raise ModelscaleError(f"{path}: a recipe must be a mapping with keys {', '.join(TOP_KEYS)}")
    return data


def load_recipe(source: str | Path | dict[str, Any]) -> RecipePlan:
    """Read (if a path) and validate a recipe; every sweep variant is validated before returning."""
    data = copy.deepcopy(source) if isinstance(source, dict) else read_recipe(source)
    _keys(data, "recipe", TOP_KEYS, required=("version", "name", "model", "data"))
    version = data["version"]
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= RECIPE_VERSION:
        raise ModelscaleError(
            f"version: recipe version {version!r} is not supported; use version: {RECIPE_VERSION}"
        )
    name = data["name"]
    if not isinstance(name, str) or not _NAME.match(name):
        raise ModelscaleError(f"name: must be a short name of letters, digits, '-', '_' or '.'; got {name!r}")
    variants = expand_sweeps(data)
    recipes = []
    for variant in variants:
        try:
            recipes.append(_validate(variant))
        except ModelscaleError as exc:
            if len(variants) > 1:
                raise ModelscaleError(f"variant {variant.label}: {exc}") from None
            raise
    return RecipePlan(name, data, recipes)


def _validate(variant: Variant) -> Recipe:
    d = variant.data
    model = _model(d["model"], "model")
    data = _config(DataSection, d["data"], "data")
    train, load = _baseline(d.get("baseline"), model)
    steps = _steps(d.get("steps") or [])
    measure = _config(MeasureSection, d.get("measure") or {}, "measure")
    return Recipe(d["name"], model, data, train, load, steps, measure, variant)


def _keys(data: Any, where: str, valid: tuple[str, ...], required: tuple[str, ...] = ()) -> None:
    if not isinstance(data, dict):
        raise ModelscaleError(f"{where}: must be a mapping with keys {', '.join(valid)}; got {data!r}")
    unknown = sorted(set(map(str, data)) - set(valid))
    if unknown:
        raise ModelscaleError(f"{where}: unknown key(s) {', '.join(unknown)}; valid: {', '.join(valid)}")
    missing = [k for k in required if k not in data]
    if missing:
        raise ModelscaleError(f"{where}: missing {', '.join(missing)}")


def field_error(where: str, exc: ModelscaleError, fields: Any) -> ModelscaleError:
    """Prefix a config's one-line error with its path: "amount must be ..." -> "steps[0].config.amount: must be ..."."""
    msg = str(exc)
    m = re.match(r"([A-Za-z_]\w*)(?:: | (?=must |is |should ))(.*)", msg, re.S)
    if m and m.group(1) in set(fields):
        return ModelscaleError(f"{where}.{m.group(1)}: {m.group(2)}")
    return ModelscaleError(f"{where}: {msg}")


def _config(cls: type[Config], data: Any, where: str) -> Any:
    import dataclasses

    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ModelscaleError(f"{where}: must be a mapping of {cls.type} fields; got {data!r}")
    try:
        return cls.from_dict(data)
    except ModelscaleError as exc:
        raise field_error(where, exc, [f.name for f in dataclasses.fields(cls)]) from None
    except TypeError as exc:  # a config class raising on odd input: still name the place
        raise ModelscaleError(f"{where}: {exc}") from None


def _train(data: Any, where: str) -> Any:
    from modelscale.train import TrainConfig

    return _config(TrainConfig, data, where)


def _model(data: Any, where: str) -> ModelSection:
    from modelscale.models.registry import check_args, check_kwargs, resolve

    if isinstance(data, str):
        data = {"name": data}
    _keys(data, where, ("name", "kwargs", "load"))
    if ("name" in data) == ("load" in data):
        raise ModelscaleError(f"{where}: give either name (a zoo model) or load (a saved model folder)")
    if "load" in data:
        path = data["load"]
        if not isinstance(path, str) or not (Path(path) / "modelscale.json").is_file():
            raise ModelscaleError(
                f"{where}.load: {path!r} is not a saved modelscale model folder; check the path"
            )
        if "kwargs" in data:
            raise ModelscaleError(f"{where}.kwargs: not used with load; remove it")
        return ModelSection(load=path)
    kwargs = data.get("kwargs") or {}
    if not isinstance(kwargs, dict):
        raise ModelscaleError(f"{where}.kwargs: must be a mapping of model options; got {kwargs!r}")
    for key in TRUST_KEYS:
        if key in kwargs:
            raise ModelscaleError(
                f"{where}.kwargs.{key}: not allowed in recipes; a file cannot grant trust — remove it "
                "(and, for pickled weights you trust, pass --allow-pickle to modelscale run)"
            )
    try:
        family, _ = resolve(data["name"])
    except ModelscaleError as exc:
        raise ModelscaleError(f"{where}.name: {exc}") from None
    shared = ("num_classes", "input_shape", "width", "depth", "dropout")
    try:
        check_args(
            kwargs.get("num_classes", 10),
            kwargs.get("input_shape", (1, 8, 8)),
            kwargs.get("width", 1.0),
            kwargs.get("depth", 1.0),
            kwargs.get("dropout", 0.0),
        )
        check_kwargs(
            family,
            data["name"],
            {k: v for k, v in kwargs.items() if k not in (*shared, "weights")},
        )
    except ModelscaleError as exc:
        raise field_error(f"{where}.kwargs", exc, shared) from None
    return ModelSection(name=data["name"], kwargs=dict(kwargs))


def _baseline(data: Any, model: ModelSection) -> tuple[Any, str | None]:
    if data is None:
        return None, None
    _keys(data, "baseline", ("train", "load"))
    if "train" in data and "load" in data:
        raise ModelscaleError("baseline: give either train (a TrainConfig) or load (a saved model folder)")
    if "load" in data:
        path = data["load"]
        if not isinstance(path, str) or not (Path(path) / "modelscale.json").is_file():
            raise ModelscaleError(
                f"baseline.load: {path!r} is not a saved modelscale model folder; check the path"
            )
        return None, path
    return (_train(data["train"], "baseline.train") if "train" in data else None), None


def _steps(data: Any) -> list[Step]:
    if not isinstance(data, list):
        raise ModelscaleError(f"steps: must be a list of steps ({', '.join(STEP_KINDS)}); got {data!r}")
    steps: list[Step] = []
    names: set[str] = set()
    for i, raw in enumerate(data):
        where = f"steps[{i}]"
        if not isinstance(raw, dict):
            raise ModelscaleError(f"{where}: must be a mapping with one of {', '.join(STEP_KINDS)}")
        kinds = [k for k in STEP_KINDS if k in raw]
        if len(kinds) != 1:
            raise ModelscaleError(f"{where}: needs exactly one of {', '.join(STEP_KINDS)}; got {sorted(raw)}")
        kind = kinds[0]
        _keys(raw, where, (kind, "name", "config") if kind == "technique" else (kind, "name"))
        name = raw.get("name") or _default_name(raw, kind)
        if not isinstance(name, str) or not _NAME.match(name) or name == "baseline":
            raise ModelscaleError(
                f"{where}.name: {name!r} is not a valid step name (letters, digits, -_.; not 'baseline')"
            )
        if name in names:
            if "name" in raw:
                raise ModelscaleError(f"{where}.name: {name!r} is used twice; step names must be unique")
            name = next(f"{name}-{n}" for n in range(2, 10_000) if f"{name}-{n}" not in names)
        if kind == "technique":
            config = _technique(raw, where)
        elif kind == "finetune":
            config = _train(raw["finetune"], f"{where}.finetune")
        elif kind == "distill":
            config = _distill(raw["distill"], f"{where}.distill", steps)
        else:
            config = _export(raw["export"], f"{where}.export")
        names.add(name)
        steps.append(Step(i + 1, name, kind, config))
    return steps


def _default_name(raw: dict[str, Any], kind: str) -> str:
    return str(raw["technique"]) if kind == "technique" and isinstance(raw["technique"], str) else kind


def _technique(raw: dict[str, Any], where: str) -> Any:
    from modelscale.core.registry import get_technique

    name = raw["technique"]
    if not isinstance(name, str):
        raise ModelscaleError(f"{where}.technique: must be a registered technique name; got {name!r}")
    try:
        cls = get_technique(name).config_cls
    except ModelscaleError as exc:
        raise ModelscaleError(f"{where}.technique: {exc}") from None
    config = raw.get("config") or {}
    if not isinstance(config, dict):
        raise ModelscaleError(f"{where}.config: must be a mapping of {name} fields; got {config!r}")
    return _config(cls, {"type": name, **config}, f"{where}.config")


def distill_api() -> tuple[Any, Any]:
    """(DistillConfig, distill) from modelscale.techniques.distill, or a one-line error."""
    try:
        from modelscale.techniques.distill import DistillConfig, distill
    except ImportError as exc:
        raise ModelscaleError(
            f"distillation is not available in this install ({exc}); remove the distill step"
        ) from None
    return DistillConfig, distill


def _distill(data: Any, where: str, earlier: list[Step]) -> DistillStep:
    _keys(data or {}, where, ("teacher", "config", "train", "student"))
    data = data or {}
    try:
        config_cls, _ = distill_api()
    except ModelscaleError as exc:
        raise ModelscaleError(f"{where}: {exc}") from None
    teacher = data.get("teacher", "baseline")
    valid = ["baseline", *(s.name for s in earlier if s.kind != "export")]
    if teacher not in valid:
        raise ModelscaleError(
            f"{where}.teacher: {teacher!r} is not baseline or an earlier step; valid: {', '.join(valid)}"
        )
    student = _model(data["student"], f"{where}.student") if "student" in data else None
    config = _config(config_cls, data.get("config") or {}, f"{where}.config")
    return DistillStep(teacher, config, _train(data.get("train"), f"{where}.train"), student)


def export_fn() -> Any:
    """`export_onnx` from modelscale.export, or a one-line error saying export is not available."""
    try:
        try:
            from modelscale.export import export_onnx
        except ImportError:
            from modelscale.export.onnx_export import export_onnx
        from modelscale.export.onnx_export import require

        require("onnx", "onnxscript")
    except (ImportError, ModelscaleError) as exc:
        raise ModelscaleError(
            f"ONNX export is not available ({exc}); install modelscale[onnx] or remove the step"
        ) from None
    return export_onnx


def _export(data: Any, where: str) -> ExportConfig:
    config = _config(ExportConfig, data or {}, where)
    try:
        export_fn()
    except ModelscaleError as exc:
        raise ModelscaleError(f"{where}: {exc}") from None
    return config


# --- helpers for tests and quick runs --------------------------------------------------------------
def patch_recipe(
    data: dict[str, Any],
    *,
    epochs: int | None = None,
    max_steps: int | None = None,
    repeats: int | None = None,
    warmup: int | None = None,
    batch_sizes: list[int] | None = None,
) -> dict[str, Any]:
    """A copy of recipe data with every training section (baseline, fine-tune, distill) and the
    measurement shortened; used for smoke runs (`epochs=1`) of full-size recipes."""
    data = copy.deepcopy(data)
    trains = []
    if isinstance(data.get("baseline"), dict) and isinstance(data["baseline"].get("train"), dict):
        trains.append(data["baseline"]["train"])
    for step in data.get("steps") or []:
        if isinstance(step, dict) and "finetune" in step:
            step["finetune"] = step["finetune"] or {}
            trains.append(step["finetune"])
        if isinstance(step, dict) and isinstance(step.get("distill"), dict):
            step["distill"]["train"] = step["distill"].get("train") or {}
            trains.append(step["distill"]["train"])
    for train in trains:
        if epochs is not None:
            train["epochs"] = epochs
        if max_steps is not None:
            train["max_steps"] = max_steps
    if any(v is not None for v in (repeats, warmup, batch_sizes)) and not isinstance(
        data.get("measure"), dict
    ):
        data["measure"] = {}
    measure = data["measure"] if isinstance(data.get("measure"), dict) else {}
    for key, value in (("repeats", repeats), ("warmup", warmup), ("batch_sizes", batch_sizes)):
        if value is not None:
            measure[key] = value
    return data
