"""Config base for techniques and every other config: a keyword-only dataclass that validates itself and round-trips.

A config is data: `to_dict()` gives `{"type", "version", ...fields}`, `from_dict()` rebuilds it
(rejecting unknown keys), and `to_json` / `to_yaml` are thin wrappers. Loading goes through the
registry (`modelscale.core.registry.config_from_dict`), never through `eval` or arbitrary imports.

Each field carries a one-line *why* in its metadata, written with `param(default, "why")`; the CLI
turns those into `--option` help.

Example::

    @dataclass(kw_only=True)
    class MyConfig(TechniqueConfig):
        type: ClassVar[str] = "my_technique"
        amount: float = param(0.5, "fraction of weights to change, in [0, 1)")

        def validate(self) -> None:
            check_range("amount", self.amount, 0.0, 1.0, hi_open=True)
"""

from __future__ import annotations

import dataclasses
import json
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Union, get_args, get_origin

from modelscale.core.errors import ModelscaleError
from modelscale.core.select import Target


def param(
    default: Any = dataclasses.MISSING,
    help: str = "",  # noqa: A002
    *,
    factory: Any = None,
    aliases: tuple[str, ...] = (),
) -> Any:
    """A dataclass field with a one-line explanation (used for CLI help and docs).

    `aliases`: older names of the field, still accepted in files and on the command line."""
    metadata = {"help": help, "aliases": tuple(aliases)}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def field_aliases(cls: type) -> dict[str, str]:
    """{alias: field name} of a config class."""
    return {alias: f.name for f in dataclasses.fields(cls) for alias in f.metadata.get("aliases", ())}


def check_range(
    name: str, value: float, lo: float | None = None, hi: float | None = None, *, hi_open: bool = False
) -> None:
    """Raise a one-line error unless lo <= value <= hi (or < hi when hi_open)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        raise ModelscaleError(f"{name} must be a number, got {value!r}")
    if isinstance(value, float) and value in (float("inf"), float("-inf")):
        raise ModelscaleError(f"{name} must be a finite number, got {value!r}")
    if lo is not None and value < lo:
        raise ModelscaleError(f"{name} must be >= {lo}, got {value}")
    if hi is not None and (value >= hi if hi_open else value > hi):
        bound = f"< {hi}" if hi_open else f"<= {hi}"
        raise ModelscaleError(f"{name} must be {bound}, got {value}")


def check_choice(name: str, value: Any, choices: typing.Iterable[Any]) -> None:
    """Raise a one-line error unless value is one of choices."""
    choices = list(choices)
    if value not in choices:
        raise ModelscaleError(f"{name} must be one of {', '.join(map(str, choices))}; got {value!r}")


@dataclass(kw_only=True)
class Config:
    """Base of every config (techniques, training, ...). Subclasses set `type` and `version`."""

    type: ClassVar[str] = ""
    version: ClassVar[int] = 1

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            setattr(self, f.name, _coerce(getattr(self, f.name), _hints(type(self))[f.name], f.name))
        self._check_literals()
        self.validate()

    def validate(self) -> None:
        """Cheap checks of field values; raise `ModelscaleError` with the fix. Override in subclasses."""

    # --- round trip ---------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type, "version": self.version}
        for f in dataclasses.fields(self):
            out[f.name] = _plain(getattr(self, f.name))
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Config:
        if not isinstance(data, dict):
            raise ModelscaleError(f"a {cls.type} config must be a mapping, got {type(data).__name__}")
        data = dict(data)
        kind = data.pop("type", cls.type)
        if kind != cls.type:
            raise ModelscaleError(f"config type {kind!r} given to {cls.type!r}")
        version = data.pop("version", cls.version)
        if not isinstance(version, int) or version > cls.version or version < 1:
            raise ModelscaleError(
                f"{cls.type} config version {version!r} is not supported (this modelscale reads 1..{cls.version}); "
                "upgrade modelscale or re-create the config"
            )
        if version < cls.version:
            data = cls.migrate(data, version)
        for alias, name in field_aliases(cls).items():
            if alias in data:
                if name in data:
                    raise ModelscaleError(f"{cls.type}: give {name} or its old name {alias}, not both")
                data[name] = data.pop(alias)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ModelscaleError(
                f"unknown field(s) {', '.join(unknown)} for {cls.type}; valid fields: {', '.join(sorted(names))}"
            )
        return cls(**data)

    @classmethod
    def migrate(cls, data: dict[str, Any], from_version: int) -> dict[str, Any]:
        """Upgrade the fields of an older config version. Override when `version` is bumped."""
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False)

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def fields_help(cls) -> list[tuple[str, Any, str, Any]]:
        """(name, type hint, help, default) for each field, for CLI generation and docs."""
        hints = _hints(cls)
        rows = []
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
            rows.append((f.name, hints[f.name], f.metadata.get("help", ""), default))
        return rows

    # --- internals ----------------------------------------------------------------------------------
    def _check_literals(self) -> None:
        for name, hint in _hints(type(self)).items():
            if get_origin(hint) is Literal:
                check_choice(name, getattr(self, name), get_args(hint))


@dataclass(kw_only=True)
class TechniqueConfig(Config):
    """Base of every technique config: adds the shared target selection and per-layer overrides."""

    target: Target = param(factory=Target, help="which layers the technique changes")

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check_overrides()

    def label(self) -> str:
        """A short name for tables: the type and the fields set away from their defaults."""
        changed = []
        for f in dataclasses.fields(self):
            if f.name == "target":
                continue
            default = f.default
            if f.default_factory is not dataclasses.MISSING:
                default = f.default_factory()
            value = getattr(self, f.name)
            if default is dataclasses.MISSING or value != default:
                shown = f"{value:.3g}" if isinstance(value, float) else str(value)
                changed.append(f"{f.name}={shown}")
        return f"{self.type}({', '.join(changed)})" if changed else self.type

    def for_layer(self, name: str, field_name: str) -> Any:
        """The value of `field_name` for layer `name`, honouring `target.overrides`."""
        return self.target.override_for(name).get(field_name, getattr(self, field_name))

    def _check_overrides(self) -> None:
        names = {f.name for f in dataclasses.fields(self)} - {"target"}
        for pattern, values in self.target.overrides.items():
            unknown = sorted(set(values) - names)
            if unknown:
                raise ModelscaleError(
                    f"override {pattern!r} sets unknown field(s) {', '.join(unknown)}; valid: {', '.join(sorted(names))}"
                )
            dataclasses.replace(self, target=Target(), **values)  # validates the overridden values


_HINTS_CACHE: dict[type, dict[str, Any]] = {}
_NUMBER = re.compile(r"^[-+]?(?:\d[\d_]*(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?$")


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS_CACHE:
        _HINTS_CACHE[cls] = typing.get_type_hints(cls)
    return _HINTS_CACHE[cls]


def _plain(value: Any) -> Any:
    """Turn a field value into JSON/YAML-safe data."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def _coerce(value: Any, hint: Any, name: str) -> Any:
    """Convert JSON-ish data to the field's declared type (lists to tuples, dicts to dataclasses)."""
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        args = get_args(hint)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, name)
            except (ModelscaleError, TypeError, ValueError):
                continue
        raise ModelscaleError(f"{name}: cannot read {value!r} as {hint}")
    if dataclasses.is_dataclass(hint) and isinstance(value, dict):
        known = {f.name for f in dataclasses.fields(hint)}
        unknown = sorted(set(value) - known)
        if unknown:
            raise ModelscaleError(
                f"{name}: unknown key(s) {', '.join(unknown)}; valid: {', '.join(sorted(known))}"
            )
        return hint(**value)
    if origin is tuple:
        if isinstance(value, str) or not isinstance(value, tuple | list):
            raise ModelscaleError(f"{name} must be a list, got {value!r}")
        args = get_args(hint)
        inner = args[0] if args else Any
        return tuple(_coerce(v, inner, name) for v in value)
    if origin is dict:
        if not isinstance(value, dict):
            raise ModelscaleError(f"{name} must be a mapping, got {value!r}")
        return dict(value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str) and _NUMBER.match(value.strip()):
        return float(value)  # "3e-4" quoted in a file, or read as text by YAML 1.1
    if hint in (int, float, str, bool) and not isinstance(value, hint):
        raise ModelscaleError(f"{name} must be {hint.__name__}, got {value!r}")
    if hint is int and isinstance(value, bool):
        raise ModelscaleError(f"{name} must be int, got {value!r}")
    return value
