"""The search space is data: ordered stages of candidate steps, each with the knobs the search may turn.

A space is a list of stages, applied in the order given — that order is the space's order constraint
(prune before factorize before fine-tune before quantize). A technique stage lists candidate
techniques (any registered name) with their knobs; `optional: true` lets the search skip the stage. A
`finetune` stage samples the fine-tune epochs (0 means none) and, when `distill` is given, whether to
distill from the baseline and with which α and T. Knobs are `{low, high}` ranges (ints when both
bounds are ints; `log: true` for a log scale) or lists of choices; `fixed` sets config fields that are
not searched. A technique that leaves no float weights to tune (`trainable=False` in its registration,
e.g. int8) may not be followed by a stage that trains or by a trainable technique.

Example (YAML)::

    stages:
      - name: prune
        optional: true
        options:
          - {technique: magnitude_prune, knobs: {amount: {low: 0.3, high: 0.95}}, fixed: {scope: global}}
          - {technique: structured_prune, knobs: {ratio: {low: 0.1, high: 0.7}}}
      - name: tune
        finetune: {epochs: {low: 0, high: 8}, lr: 0.0005}
        distill: {alpha: {low: 0.1, high: 0.9}, temperature: {low: 1.0, high: 8.0}}
      - name: quantize
        optional: true
        options: [{technique: static_int8}, {technique: weight_only, knobs: {bits: [4, 8]}}]

    space = SearchSpace.from_dict(yaml.safe_load(text))
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from modelscale.core.errors import ModelscaleError

NONE = "none"
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")


@dataclass(frozen=True)
class Knob:
    """One searched value: a range (`low`..`high`, int or float, optionally log) or categorical choices."""

    name: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple[Any, ...] = ()

    @property
    def is_int(self) -> bool:
        return isinstance(self.low, int) and isinstance(self.high, int) and not isinstance(self.low, bool)

    def suggest(self, trial: Any, key: str) -> Any:
        if self.choices:
            return trial.suggest_categorical(key, list(self.choices))
        if self.is_int:
            return trial.suggest_int(key, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(key, float(self.low), float(self.high), log=self.log)

    def to_dict(self) -> Any:
        if self.choices:
            return list(self.choices)
        out: dict[str, Any] = {"low": self.low, "high": self.high}
        if self.log:
            out["log"] = True
        return out


def parse_knob(name: str, value: Any, where: str) -> Knob:
    if isinstance(value, list | tuple):
        if not value:
            raise ModelscaleError(f"{where}.{name}: give at least one choice")
        if not all(isinstance(v, str | int | float | bool) or v is None for v in value):
            raise ModelscaleError(f"{where}.{name}: choices must be numbers, strings, booleans or null")
        return Knob(name, choices=tuple(value))
    if isinstance(value, dict):
        unknown = sorted(set(value) - {"low", "high", "log"})
        if unknown or "low" not in value or "high" not in value:
            raise ModelscaleError(
                f"{where}.{name}: a range is {{low: A, high: B}} (optionally log: true); got {value!r}"
            )
        lo, hi = value["low"], value["high"]
        for bound in (lo, hi):
            if isinstance(bound, bool) or not isinstance(bound, int | float) or not math.isfinite(bound):
                raise ModelscaleError(f"{where}.{name}: range bounds must be finite numbers, got {value!r}")
        if lo > hi:
            raise ModelscaleError(f"{where}.{name}: low {lo} is above high {hi}")
        log = bool(value.get("log", False))
        if log and lo <= 0:
            raise ModelscaleError(f"{where}.{name}: a log range needs low > 0, got {lo}")
        return Knob(name, low=lo, high=hi, log=log)
    raise ModelscaleError(f"{where}.{name}: give a list of choices or {{low, high}}; got {value!r}")


@dataclass(frozen=True)
class Option:
    """A candidate technique of a stage: its registered name, searched knobs and fixed fields."""

    technique: str
    knobs: tuple[Knob, ...] = ()
    fixed: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"technique": self.technique}
        if self.knobs:
            out["knobs"] = {k.name: k.to_dict() for k in self.knobs}
        if self.fixed:
            out["fixed"] = dict(self.fixed)
        return out


@dataclass(frozen=True)
class Stage:
    name: str
    options: tuple[Option, ...] = ()  # technique stage
    optional: bool = False
    epochs: Knob | None = None  # finetune stage
    lr: float | Knob = 5e-4  # a fixed learning rate or a searched one
    batch_size: int = 64
    distill: tuple[Knob, ...] | None = None  # (alpha, temperature) knobs when distillation is searched

    @property
    def trains(self) -> bool:
        return self.epochs is not None

    def to_dict(self) -> dict[str, Any]:
        if self.trains:
            body: dict[str, Any] = {
                "epochs": self.epochs.to_dict(),
                "lr": self.lr.to_dict() if isinstance(self.lr, Knob) else self.lr,
                "batch_size": self.batch_size,
            }
            out: dict[str, Any] = {"name": self.name, "finetune": body}
            if self.distill is not None:
                out["distill"] = {k.name: k.to_dict() for k in self.distill}
            return out
        return {"name": self.name, "optional": self.optional, "options": [o.to_dict() for o in self.options]}


@dataclass(frozen=True)
class SearchSpace:
    stages: tuple[Stage, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"stages": [s.to_dict() for s in self.stages]}

    @classmethod
    def from_dict(cls, data: Any) -> SearchSpace:
        return parse_space(data)


def _option(data: Any, where: str) -> Option:
    from modelscale.core.registry import get_technique, list_techniques

    if not isinstance(data, dict) or "technique" not in data:
        raise ModelscaleError(f"{where}: an option is {{technique: NAME, knobs: {{...}}, fixed: {{...}}}}")
    unknown = sorted(set(data) - {"technique", "knobs", "fixed"})
    if unknown:
        raise ModelscaleError(f"{where}: unknown key(s) {', '.join(unknown)}; valid: technique, knobs, fixed")
    name = data["technique"]
    if name not in list_techniques():
        raise ModelscaleError(
            f"{where}.technique: unknown technique {name!r}; registered: {', '.join(list_techniques())}"
        )
    technique = get_technique(name)
    fields = {f for f in technique.config_cls.__dataclass_fields__} - {"target"}
    knobs_data = data.get("knobs") or {}
    fixed = dict(data.get("fixed") or {})
    if not isinstance(knobs_data, dict) or not isinstance(fixed, dict):
        raise ModelscaleError(f"{where}: knobs and fixed must be mappings of config fields")
    for key in [*knobs_data, *fixed]:
        if key not in fields and key != "target":
            raise ModelscaleError(
                f"{where}: {name} has no field {key!r}; its fields: {', '.join(sorted(fields))}"
            )
    knobs = tuple(parse_knob(k, v, f"{where}.knobs") for k, v in knobs_data.items())
    probe = {k.name: (k.choices[0] if k.choices else k.low) for k in knobs}
    try:  # every bound must make a valid config
        for k in knobs:
            for v in k.choices or (k.low, k.high):
                technique.config_cls.from_dict({**fixed, **probe, k.name: v})
    except ModelscaleError as exc:
        raise ModelscaleError(f"{where}: {exc}") from None
    return Option(name, knobs, fixed)


def _stage(data: Any, index: int) -> Stage:
    where = f"stages[{index}]"
    if not isinstance(data, dict):
        raise ModelscaleError(f"{where}: a stage is a mapping with options (techniques) or finetune")
    name = data.get("name", f"stage{index}")
    if not isinstance(name, str) or not _NAME.match(name):
        raise ModelscaleError(f"{where}.name: a word of letters, digits, - and _; got {name!r}")
    if "finetune" in data:
        unknown = sorted(set(data) - {"name", "finetune", "distill"})
        if unknown:
            raise ModelscaleError(
                f"{where}: unknown key(s) {', '.join(unknown)}; valid: name, finetune, distill"
            )
        body = data["finetune"] or {}
        if not isinstance(body, dict) or "epochs" not in body:
            raise ModelscaleError(
                f"{where}.finetune: give epochs (a range or choices), e.g. {{low: 0, high: 8}}"
            )
        epochs = parse_knob("epochs", body["epochs"], f"{where}.finetune")
        values = epochs.choices or (epochs.low, epochs.high)
        if any(isinstance(v, bool) or not isinstance(v, int) or v < 0 or v > 1000 for v in values):
            raise ModelscaleError(
                f"{where}.finetune.epochs: whole numbers between 0 and 1000, got {values!r}"
            )
        lr, batch = body.get("lr", 5e-4), body.get("batch_size", 64)
        lr = parse_knob("lr", lr, f"{where}.finetune") if isinstance(lr, dict | list) else lr
        values = (lr.choices or (lr.low, lr.high)) if isinstance(lr, Knob) else (lr,)
        if any(isinstance(v, bool) or not isinstance(v, int | float) or not 0 < v < 10 for v in values):
            raise ModelscaleError(f"{where}.finetune.lr: numbers in (0, 10), got {values!r}")
        if isinstance(batch, bool) or not isinstance(batch, int) or not 1 <= batch <= 65536:
            raise ModelscaleError(f"{where}.finetune.batch_size: an integer in [1, 65536], got {batch!r}")
        distill = None
        if data.get("distill") is not None:
            d = data["distill"]
            if not isinstance(d, dict) or set(d) - {"alpha", "temperature"}:
                raise ModelscaleError(f"{where}.distill: give alpha and temperature (ranges or choices)")
            distill = tuple(
                parse_knob(k, d.get(k, default), f"{where}.distill")
                for k, default in (("alpha", [0.5]), ("temperature", [4.0]))
            )
        return Stage(
            name,
            epochs=epochs,
            lr=lr if isinstance(lr, Knob) else float(lr),
            batch_size=batch,
            distill=distill,
        )
    unknown = sorted(set(data) - {"name", "options", "optional"})
    if unknown:
        raise ModelscaleError(f"{where}: unknown key(s) {', '.join(unknown)}; valid: name, options, optional")
    options = data.get("options")
    if not isinstance(options, list) or not options:
        raise ModelscaleError(f"{where}.options: list at least one candidate technique")
    parsed = tuple(_option(o, f"{where}.options[{i}]") for i, o in enumerate(options))
    return Stage(name, parsed, optional=bool(data.get("optional", False)))


def parse_space(data: Any) -> SearchSpace:
    """Validate a space (a mapping with `stages`) completely; one-line errors name the field path."""
    from modelscale.core.registry import get_technique

    if not isinstance(data, dict) or not isinstance(data.get("stages"), list) or not data["stages"]:
        raise ModelscaleError("a search space is {stages: [...]} with at least one stage; see docs/search.md")
    unknown = sorted(set(data) - {"stages"})
    if unknown:
        raise ModelscaleError(f"search space: unknown key(s) {', '.join(unknown)}; valid: stages")
    stages = tuple(_stage(s, i) for i, s in enumerate(data["stages"]))
    names = [s.name for s in stages]
    if len(set(names)) != len(names):
        raise ModelscaleError(f"search space: stage names must be unique, got {names}")
    frozen_by = None  # the first stage whose techniques leave nothing to train
    for s in stages:
        trainable = s.trains or any(get_technique(o.technique).trainable for o in s.options)
        if frozen_by is not None and trainable:
            raise ModelscaleError(
                f"search space order: stage {s.name!r} trains or adds a trainable technique after stage "
                f"{frozen_by!r}, whose techniques leave no float weights to tune; move {frozen_by!r} last"
            )
        if not s.trains and all(not get_technique(o.technique).trainable for o in s.options):
            frozen_by = frozen_by or s.name
    return SearchSpace(stages)


def default_space() -> SearchSpace:
    """Pruning × low rank × (distilled) fine-tune × quantization, for a classifier with Linear/Conv layers."""
    return parse_space(
        {
            "stages": [
                {
                    "name": "prune",
                    "optional": True,
                    "options": [
                        {
                            "technique": "magnitude_prune",
                            "knobs": {"amount": {"low": 0.3, "high": 0.95}},
                            "fixed": {"scope": "global"},
                        },
                        {"technique": "structured_prune", "knobs": {"ratio": {"low": 0.2, "high": 0.8}}},
                    ],
                },
                {
                    "name": "lowrank",
                    "optional": True,
                    "options": [
                        {"technique": "lowrank_svd", "knobs": {"energy": {"low": 0.6, "high": 0.99}}}
                    ],
                },
                {
                    "name": "tune",
                    "finetune": {
                        "epochs": {"low": 0, "high": 12},
                        "lr": {"low": 3e-4, "high": 3e-3, "log": True},
                    },
                    "distill": {"alpha": {"low": 0.1, "high": 0.9}, "temperature": [2.0, 4.0, 8.0]},
                },
                {
                    "name": "quantize",
                    "optional": True,
                    "options": [
                        {"technique": "static_int8"},
                        {"technique": "dynamic_int8"},
                        {"technique": "weight_only", "knobs": {"bits": [4, 8], "group_size": [0, 32]}},
                    ],
                },
            ]
        }
    )
