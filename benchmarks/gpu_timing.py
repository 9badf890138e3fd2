"""Timing core of benchmarks/gpu.py: the run context, interleaved CUDA-event timing, rows and their table.

`measure` times a baseline and its variants interleaved (warm-up first, a few calls per sample so one
sample lasts `min_sample_ms`, the order flipped every round) and adds one row per variant with medians,
p90s, the measured speedup and the theoretical one. Used only by gpu.py (run from the repository root).
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import itertools
import math
import sys
import time
from collections.abc import Callable

import torch

TIMES = ("baseline_ms", "baseline_p90_ms", "variant_ms", "variant_p90_ms")
ROW_KEYS = ("case", "name", "shape", "baseline", "variant", *TIMES, "speedup", "theory", "notes", "error")
T0 = time.monotonic()


def log_line(msg: str) -> None:
    print(f"[{time.monotonic() - T0:6.1f}s] {msg}", flush=True)


def error_text(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"[:400]


@dataclasses.dataclass
class Ctx:
    device: torch.device
    quick: bool
    warmup: int
    repeats: int
    deadline: float
    shapes: dict
    compile_backend: str = "inductor"
    rows: list = dataclasses.field(default_factory=list)
    min_sample_ms: float = 1.0  # calls per sample are chosen so that one sample lasts at least this long

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def randn(self, *shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return torch.randn(*shape, device=self.device, dtype=dtype)

    def add(self, case: int, name: str, shape: str, baseline: str, variant: str, **kw) -> None:
        row = dict.fromkeys(ROW_KEYS) | dict(case=case, name=name, shape=shape, baseline=baseline, notes="")
        self.rows.append(row | dict(variant=variant, **kw))

    @contextlib.contextmanager
    def guard(self, case: int, name: str, shape: str):
        """Record any exception in the block as an error row; the run goes on."""
        try:
            yield
        except Exception as exc:  # noqa: BLE001 - a failing case must not stop the others
            self.add(case, name, shape, "-", "-", error=error_text(exc))
            log_line(f"  {name} {shape}: ERROR {error_text(exc)}")
        finally:
            gc.collect()
            if self.cuda:
                torch.cuda.empty_cache()


def set_tf32(on: bool) -> None:
    torch.backends.cuda.matmul.allow_tf32 = on
    torch.backends.cudnn.allow_tf32 = on


def relerr(out, ref) -> float | None:
    if not (torch.is_tensor(out) and torch.is_tensor(ref)) or out.shape != ref.shape:
        return None
    ref = ref.double()
    return float((out.double() - ref).norm() / ref.norm().clamp_min(1e-30))


def rotate(fn: Callable, arg_sets: list[tuple]) -> Callable[[], object]:
    """A zero-argument call that cycles through `arg_sets` (defeats L2 reuse across calls)."""
    it = itertools.cycle(arg_sets)
    return lambda: fn(*next(it))


def _calls_per_sample(ctx: Ctx, fn: Callable) -> int:
    if ctx.min_sample_ms <= 0:
        return 1
    ctx.sync()
    t = time.perf_counter()
    fn()
    ctx.sync()
    ms = (time.perf_counter() - t) * 1e3
    return max(1, min(200, math.ceil(ctx.min_sample_ms / max(ms, 1e-3))))


def time_interleaved(ctx: Ctx, fns: dict[str, Callable]) -> dict[str, list[float]]:
    """Milliseconds per call, `ctx.repeats` samples per function, functions alternating each round."""
    inner = {k: _calls_per_sample(ctx, f) for k, f in fns.items()}
    samples: dict[str, list[float]] = {k: [] for k in fns}
    names = list(fns)
    for i in range(ctx.repeats):
        order = names if i % 2 == 0 else names[::-1]
        if ctx.cuda:
            events = []
            for k in order:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                for _ in range(inner[k]):
                    fns[k]()
                end.record()
                events.append((k, start, end))
            torch.cuda.synchronize(ctx.device)
            for k, start, end in events:
                samples[k].append(start.elapsed_time(end) / inner[k])
        else:
            for k in order:
                t = time.perf_counter()
                for _ in range(inner[k]):
                    fns[k]()
                samples[k].append((time.perf_counter() - t) * 1e3 / inner[k])
    return samples


def _stats(xs: list[float]) -> tuple[float, float]:
    """Median and 90th percentile (nearest rank)."""
    s, n = sorted(xs), len(xs)
    median = s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2])
    return median, s[max(0, math.ceil(0.9 * n) - 1)]


def measure(
    ctx: Ctx,
    where: tuple[int, str, str],
    fns: dict[str, Callable],
    *,
    baseline: str,
    theory: float | dict | None = None,
    flops: float | None = None,
    ops_unit: str = "TFLOP/s",
    nbytes: dict | None = None,
    items: tuple[int, str] | None = None,
    notes: dict | None = None,
    failed: dict | None = None,
    compare_outputs: bool = True,
) -> None:
    """Warm up and check each function, time the ones that run interleaved, add a row per variant.

    `where` is (case, name, shape); `theory` a ratio or {variant: ratio}; `flops` per call (all sides),
    `nbytes` {label: bytes per call}, `items` (count per call, unit) give rates in the notes; `failed`
    {variant: error} adds rows for variants that could not even be built.
    """
    case, name, shape = where
    notes, failed, nbytes = dict(notes or {}), dict(failed or {}), nbytes or {}
    variants = [k for k in fns if k != baseline] + [k for k in failed if k not in fns]
    if time.monotonic() > ctx.deadline:
        for v in variants:
            ctx.add(case, name, shape, baseline, v, error="skipped: time budget spent")
        return
    ok, outs = {}, {}
    for label, fn in fns.items():
        try:
            for _ in range(max(1, ctx.warmup)):
                out = fn()
            ctx.sync()
            ok[label] = fn
            if compare_outputs and torch.is_tensor(out) and out.is_floating_point():
                outs[label] = out
        except Exception as exc:  # noqa: BLE001
            failed[label] = error_text(exc)
    if baseline not in ok:
        for v in variants:
            ctx.add(case, name, shape, baseline, v, error=f"baseline failed: {failed.get(baseline)}")
        return
    samples = time_interleaved(ctx, ok)
    stats = {k: _stats(v) for k, v in samples.items()}
    b_med, b_p90 = stats[baseline]

    def rates(label: str) -> dict[str, float]:
        sec = stats[label][0] / 1e3
        out = {ops_unit: flops / sec / 1e12} if flops else {}
        if label in nbytes:
            out["GB/s"] = nbytes[label] / sec / 1e9
        if items:
            out[f"{items[1]}/s"] = items[0] / sec
        return out

    for v in variants:
        if v in failed:
            ctx.add(case, name, shape, baseline, v, baseline_ms=b_med, baseline_p90_ms=b_p90, error=failed[v])
            log_line(f"  {name} {shape} {v}: ERROR {failed[v]}")
            continue
        med, p90 = stats[v]
        th = theory.get(v) if isinstance(theory, dict) else theory
        rb, rv = rates(baseline), rates(v)
        text = [f"{unit} {_num(rb[unit])} -> {_num(rv[unit])}" for unit in rv if unit in rb]
        err = relerr(outs.get(v), outs.get(baseline))
        if err is not None:
            text.append(f"relerr vs {baseline} {err:.1e}")
        if notes.get(v):
            text.append(notes[v])
        times = dict(baseline_ms=b_med, baseline_p90_ms=b_p90, variant_ms=med, variant_p90_ms=p90)
        ctx.add(
            case, name, shape, baseline, v, **times, speedup=b_med / med, theory=th, notes="; ".join(text)
        )
        log_line(f"  {name} {shape} {baseline} {b_med:.3f} ms -> {v} {med:.3f} ms = {b_med / med:.2f}x")


def _num(v: float) -> str:
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}"


def count_flops(model: Callable, *args) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        model(*args)
    return int(counter.get_total_flops())


def fmt_value(v, spec: str = ".3f") -> str:
    return "-" if v is None else format(v, spec)


def print_table(rows: list[dict], title: str) -> None:
    """One line per row, columns padded to their widest cell (stays short enough for a log tail)."""
    header = "case|name|shape|baseline -> variant|base ms (p90)|var ms (p90)|speedup|theory|notes / error"
    body = [header.split("|")]
    for r in rows:
        base, var = (
            f"{fmt_value(r[k + '_ms'])} ({fmt_value(r[k + '_p90_ms'])})" for k in ("baseline", "variant")
        )
        speed, theory = fmt_value(r["speedup"], ".2f") + "x", fmt_value(r["theory"], ".2f")
        note = ("ERROR " + r["error"]) if r["error"] else r["notes"]
        body.append([str(r["case"]), r["name"], r["shape"], f"{r['baseline']} -> {r['variant']}", base, var])
        body[-1] += [speed, theory, note]
    widths = [max(len(line[i]) for line in body) for i in range(len(body[0]) - 1)]
    print(f"\n== {title} ==")
    for line in body:
        print("  ".join(c.ljust(w) for c, w in zip(line, widths)) + "  " + line[-1])
    sys.stdout.flush()
