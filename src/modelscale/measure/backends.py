"""One model (or two) on several execution paths, timed together: eager next to compiled, ORT, ...

A *backend* is a way to run the same model: eager PyTorch (always the reference), `torch.compile`
(`measure.compiled`), an ONNX Runtime session (`export.ort_latency`). Each non-eager backend comes as
a *maker*: `make(model, args, threads) -> (module or None, setup report)`; the setup report says what
it cost to prepare (compile time, export time) and, when the module is None, why it cannot run, in one
line. `measure_backends` prepares every backend of every model, checks each against its eager model
on the example inputs (largest absolute difference and cosine of the outputs), then times all of them
interleaved in one loop (`measure.latency_group`) and reports, paired with a 95% interval and the
unstable flag:

- per model and backend: eager time / backend time (> 1: the backend is faster);
- with two models (`compare`): base / other on each non-eager backend (the compressed model's speedup
  when both run compiled, or both in ORT).

Setup time (compiling, exporting) is reported apart and never enters a latency. A backend that cannot
run is a labelled row with its reason; `required` names backends whose failure is an error instead.

Example::

    from modelscale.measure.backends import measure_backends
    from modelscale.measure.compiled import compiled_candidate
    cmp = measure_backends({"model": model}, x, {"compiled": compiled_candidate()}, threads=1)
    print(cmp.text())
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from modelscale.core.errors import ModelscaleError
from modelscale.measure._common import (
    batch_size,
    inputs_for,
    logits_of,
    num_threads,
    prepared,
    resolve_device,
    resolve_dtype,
)
from modelscale.measure._report import Report
from modelscale.measure.latency import LatencyReport
from modelscale.measure.latency_group import measure_latency_group, pair_key
from modelscale.measure.paired_stats import TARGET_WIDTH, PairStats

Maker = Callable[[nn.Module, tuple[Any, ...], int], tuple[nn.Module | None, Any]]
EAGER = "eager"


@dataclass
class BackendRun(Report):
    """One model on one backend: how it was set up, its latency, and how close it is to eager."""

    model: str  # the model's label ("model", "base", "other")
    backend: str  # "eager", "compiled", "ort", ...
    status: str = "ok"  # "ok" | "failed"
    reason: str | None = None  # one line, when it failed
    setup: dict[str, Any] = field(default_factory=dict)  # the maker's report (compile / export time, ...)
    setup_text: str = ""
    latency: LatencyReport | None = None
    max_abs_diff: float | None = None  # vs the eager output on the example inputs
    cosine: float | None = None


@dataclass
class BackendRatio(Report):
    """A paired ratio a_i / b_i of two timed runs (> 1: b is faster)."""

    a: str  # "model:backend"
    b: str
    stats: PairStats


@dataclass
class BackendComparison(Report):
    """Every (model, backend) run and the paired ratios between them."""

    runs: list[BackendRun]
    ratios: list[BackendRatio]
    threads: int
    batch_size: int
    device: str
    notes: list[str] = field(default_factory=list)

    def run(self, model: str, backend: str) -> BackendRun | None:
        return next((r for r in self.runs if r.model == model and r.backend == backend), None)

    def ratio(self, a: str, b: str) -> BackendRatio | None:
        return next((r for r in self.ratios if r.a == a and r.b == b), None)

    def text(self) -> str:
        """The section `profile` / `compare` print: one line per run and per ratio."""
        lines = [
            f"Backends ({self.device}, batch {self.batch_size}, {self.threads} thread(s); ratio = "
            "time of the first / time of the second, > 1: the second is faster; paired, interleaved):"
        ]
        for run in self.runs:
            label = f"{run.model} {run.backend}"
            if run.status != "ok":
                lines.append(f"- {label}: NOT MEASURED — {run.setup_text or run.reason}")
                continue
            parts = [run.setup_text] if run.setup_text else []
            if run.latency is not None:
                parts.append(f"median {run.latency.median_ms:.3f} ms, p90 {run.latency.p90_ms:.3f} ms")
            if run.max_abs_diff is not None and run.backend != EAGER:
                parts.append(f"vs eager max |Δ| {run.max_abs_diff:.2e}, cosine {run.cosine:.6f}")
            lines.append(f"- {label}: " + "; ".join(parts))
        for r in self.ratios:
            text = (
                r.stats.describe()
                .replace("base's p90", f"{r.a}'s p90")
                .replace("other's p90", f"{r.b}'s p90")
            )
            lines.append(f"- {r.a} / {r.b}: {text}")
        lines.extend(f"- note: {n}" for n in self.notes)
        return "\n".join(lines)


def verdict_notes(ratios: list[BackendRatio]) -> list[str]:
    """A sentence for each backend that is measurably faster or slower than eager (stable figures only:
    an unstable one is never called a speedup); a faster ORT session is pointed to `modelscale export`."""
    notes = []
    for r in ratios:
        if not r.a.endswith(f":{EAGER}") or r.stats.verdict not in ("faster", "slower"):
            continue
        label, backend = r.b.split(":", 1)
        text = (
            f"{backend} is {r.stats.verdict} than eager for {label}: {r.stats.ratio:.2f}× "
            f"[95% CI {r.stats.ci_low:.2f}–{r.stats.ci_high:.2f}]"
        )
        if backend == "ort" and r.stats.verdict == "faster":
            text += " — deploy it through `modelscale export`"
        notes.append(text)
    return notes


def _parity(ref: torch.Tensor, module: nn.Module, args: tuple[Any, ...]) -> tuple[float, float]:
    with torch.inference_mode():
        out = logits_of(module(*args)).detach().float().cpu()
    if out.shape != ref.shape:
        raise ModelscaleError(f"output shape {tuple(out.shape)} differs from eager {tuple(ref.shape)}")
    diff = float((out - ref).abs().max()) if out.numel() else 0.0
    cos = float(F.cosine_similarity(out.flatten(), ref.flatten(), dim=0)) if out.numel() else 1.0
    return diff, cos


def measure_backends(
    models: dict[str, nn.Module],
    example_inputs: Any,
    makers: dict[str, Maker],
    *,
    inputs: dict[str, Any] | None = None,
    device: str = "cpu",
    dtype: torch.dtype | str | None = None,
    warmup: int = 5,
    repeats: int = 30,
    threads: int | None = None,
    time_budget_s: float = 2.0,
    target_width: float = TARGET_WIDTH,
    required: Collection[str] = (),
) -> BackendComparison:
    """Prepare every backend of every model, check parity with eager, time them all interleaved.

    `inputs` maps a model label to its own inputs (default `example_inputs`). A backend in `required`
    that cannot run raises a one-line ModelscaleError before any timing."""
    if not models:
        raise ModelscaleError("measure_backends needs at least one model")
    unknown = [name for name in makers if name == EAGER]
    if unknown:
        raise ModelscaleError("eager is always measured: name only the other backends")
    dev, dt = resolve_device(device), resolve_dtype(dtype)
    own = inputs or {}
    runs: list[BackendRun] = []
    timed: dict[str, nn.Module] = {}
    timed_inputs: dict[str, tuple[Any, ...]] = {}
    with contextlib.ExitStack() as stack:
        in_effect = stack.enter_context(num_threads(threads))
        ready = {label: stack.enter_context(prepared(m, dev, dt)) for label, m in models.items()}
        args = {label: inputs_for(ready[label], own.get(label, example_inputs), dev, dt) for label in models}
        refs = {}
        for label in models:
            with torch.inference_mode():
                refs[label] = logits_of(ready[label](*args[label])).detach().float().cpu()
            runs.append(BackendRun(model=label, backend=EAGER, max_abs_diff=0.0, cosine=1.0))
            timed[f"{label}:{EAGER}"], timed_inputs[f"{label}:{EAGER}"] = ready[label], args[label]
        for backend, make in makers.items():
            for label in models:
                run = BackendRun(model=label, backend=backend)
                try:
                    module, setup = make(ready[label], args[label], in_effect)
                except ModelscaleError as exc:
                    module, setup = None, None
                    run.reason = str(exc)
                if setup is not None:
                    run.setup = setup.to_dict() if hasattr(setup, "to_dict") else dict(setup)
                    run.setup_text = setup.describe() if hasattr(setup, "describe") else ""
                    run.reason = run.reason or getattr(setup, "reason", None)
                if module is not None:
                    try:
                        run.max_abs_diff, run.cosine = _parity(refs[label], module, args[label])
                    except Exception as exc:  # noqa: BLE001 - a backend that runs but cannot match eager
                        from modelscale.measure.compiled import compile_error

                        module, run.reason = None, f"its output cannot be checked ({compile_error(exc)})"
                if module is None:
                    run.status = "failed"
                    run.reason = run.reason or "the backend could not prepare this model"
                    if backend in required:
                        raise ModelscaleError(f"{backend} cannot run {label}: {run.reason}")
                else:
                    key = f"{label}:{backend}"
                    timed[key], timed_inputs[key] = module, args[label]
                runs.append(run)
        pairs = [
            (f"{r.model}:{EAGER}", f"{r.model}:{r.backend}")
            for r in runs
            if r.backend != EAGER and r.status == "ok"
        ]
        labels = list(models)
        if len(labels) == 2:
            for backend in makers:
                a, b = (f"{label}:{backend}" for label in labels)
                if a in timed and b in timed:
                    pairs.append((a, b))
        group = measure_latency_group(
            timed,
            None,
            pairs,
            inputs=timed_inputs,
            device=str(dev),
            dtype=dt,
            warmup=warmup,
            repeats=repeats,
            threads=in_effect,
            target_width=target_width,
            time_budget_s=time_budget_s,
        )
    for run in runs:
        run.latency = group.latency.get(f"{run.model}:{run.backend}")
    first = next(iter(timed_inputs.values()))
    result = BackendComparison(
        runs=runs,
        ratios=[BackendRatio(a=a, b=b, stats=group.pairs[pair_key(a, b)]) for a, b in pairs],
        threads=in_effect,
        batch_size=batch_size(first),
        device=str(dev),
    )
    result.notes.extend(verdict_notes(result.ratios))
    if group.load_before is not None:
        result.notes.append(
            f"load {group.load_before:.1f} before, {group.load_after:.1f} after timing; setup (compile, "
            "export) is timed apart and not in any latency"
        )
    return result
