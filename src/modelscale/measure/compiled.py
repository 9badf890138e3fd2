"""`torch.compile` as a measured option: compile once, time the first call apart, fall back honestly.

`compile_model(model, example_args)` wraps the model with `torch.compile` and makes the first call
(under the same grad mode and intra-op thread count the timing will use: Inductor's CPU kernels are
generated for the thread count in effect when they compile). That first call's wall time is the
**compile time** — tracing, graph capture, code generation and one run — reported apart and never
mixed into the latency, with whether Inductor's on-disk graph cache was hit (a hit compiles in a
fraction of the time), and the graphs and graph breaks Dynamo counted. When compiling fails (an
operation Dynamo cannot trace, no working C++ compiler for Inductor, ...) the report says so in one
line and the eager model is returned, labelled `fallback: eager` — never a traceback.

`compiled_candidate(mode)` plugs this into `measure.backends` (eager vs compiled, paired and
interleaved); `GuardedCompile` is the trainer's hook (`TrainConfig.compile`): the compiled module
with its first call timed and a fallback to the eager module if compiling the forward fails.

Example::

    from modelscale.measure.compiled import compile_model
    fast, report = compile_model(model, (torch.randn(32, 1, 8, 8),), threads=1)
    print(report.status, report.compile_s, report.cache, report.reason)
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from modelscale.core.errors import ModelscaleError
from modelscale.measure._common import as_tuple, num_threads
from modelscale.measure._report import Report

MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
BACKEND = "inductor"


@dataclass
class CompileReport(Report):
    """What compiling one model did: status, first-call wall time, cache, graphs; the reason if it failed."""

    status: str  # "compiled" | "failed"
    mode: str
    backend: str = BACKEND
    compile_s: float | None = None  # wall time of the first call (compile + one run); None if it failed
    first_backward_s: float | None = None  # training: the first backward (Inductor compiles it there)
    cache: str = "unknown"  # Inductor's FX graph cache: "hit" | "miss" | "mixed" | "unknown"
    graphs: int | None = None  # graphs Dynamo compiled on the first call
    graph_breaks: int | None = None
    threads: int | None = None
    reason: str | None = None  # one line, when status is "failed"
    fallback: str | None = None  # "eager" when the eager model stands in for the compiled one
    torch_version: str = ""

    def describe(self) -> str:
        if self.status == "pending":
            return "torch.compile requested but the model was never called"
        if self.status != "compiled":
            return f"torch.compile FAILED ({self.reason}); fallback: {self.fallback or 'none'}"
        text = f"compiled ({self.backend}, mode {self.mode}) in {self.compile_s:.2f} s (first call"
        text += f", graph cache {self.cache})" if self.cache != "unknown" else ")"
        if self.first_backward_s is not None:
            text += f", first backward {self.first_backward_s:.2f} s"
        if self.graph_breaks:
            text += f", {self.graph_breaks} graph break(s)"
        return text


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ModelscaleError(f"unknown compile mode {mode!r}; valid: {', '.join(MODES)}")
    return mode


def compile_error(exc: BaseException) -> str:
    """One line for a compile failure: the first non-empty line of the innermost message."""
    seen = exc
    while seen.__cause__ is not None and not str(seen).strip():
        seen = seen.__cause__
    for line in str(seen).splitlines():
        line = line.strip().removeprefix(f"backend={BACKEND!r} raised:").strip()
        if line and not line.startswith(("Set TORCHDYNAMO_VERBOSE", "from user code", "File ")):
            return f"{type(seen).__name__}: {line}"[:300]
    return type(seen).__name__


def _counters() -> dict[str, int]:
    """Dynamo/Inductor counters of this process (cumulative; read before and after a call)."""
    try:
        from torch._dynamo.utils import counters
    except ImportError:  # pragma: no cover - every torch with torch.compile has them
        return {}
    return {
        "hit": int(counters["inductor"].get("fxgraph_cache_hit", 0)),
        "miss": int(counters["inductor"].get("fxgraph_cache_miss", 0)),
        "graphs": int(counters["stats"].get("unique_graphs", 0)),
        "breaks": int(sum(counters["graph_break"].values())),
    }


def _cache_state(before: dict[str, int], after: dict[str, int]) -> str:
    hit = after.get("hit", 0) - before.get("hit", 0)
    miss = after.get("miss", 0) - before.get("miss", 0)
    if hit and miss:
        return "mixed"
    return "hit" if hit else "miss" if miss else "unknown"


def _wrap(model: nn.Module, mode: str) -> Any:
    try:
        return torch.compile(model, mode=None if mode == "default" else mode, backend=BACKEND)
    except Exception as exc:  # noqa: BLE001 - torch.compile itself refuses (e.g. unsupported Python)
        return exc


def compile_model(
    model: nn.Module,
    example_args: Any,
    *,
    mode: str = "default",
    threads: int | None = None,
    inference: bool = True,
) -> tuple[nn.Module, CompileReport]:
    """(compiled module, report) after one timed first call; (model, failed report) if compiling fails.

    The first call runs under `torch.inference_mode()` when `inference` (as latency timing does) and
    with `threads` intra-op threads, so the timed calls that follow reuse the same compiled graph."""
    check_mode(mode)
    args = as_tuple(example_args)
    report = CompileReport(status="failed", mode=mode, torch_version=torch.__version__)
    compiled = _wrap(model, mode)
    if isinstance(compiled, BaseException):
        report.reason, report.fallback = compile_error(compiled), "eager"
        return model, report
    grad = torch.inference_mode() if inference else contextlib.nullcontext()
    with num_threads(threads) as in_effect, grad:
        report.threads = in_effect
        before = _counters()
        t0 = time.perf_counter()
        try:
            compiled(*args)
        except Exception as exc:  # noqa: BLE001 - Dynamo/Inductor raise many types; reported as one line
            _reset()
            model(*args)  # if the eager model fails too, the inputs are wrong, not the compiler: raise that
            report.reason, report.fallback = compile_error(exc), "eager"
            return model, report
        report.compile_s = time.perf_counter() - t0
        after = _counters()
    report.cache = _cache_state(before, after)
    if after:
        report.graphs = after["graphs"] - before["graphs"]
        report.graph_breaks = after["breaks"] - before["breaks"]
    if report.graphs == 0:  # Dynamo ran the frame eagerly: skipped code, or its recompile limit was hit
        report.reason, report.fallback = "Dynamo compiled no graph (the model ran eagerly)", "eager"
        report.compile_s = None
        return model, report
    report.status = "compiled"
    return compiled, report


def _reset() -> None:
    with contextlib.suppress(Exception):
        torch._dynamo.reset()


def compiled_candidate(mode: str = "default") -> Callable[..., tuple[nn.Module | None, CompileReport]]:
    """A `measure.backends` maker: (compiled module, report), or (None, failed report) on failure."""
    check_mode(mode)

    def make(model: nn.Module, args: tuple[Any, ...], threads: int | None) -> tuple[nn.Module | None, Any]:
        module, report = compile_model(model, args, mode=mode, threads=threads)
        return (module if report.status == "compiled" else None), report

    return make


class GuardedCompile:
    """The trainer's compiled forward: `torch.compile(module)`, first call timed, eager if it fails.

    Attribute access (`train()`, `no_sync()`, `parameters()`, ...) goes to the module itself, so the
    training loop uses this where it used the module. A failure to compile the forward switches to
    the eager module for the rest of the run and is recorded (`report.fallback == "eager"`); a failure
    compiling the backward (Inductor compiles it at the first backward) raises a one-line
    ModelscaleError from `backward_guard()`."""

    def __init__(self, module: nn.Module, mode: str = "default") -> None:
        self.module = module
        self.report = CompileReport(status="pending", mode=check_mode(mode), torch_version=torch.__version__)
        compiled = _wrap(module, mode)
        if isinstance(compiled, BaseException):
            self.report.status, self.report.fallback = "failed", "eager"
            self.report.reason = compile_error(compiled)
            compiled = None
        self._compiled = compiled
        self._backward_timed = False
        self._start: dict[str, int] | None = None

    @property
    def active(self) -> bool:
        return self._compiled is not None

    def __getattr__(self, name: str) -> Any:
        if name in ("module", "report", "_compiled", "_backward_timed", "_start"):
            raise AttributeError(name)  # not set yet (copy, unpickling): no recursion through __getattr__
        return getattr(self.module, name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self._compiled is None:
            return self.module(*args, **kwargs)
        if self.report.status != "pending":
            return self._compiled(*args, **kwargs)
        before = self._start = _counters()
        t0 = time.perf_counter()
        try:
            out = self._compiled(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - reported as one line, then eager
            _reset()
            out = self.module(*args, **kwargs)  # the eager error, if there is one, is the user's
            self._compiled = None
            self.report.status, self.report.fallback = "failed", "eager"
            self.report.reason = compile_error(exc)
            return out
        self.report.compile_s = time.perf_counter() - t0
        self.report.threads = torch.get_num_threads()
        after = _counters()
        self.report.status = "compiled"
        self.report.cache = _cache_state(before, after)
        if after:
            self.report.graphs = after["graphs"] - before["graphs"]
            self.report.graph_breaks = after["breaks"] - before["breaks"]
        return out

    def final_report(self) -> CompileReport:
        """The report at the end of a run: `graphs` counts every graph compiled since the first call
        (a smaller last batch or eval mode recompiles)."""
        if self.report.status == "compiled" and self._start is not None:
            now = _counters()
            if now:
                self.report.graphs = now["graphs"] - self._start["graphs"]
                self.report.graph_breaks = now["breaks"] - self._start["breaks"]
        return self.report

    @contextlib.contextmanager
    def backward_guard(self) -> Iterator[None]:
        """Around `loss.backward()`: a compile failure there becomes one line (train without compile)."""
        first = self._compiled is not None and not self._backward_timed
        t0 = time.perf_counter()
        try:
            yield
        except Exception as exc:
            if self._compiled is None or not _from_compiler(exc):
                raise
            raise ModelscaleError(
                f"torch.compile failed compiling the backward pass ({compile_error(exc)}); "
                "train without --compile"
            ) from None
        if first:
            self._backward_timed = True
            self.report.first_backward_s = time.perf_counter() - t0


def _from_compiler(exc: BaseException) -> bool:
    return any(type(e).__module__.startswith(("torch._dynamo", "torch._inductor")) for e in _chain(exc))


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: BaseException | None = exc
    while seen is not None:
        yield seen
        seen = seen.__cause__ or seen.__context__
