"""Export a PyTorch model to an ONNX file that ONNX Runtime (or any ONNX backend) can run.

`export_onnx` works on a deep copy of the model: it switches the copy to eval mode, moves it to the
CPU and bakes every parametrization (pruning masks become plain zeros, other parametrizations their
current value), so the exported graph holds ordinary weights. It uses the `torch.export`-based
exporter (`torch.onnx.export(..., dynamo=True)`); only if that fails does it fall back to the legacy
TorchScript exporter, and it records which one produced the file (and why it fell back) in the
model's metadata (`onnx_info(path)` reads it back). The batch dimension is symbolic when
`dynamic_batch` is set. The file is staged in a private folder, checked with `onnx.checker`, then
moved into place atomically; models over 2 GB keep their weights in `<name>.data` beside it.

onnx and onnxscript are optional dependencies (`pip install modelscale[onnx]`), imported lazily.

Example::

    from modelscale.export import export_onnx, onnx_info
    path = export_onnx(model, torch.rand(1, 1, 8, 8), "out/model.onnx")
    onnx_info(path)["exporter"]          # "dynamo" (or "torchscript" after a fallback)
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import io
import logging
import os
import re
import sys
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from modelscale.core.errors import ModelscaleError
from modelscale.core.io import atomic_path

EXPORTERS = ("auto", "dynamo", "torchscript")
TORCHSCRIPT_DEFAULT_OPSET = 17
META_PREFIX = "modelscale."


def require(*modules: str) -> None:
    """Import-check the optional ONNX packages; raise a one-line install hint when one is missing."""
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError:
            raise ModelscaleError(
                f"ONNX export/runtime needs the {name!r} package, which is not installed; "
                "pip install modelscale[onnx]"
            ) from None


def export_onnx(
    model: nn.Module,
    example_inputs: torch.Tensor | Sequence[torch.Tensor],
    path: str | os.PathLike[str],
    *,
    dynamic_batch: bool = True,
    opset: int | None = None,
    exporter: str = "auto",
) -> Path:
    """Export `model` (called as `model(*example_inputs)`) to the ONNX file `path`; return the path.

    `exporter`: "auto" (dynamo, falling back to TorchScript if dynamo fails), "dynamo" or
    "torchscript". `opset`: ONNX opset version (None: the exporter's default). The input model is
    never modified.
    """
    if exporter not in EXPORTERS:
        raise ModelscaleError(f"unknown exporter {exporter!r}; valid options: {', '.join(EXPORTERS)}")
    if opset is not None and (isinstance(opset, bool) or not isinstance(opset, int) or opset < 7):
        raise ModelscaleError(f"opset must be an integer >= 7 or None, got {opset!r}")
    if not isinstance(model, nn.Module):
        raise ModelscaleError(f"export_onnx needs an nn.Module, got {type(model).__name__}")
    require("onnx", *(("onnxscript",) if exporter != "torchscript" else ()))
    import onnx

    path = Path(path)
    if path.is_dir():
        raise ModelscaleError(f"{path} is a folder; pass a file path such as {path / 'model.onnx'}")
    inputs = _as_inputs(example_inputs)
    prepared = prepare_for_export(model)
    n_outputs = _count_outputs(prepared, inputs)
    input_names = _names("input", len(inputs))
    output_names = _names("output", n_outputs) if n_outputs else None

    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{path.name}.", dir=path.parent) as work:
        staged = Path(work) / path.name
        used, fallback_reason = _run_exporters(
            prepared, inputs, staged, exporter, opset, dynamic_batch, input_names, output_names
        )
        if fallback_reason:
            warnings.warn(
                f"the dynamo ONNX exporter failed ({fallback_reason}); used the TorchScript exporter, "
                "which records one traced path: check the ONNX outputs against PyTorch",
                stacklevel=2,
            )
        proto = onnx.load(str(staged), load_external_data=False)
        meta = {"exporter": used, "dynamic_batch": str(bool(dynamic_batch)).lower()}
        if fallback_reason:
            meta["dynamo_error"] = fallback_reason
        _set_metadata(proto, meta)
        onnx.save_model(proto, str(staged))
        try:
            onnx.checker.check_model(str(staged), full_check=True)
        except Exception as exc:  # noqa: BLE001 - reported as one line
            raise ModelscaleError(
                f"the exported ONNX model failed onnx.checker ({used} exporter): {first_line(exc)}; "
                "try another opset or exporter"
            ) from None
        for extra in Path(work).iterdir():  # external weight files (models over 2 GB)
            if extra != staged:
                os.replace(extra, path.parent / extra.name)
        with atomic_path(path) as tmp:
            os.replace(staged, tmp)
    return path


def prepare_for_export(model: nn.Module) -> nn.Module:
    """A CPU, eval-mode deep copy of `model` with all parametrizations baked into plain weights."""
    from torch.nn.utils import parametrize

    from modelscale.techniques.prune.masks import bake_masks

    prepared = copy.deepcopy(model).cpu().eval()
    # A deep copy shares the dynamically created `Parametrized<Module>` class with the original, and
    # removing a parametrization deletes its property from that class: give each copy its own class
    # first, or baking the copy would break the caller's model.
    for module in prepared.modules():
        if parametrize.is_parametrized(module):
            cls = type(module)
            body = {k: v for k, v in vars(cls).items() if k not in ("__dict__", "__weakref__")}
            module.__class__ = type(cls.__name__, cls.__bases__, body)
    bake_masks(prepared)
    for module in prepared.modules():
        if parametrize.is_parametrized(module):
            for name in list(module.parametrizations):
                parametrize.remove_parametrizations(module, name, leave_parametrized=True)
    return prepared


def onnx_info(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Inputs, outputs, opset, producer and the modelscale metadata (exporter used, ...) of an ONNX file."""
    require("onnx")
    import onnx

    path = Path(path)
    if not path.is_file():
        raise ModelscaleError(f"ONNX file not found: {path}; check the path")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf raises several types
        raise ModelscaleError(
            f"{path} is not a readable ONNX model ({first_line(exc)}); re-export it"
        ) from None

    def shape(value: Any) -> list[int | str]:
        dims = value.type.tensor_type.shape.dim
        return [d.dim_param or d.dim_value for d in dims]

    meta = {p.key[len(META_PREFIX) :]: p.value for p in proto.metadata_props if p.key.startswith(META_PREFIX)}
    return {
        "path": str(path),
        "bytes": path.stat().st_size,
        "producer": f"{proto.producer_name} {proto.producer_version}".strip(),
        "opset": max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=None),
        "inputs": {v.name: shape(v) for v in proto.graph.input},
        "outputs": {v.name: shape(v) for v in proto.graph.output},
        "nodes": len(proto.graph.node),
        **meta,
    }


def set_onnx_metadata(path: str | os.PathLike[str], values: dict[str, str]) -> None:
    """Add `modelscale.<key>` metadata entries to an ONNX file in place (weights untouched)."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    _set_metadata(proto, values)
    with atomic_path(path) as tmp:
        onnx.save_model(proto, str(tmp))


# ----------------------------------------------------------------------------------------- internals


def _as_inputs(example_inputs: Any) -> tuple[torch.Tensor, ...]:
    inputs = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else example_inputs
    if (
        not isinstance(inputs, tuple | list)
        or not inputs
        or not all(isinstance(t, torch.Tensor) for t in inputs)
    ):
        raise ModelscaleError(
            "example_inputs must be a tensor or a tuple of tensors (the positional arguments of forward)"
        )
    return tuple(t.detach().cpu() for t in inputs)


def _names(stem: str, n: int) -> list[str]:
    return [stem] if n == 1 else [f"{stem}_{i}" for i in range(n)]


def _count_outputs(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> int:
    """Run one forward pass (a clear error if the model cannot run the inputs); count tensor outputs."""
    try:
        with torch.inference_mode():
            out = model(*inputs)
    except Exception as exc:  # noqa: BLE001 - any failure here is the user's model/input mismatch
        raise ModelscaleError(
            f"the model cannot run the example inputs ({type(exc).__name__}: {first_line(exc)}); "
            "pass inputs of the shape and dtype its forward expects"
        ) from None
    if isinstance(out, torch.Tensor):
        return 1
    if isinstance(out, tuple | list) and all(isinstance(t, torch.Tensor) for t in out):
        return len(out)
    return 0  # other structures: let the exporter name the outputs


def _run_exporters(
    model: nn.Module,
    inputs: tuple[torch.Tensor, ...],
    staged: Path,
    exporter: str,
    opset: int | None,
    dynamic_batch: bool,
    input_names: list[str],
    output_names: list[str] | None,
) -> tuple[str, str]:
    """Write `staged` with the chosen exporter(s); return (exporter used, dynamo failure or "")."""
    dynamo_error = ""
    if exporter in ("auto", "dynamo"):
        try:
            _export_dynamo(model, inputs, staged, opset, dynamic_batch, input_names, output_names)
            return "dynamo", ""
        except Exception as exc:  # noqa: BLE001 - summarised below, then maybe fall back
            dynamo_error = describe_export_error(exc)
            if exporter == "dynamo":
                raise ModelscaleError(f"ONNX export (dynamo) failed: {dynamo_error}") from None
    try:
        _export_torchscript(model, inputs, staged, opset, dynamic_batch, input_names, output_names)
    except Exception as exc:  # noqa: BLE001
        ts_error = describe_export_error(exc)
        if dynamo_error:
            raise ModelscaleError(
                f"ONNX export failed: dynamo: {dynamo_error} | torchscript fallback: {ts_error}"
            ) from None
        raise ModelscaleError(f"ONNX export (torchscript) failed: {ts_error}") from None
    return "torchscript", dynamo_error


def _export_dynamo(model, inputs, staged, opset, dynamic_batch, input_names, output_names) -> None:
    dynamic_shapes = None
    if dynamic_batch:
        batch = torch.export.Dim("batch")
        dynamic_shapes = tuple({0: batch} if t.dim() > 0 else None for t in inputs)
    with _quiet():
        program = torch.onnx.export(
            model,
            inputs,
            dynamo=True,
            verbose=False,
            opset_version=opset,
            dynamic_shapes=dynamic_shapes,
            input_names=input_names,
            output_names=output_names,
        )
        program.save(str(staged))


def _export_torchscript(model, inputs, staged, opset, dynamic_batch, input_names, output_names) -> None:
    dynamic_axes = None
    if dynamic_batch:
        dynamic_axes = {name: {0: "batch"} for name in input_names + (output_names or [])}
    with _quiet(), _native_output_silenced():  # it logs the TorchScript graph on failure
        torch.onnx.export(
            model,
            inputs,
            str(staged),
            dynamo=False,
            opset_version=opset or TORCHSCRIPT_DEFAULT_OPSET,
            input_names=input_names,
            output_names=output_names,
            dynamic_axes=dynamic_axes,
        )


@contextlib.contextmanager
def _quiet():
    """Silence the exporters' progress prints, log warnings and deprecation warnings (errors propagate)."""
    sink = io.StringIO()
    loggers = [logging.getLogger(name) for name in ("onnxscript", "onnx_ir", "torch.onnx", "torch.export")]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


@contextlib.contextmanager
def _native_output_silenced():
    """Point file descriptors 1 and 2 at /dev/null for the block (C++ code writes there directly)."""
    try:
        saved = [os.dup(1), os.dup(2)]
    except OSError:
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, devnull):
            os.close(fd)


_OP_PATTERNS = (
    re.compile(r"aten::[A-Za-z0-9_]+(?:\.[A-Za-z0-9_]+)?"),
    re.compile(r"\baten\.[A-Za-z0-9_]+(?:\.[A-Za-z0-9_]+)?"),
    re.compile(
        r"\b(?:prims|torchvision|quantized_decomposed|torchao)[.:]{1,2}[A-Za-z0-9_]+(?:\.[A-Za-z0-9_]+)?"
    ),
)


def describe_export_error(exc: BaseException) -> str:
    """One line for an exporter failure: the op it names (if any) and the innermost error's first line."""
    texts = []
    seen: BaseException | None = exc
    while seen is not None and len(texts) < 10:
        texts.append(f"{type(seen).__name__}: {seen}")
        seen = seen.__cause__ or seen.__context__
    op = next((m.group(0) for pattern in _OP_PATTERNS for m in [pattern.search("\n".join(texts))] if m), None)
    inner = _innermost(exc)
    summary = f"{type(inner).__name__}: {first_line(inner)}"
    if inner is not exc:
        summary = f"{type(exc).__name__} <- {summary}"
    if op:
        summary = f"op {op} failed to export; {summary}"
    return _clip(summary, 400)


def _innermost(exc: BaseException) -> BaseException:
    """The innermost exception of a cause/context chain (bounded)."""
    for _ in range(10):
        nxt = exc.__cause__ or exc.__context__
        if nxt is None:
            break
        exc = nxt
    return exc


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def first_line(exc: BaseException) -> str:
    for line in _ANSI.sub("", str(exc)).splitlines():
        if line.strip():
            return _clip(line.strip(), 240)
    return type(exc).__name__


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."


def _set_metadata(proto: Any, values: dict[str, str]) -> None:
    keys = {META_PREFIX + k: str(v).replace("\n", " ") for k, v in values.items()}
    kept = [p for p in proto.metadata_props if p.key not in keys]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    for key, value in keys.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
