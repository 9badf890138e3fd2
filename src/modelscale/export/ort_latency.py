"""ONNX Runtime as a measured backend of `profile` / `compare` (`--backend ort|both`).

`ort_candidate()` is a `measure.backends` maker: it exports the model to a temporary ONNX
file (`export_onnx`: masks baked, dynamic batch), opens an `InferenceSession` with the same intra-op
thread count as the PyTorch side (`--threads`) and returns it wrapped as `OrtModule`, an `nn.Module`
without parameters whose forward is `session.run` on the tensors' numpy views (zero-copy for
contiguous float32 on the CPU), so the same paired, interleaved loop times it next to eager PyTorch.
Export and session-creation times are reported apart (`OrtSetup`), never in a latency. Where ORT
cannot run the model — the export fails, an operator is unsupported, the inputs are not on the CPU in
float32 — the maker returns no module and the reason in one line.

Example::

    from modelscale.export.ort_latency import ort_candidate
    from modelscale.measure.backends import measure_backends
    cmp = measure_backends({"model": model}, x, {"ort": ort_candidate()}, threads=1)
    print(cmp.ratio("model:eager", "model:ort").stats.describe())
"""

from __future__ import annotations

import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from modelscale.core.errors import ModelscaleError
from modelscale.measure._report import Report


@dataclass
class OrtSetup(Report):
    """What preparing the ONNX Runtime session cost, or why it could not be prepared."""

    status: str = "failed"  # "ready" | "failed"
    reason: str | None = None
    exporter: str | None = None  # "dynamo" or "torchscript" (after a fallback)
    export_s: float | None = None  # torch -> ONNX file
    session_s: float | None = None  # InferenceSession creation (graph optimizations)
    onnx_bytes: int | None = None
    threads: int | None = None  # ORT intra-op threads (the PyTorch side's count)
    provider: str | None = None
    spinning: bool = False  # whether idle ORT workers busy-wait (off: fair to the interleaved side)
    onnxruntime_version: str | None = None
    warnings: list[str] = field(default_factory=list)

    def describe(self) -> str:
        if self.status != "ready":
            return f"ONNX Runtime not available ({self.reason})"
        return (
            f"ONNX ({self.exporter}) exported in {self.export_s:.2f} s, session created in "
            f"{self.session_s:.2f} s ({self.provider}, {self.threads} thread(s))"
        )


class OrtModule(nn.Module):
    """An ONNX Runtime session called like the model: torch tensors in, torch tensors out."""

    def __init__(self, runner: Any) -> None:
        super().__init__()
        self.runner = runner
        self._names = list(runner.input_names)
        self._types = [i.type for i in runner.session.get_inputs()]

    def forward(self, *inputs: Any) -> Any:
        from modelscale.export.ort_runner import _ORT_DTYPES, to_numpy

        if len(inputs) != len(self._names):
            raise ModelscaleError(f"the ONNX model takes {len(self._names)} input(s), got {len(inputs)}")
        feed = {
            name: to_numpy(x, name, _ORT_DTYPES.get(kind))
            for name, x, kind in zip(self._names, inputs, self._types, strict=True)
        }
        outs = [torch.from_numpy(np.asarray(o)) for o in self.runner.run_feed(feed)]
        return outs[0] if len(outs) == 1 else tuple(outs)


def _check_inputs(args: tuple[Any, ...]) -> str | None:
    for t in args:
        if isinstance(t, torch.Tensor):
            if t.device.type != "cpu":
                return f"inputs on {t.device}: the ort backend measures ONNX Runtime's CPU provider only"
            if t.is_floating_point() and t.dtype != torch.float32:
                return f"inputs in {t.dtype}: the ort backend measures float32 models (drop --dtype)"
    return None


def prepare_ort(
    model: nn.Module, args: tuple[Any, ...], *, threads: int | None = None, spin: bool = False
) -> tuple[OrtModule | None, OrtSetup]:
    """(OrtModule, setup) for `model` on `args`; (None, setup with the reason) where ORT cannot run it."""
    setup = OrtSetup(threads=threads or torch.get_num_threads(), spinning=spin)
    reason = _check_inputs(args)
    if reason:
        setup.reason = reason
        return None, setup
    try:
        from modelscale.export.onnx_export import export_onnx, onnx_info, require
        from modelscale.export.ort_runner import OrtRunner

        require("onnx", "onnxruntime")
        import onnxruntime

        setup.onnxruntime_version = onnxruntime.__version__
        with tempfile.TemporaryDirectory(prefix="modelscale-ort-") as work:
            path = Path(work) / "model.onnx"
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                t0 = time.perf_counter()
                export_onnx(model, args, path)
                setup.export_s = time.perf_counter() - t0
            setup.warnings = [str(w.message).splitlines()[0][:300] for w in caught]
            setup.exporter = onnx_info(path).get("exporter")
            setup.onnx_bytes = sum(p.stat().st_size for p in Path(work).iterdir())
            t0 = time.perf_counter()
            runner = OrtRunner(path, threads=setup.threads, spin=spin)  # loads the file into memory
            setup.session_s = time.perf_counter() - t0
        module = OrtModule(runner)
        module(*args)  # an operator ORT cannot run fails here, not in the timing loop
    except ModelscaleError as exc:
        setup.reason = str(exc)
        return None, setup
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own pybind types
        from modelscale.export.onnx_export import first_line

        setup.reason = f"ONNX Runtime cannot run the model: {type(exc).__name__}: {first_line(exc)}"
        return None, setup
    setup.status = "ready"
    setup.provider = runner.providers[0] if runner.providers else None
    return module, setup


def ort_candidate(*, spin: bool = False) -> Callable[..., tuple[nn.Module | None, OrtSetup]]:
    """A `measure.backends` maker: the ORT session with the PyTorch side's thread count."""

    def make(model: nn.Module, args: tuple[Any, ...], threads: int | None) -> tuple[nn.Module | None, Any]:
        return prepare_ort(model, args, threads=threads, spin=spin)

    return make
