"""Generate command-line options from config dataclasses: one parameter surface for Python and CLI.

Every field of a `Config` becomes `--field-name VALUE` (help text from the field's `param(..., "why")`).
Values are read as YAML scalars/lists, so `--amount 0.5`, `--scope global`, `--sizes [1,2]` and
`--grad-clip null` all work; a bool field also works as a bare flag (`--resume`). The nested `target` of technique configs gets `--types`, `--include`,
`--exclude` (comma-separated) and `--override 'glob:field=value'`.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from modelscale.core.config import Config, field_aliases
from modelscale.core.errors import ModelscaleError


def option_name(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def add_config_options(parser: argparse.ArgumentParser, config_cls: type[Config], *, title: str) -> None:
    group = parser.add_argument_group(title)
    for name, hint, help_text, default in config_cls.fields_help():
        if name == "target":
            group.add_argument("--types", help="module class names to target, comma-separated")
            group.add_argument("--include", help="name globs to include, comma-separated")
            group.add_argument("--exclude", help="name globs to exclude, comma-separated")
            group.add_argument(
                "--override",
                action="append",
                default=None,
                metavar="GLOB:FIELD=VALUE",
                help="per-layer value, e.g. 'features.0*:amount=0.2' (repeatable)",
            )
            continue
        if option_name(name) in parser._option_string_actions:
            continue  # a common option of the command (e.g. --seed) already sets this field
        shown = getattr(hint, "__name__", str(hint)).replace("typing.", "")
        aliases = [option_name(a) for a, n in field_aliases(config_cls).items() if n == name]
        flag = {"nargs": "?", "const": "true"} if hint is bool else {}  # `--resume` = `--resume true`
        group.add_argument(
            option_name(name),
            *aliases,
            dest=f"cfg__{name}",
            default=None,
            metavar=shown.upper()[:12],
            help=f"{help_text} (default: {default!r})",
            **flag,
        )


def _parse_value(text: str) -> Any:
    from modelscale.core.io import parse_scalar

    return parse_scalar(text)


def config_from_args(
    config_cls: type[Config], args: argparse.Namespace, base: dict[str, Any] | None = None
) -> Config:
    """Build `config_cls` from parsed options layered over `base` (e.g. a --config file)."""
    data: dict[str, Any] = dict(base or {})
    names = {f.name for f in dataclasses.fields(config_cls)}
    text_fields = _str_fields(config_cls)
    for name in names - {"target"}:
        raw = getattr(args, f"cfg__{name}", None)
        if raw is not None:
            data[name] = raw if name in text_fields else _parse_value(raw)
    if "target" in names:
        target = dict(data.get("target") or {})
        for key in ("types", "include", "exclude"):
            raw = getattr(args, key, None)
            if raw:
                target[key] = [part.strip() for part in raw.split(",") if part.strip()]
        for spec in getattr(args, "override", None) or []:
            glob, sep, assignment = spec.rpartition(":")
            field_name, eq, value = assignment.partition("=")
            if not sep or not eq or not glob:
                raise ModelscaleError(f"--override {spec!r} must look like 'GLOB:FIELD=VALUE'")
            target.setdefault("overrides", {}).setdefault(glob, {})[field_name.strip()] = _parse_value(value)
        if target:
            data["target"] = target
    return config_cls.from_dict(data)


def _str_fields(config_cls: type[Config]) -> set[str]:
    return {name for name, hint, _, _ in config_cls.fields_help() if hint is str}
