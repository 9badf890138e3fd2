#!/usr/bin/env python3
"""Measured against theoretical speedups of stock PyTorch paths on one GPU (built for an H200).

Each case times a baseline and its variants INTERLEAVED in one process (CUDA events around a few
calls per sample, warm-up first, median and p90 over the repeats, the order flipped every round)
and prints measured speedup = baseline ms / variant ms next to the theoretical ratio:

1. fp32 vs tf32 vs bf16: GEMM 4096³ and 8192³; ResNet-50 inference b256 224px (channels_last).
2. torch.compile (default mode) vs eager: a 12-layer GPT-style block stack, bf16, compile time apart.
3. int8: torch._int_mm vs bf16 GEMM; weight-only int8 GEMV at batch 1 (eager, compiled) vs bf16.
4. fp8 e4m3 torch._scaled_mm (tensor-wise, row-wise, fast accumulation) vs bf16 GEMM.
5. 2:4 semi-structured sparse Linear (CUTLASS and cuSPARSELt backends) vs the dense masked Linear.
6. ResNet-50 with half its channels vs dense: MACs ratio against measured latency ratio.

A variant that fails records its error in its row and the run goes on. Plain PyTorch (torchvision
if present); modelscale only in case 6, when `modelscale.techniques.prune.structured` imports.
Weights are rotated over two copies where one copy could sit in L2 between calls (GEMV).

Usage, from the repository root::

    PYTHONPATH=src python3 benchmarks/gpu.py --json benchmarks/results/gpu-h200.json   # ~2-3 min
    python benchmarks/gpu.py --device cpu --quick --json /tmp/gpu.json   # smoke test of every path
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import datetime
import json
import platform
import subprocess
import sys
import time
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))  # its sibling modules, however it is loaded
from gpu_models import GPTStack, resnet50, resnet50_width  # noqa: E402
from gpu_timing import (  # noqa: E402
    T0,
    Ctx,
    count_flops,
    error_text,
    fmt_value,
    log_line,
    measure,
    print_table,
    rotate,
    set_tf32,
)

CASES = {
    1: "precision: fp32 vs tf32 vs bf16",
    2: "torch.compile vs eager",
    3: "int8 GEMM and weight-only GEMV",
    4: "fp8 e4m3 _scaled_mm",
    5: "2:4 semi-structured sparsity",
    6: "channel-pruned ResNet-50 vs dense",
}
# gpt: (layers, width, heads, sequence, batch); sparse: (n, batch sizes M); resnet/prune: (batch, pixels)
FULL = dict(gemm=(4096, 8192), resnet=(256, 224), gpt=(12, 768, 12, 1024, 8), int_mm=8192, gemv=8192)
FULL |= dict(fp8=(8192, 4096), sparse=(8192, (1, 64, 4096)), prune=(256, 224))
QUICK = dict(gemm=(64, 128), resnet=(1, 32), gpt=(2, 64, 4, 32, 2), int_mm=64, gemv=256)
QUICK |= dict(fp8=(64,), sparse=(128, (1, 32)), prune=(1, 32))
# ---------------------------------------------------------------- cases


def case_precision(ctx: Ctx) -> None:
    for n in ctx.shapes["gemm"]:
        with ctx.guard(1, "GEMM", f"{n}^3"):
            a, b = ctx.randn(n, n), ctx.randn(n, n)
            a16, b16 = a.bfloat16(), b.bfloat16()

            def fp32(a=a, b=b):
                set_tf32(False)
                return a @ b

            def tf32(a=a, b=b):
                set_tf32(True)
                return a @ b

            fns = {"fp32": fp32, "tf32": tf32, "bf16": lambda a16=a16, b16=b16: a16 @ b16}
            measure(ctx, (1, "GEMM", f"{n}^3"), fns, baseline="fp32", flops=2 * n**3)
            set_tf32(False)
    batch, res = ctx.shapes["resnet"]
    shape = f"b{batch} {res}px"
    with ctx.guard(1, "ResNet-50 inference", shape):
        model, label = resnet50()
        model = model.eval().to(ctx.device)
        model_cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
        x = ctx.randn(batch, 3, res, res)
        x_cl = x.contiguous(memory_format=torch.channels_last)

        def fp32():
            set_tf32(False)
            return model(x)

        def tf32_cl():
            set_tf32(True)
            return model_cl(x_cl)

        def bf16_cl():
            set_tf32(False)
            with torch.autocast(ctx.device.type, dtype=torch.bfloat16):
                return model_cl(x_cl)

        fns = {"fp32 NCHW": fp32, "tf32 channels_last": tf32_cl, "bf16 autocast channels_last": bf16_cl}
        notes = {k: label for k in fns}
        measure(
            ctx,
            (1, "ResNet-50 inference", shape),
            fns,
            baseline="fp32 NCHW",
            items=(batch, "img"),
            notes=notes,
        )
        set_tf32(False)


def case_compile(ctx: Ctx) -> None:
    layers, d, heads, seq, batch = ctx.shapes["gpt"]
    shape = f"{layers}L d{d} T{seq} b{batch} bf16"
    with ctx.guard(2, "GPT block stack fwd", shape):
        model = GPTStack(layers, d, heads).to(ctx.device, torch.bfloat16).eval()
        x = ctx.randn(batch, seq, d, dtype=torch.bfloat16)
        flops = count_flops(model, x)
        compiled = torch.compile(model, backend=ctx.compile_backend)
        ctx.sync()
        t = time.perf_counter()
        compiled(x)
        ctx.sync()
        compile_s = time.perf_counter() - t
        log_line(f"  compile ({ctx.compile_backend}, default mode): {compile_s:.1f} s")
        fns = {"eager": lambda: model(x), "compiled": lambda: compiled(x)}
        notes = {"compiled": f"compile {compile_s:.1f} s ({ctx.compile_backend}, default mode)"}
        where = (2, "GPT block stack fwd", shape)
        measure(ctx, where, fns, baseline="eager", flops=flops, items=(batch * seq, "tok"), notes=notes)


def _int8_rows(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-row int8: w ≈ q * s[:, None]."""
    s = w.float().abs().amax(dim=1).clamp_min(1e-12) / 127
    q = (w.float() / s[:, None]).round().clamp(-127, 127).to(torch.int8)
    return q, s.to(w.dtype)


def _dequant_linear(x, q, s):
    return F.linear(x, q.to(x.dtype)) * s


def _mulsum_linear(x, q, s):  # batch-1 GEMV as a reduction: compiled, it reads each int8 weight once
    return ((q.float() * x.float()).sum(-1) * s.float()).to(x.dtype).view(1, -1)


def case_int8(ctx: Ctx) -> None:
    n = ctx.shapes["int_mm"]
    with ctx.guard(3, "int8 GEMM", f"{n}^3"):
        a8 = torch.randint(-128, 128, (n, n), device=ctx.device, dtype=torch.int8)
        w8 = torch.randint(-128, 128, (n, n), device=ctx.device, dtype=torch.int8)
        a16, w16 = a8.bfloat16(), w8.bfloat16()  # the same integers, exact in bf16
        note = ""
        with contextlib.suppress(Exception):
            ref = a8[:32].double() @ w8.double().t()
            note = f"exact on 32 rows: {bool(torch.equal(torch._int_mm(a8, w8.t())[:32].double(), ref))}"
        w8t = w8.t().contiguous()
        fns = {
            "bf16": lambda: a16 @ w16.t(),
            "int8 _int_mm": lambda: torch._int_mm(a8, w8.t()),
            "int8 _int_mm row-major B": lambda: torch._int_mm(a8, w8t),
        }
        notes = {k: f"theory = Hopper int8/bf16 peak; {note}" for k in fns}
        opts = dict(flops=2 * n**3, ops_unit="TOP/s", theory=2.0, notes=notes, compare_outputs=False)
        measure(ctx, (3, "int8 GEMM", f"{n}^3"), fns, baseline="bf16", **opts)
    n = ctx.shapes["gemv"]
    shape = f"1x{n} @ {n}x{n}"
    with ctx.guard(3, "weight-only int8 GEMV", shape):
        x = ctx.randn(1, n, dtype=torch.bfloat16)
        copies = 2 if ctx.cuda else 1
        ws = [ctx.randn(n, n, dtype=torch.bfloat16) for _ in range(copies)]
        qs = [_int8_rows(w) for w in ws]
        fns = {
            "bf16": rotate(lambda w: F.linear(x, w), [(w,) for w in ws]),
            "int8 eager dequant": rotate(_dequant_linear, [(x, q, s) for q, s in qs]),
        }
        notes, failed = {}, {}
        for label, fn in (
            ("int8 compiled dequant", _dequant_linear),
            ("int8 compiled mul-sum", _mulsum_linear),
        ):
            try:
                compiled = torch.compile(fn, backend=ctx.compile_backend)
                t = time.perf_counter()
                compiled(x, *qs[0])
                ctx.sync()
                notes[label] = f"compile {time.perf_counter() - t:.1f} s ({ctx.compile_backend})"
                fns[label] = rotate(compiled, [(x, q, s) for q, s in qs])
            except Exception as exc:  # noqa: BLE001
                failed[label] = error_text(exc)
        fns["int8 _weight_int8pack_mm"] = rotate(torch._weight_int8pack_mm, [(x, q, s) for q, s in qs])
        nbytes = {k: n * n + 2 * n for k in fns} | {"bf16": 2 * n * n}
        notes = {k: "; ".join(filter(None, [notes.get(k), "theory = weight bytes ratio"])) for k in fns}
        opts = dict(theory=2.0, nbytes=nbytes, notes=notes, failed=failed)
        measure(ctx, (3, "weight-only int8 GEMV", shape), fns, baseline="bf16", **opts)


def scaled_mm(a, b, scale_a, scale_b, *, fast: bool = False) -> torch.Tensor:
    """torch._scaled_mm across versions (<=2.3 returned (out, amax); later ones the tensor)."""
    kw = dict(scale_a=scale_a, scale_b=scale_b, out_dtype=torch.bfloat16)
    if fast:
        kw["use_fast_accum"] = True
    out = torch._scaled_mm(a, b, **kw)
    return out[0] if isinstance(out, tuple) else out


def _fp8_gemm(ctx: Ctx, n: int) -> None:
    f8 = torch.float8_e4m3fn
    fmax = torch.finfo(f8).max
    a, w = ctx.randn(n, n), ctx.randn(n, n)  # y = a @ w.T; w is row-major, so w.T is column-major
    a16, w16 = a.bfloat16(), w.bfloat16()
    sa, sw = a.abs().amax() / fmax, w.abs().amax() / fmax  # float32 0-dim scales
    a8, w8 = (a / sa).to(f8), (w / sw).to(f8)
    ra, rw = a.abs().amax(1, keepdim=True) / fmax, w.abs().amax(1, keepdim=True) / fmax  # (n, 1)
    a8r, w8r, rw = (a / ra).to(f8), (w / rw).to(f8), rw.reshape(1, n)
    del a, w
    fns = {
        "bf16": lambda: a16 @ w16.t(),
        "fp8 tensor-wise": lambda: scaled_mm(a8, w8.t(), sa, sw),
        "fp8 row-wise": lambda: scaled_mm(a8r, w8r.t(), ra, rw),
        "fp8 tensor-wise fast-accum": lambda: scaled_mm(a8, w8.t(), sa, sw, fast=True),
    }
    notes = {k: "theory = Hopper fp8/bf16 peak" for k in fns}
    measure(
        ctx, (4, "fp8 e4m3 GEMM", f"{n}^3"), fns, baseline="bf16", flops=2 * n**3, theory=2.0, notes=notes
    )


def case_fp8(ctx: Ctx) -> None:
    if not hasattr(torch, "float8_e4m3fn"):
        ctx.add(4, "fp8 e4m3 GEMM", "-", "bf16", "fp8", error="this torch has no float8_e4m3fn")
        return
    for n in ctx.shapes["fp8"]:
        with ctx.guard(4, "fp8 e4m3 GEMM", f"{n}^3"):
            _fp8_gemm(ctx, n)


def mask_2_4(w: torch.Tensor) -> torch.Tensor:
    """Keep the 2 largest |w| of every 4 consecutive input weights (a valid 2:4 pattern)."""
    rows, cols = w.shape
    g = w.float().abs().view(rows, cols // 4, 4)
    keep = torch.zeros_like(g, dtype=torch.bool).scatter_(-1, g.topk(2, dim=-1).indices, True)
    return keep.view(rows, cols)


def case_sparse(ctx: Ctx) -> None:
    n, ms = ctx.shapes["sparse"]
    with ctx.guard(5, "2:4 sparse Linear", f"{n}x{n}"):
        from torch.sparse import SparseSemiStructuredTensor, to_sparse_semi_structured

        w = ctx.randn(n, n, dtype=torch.bfloat16)
        wm = w * mask_2_4(w)
        assert (wm.view(n, n // 4, 4) != 0).sum(-1).max() <= 2
        sparse, refused = {}, {}
        original = getattr(SparseSemiStructuredTensor, "_FORCE_CUTLASS", False)
        for label, force in (("2:4 CUTLASS", True), ("2:4 cuSPARSELt", False)):
            try:
                SparseSemiStructuredTensor._FORCE_CUTLASS = force
                sparse[label] = to_sparse_semi_structured(wm)
            except Exception as exc:  # noqa: BLE001
                refused[label] = "refused: " + error_text(exc)
            finally:
                SparseSemiStructuredTensor._FORCE_CUTLASS = original
        for m in ms:
            x = ctx.randn(m, n, dtype=torch.bfloat16)
            fns = {"dense (masked)": lambda x=x: F.linear(x, wm)}
            for label, ws in sparse.items():
                fns[label] = lambda x=x, ws=ws: F.linear(x, ws)
            where = (5, "2:4 sparse Linear", f"M={m} x {n}x{n} bf16")
            notes = {k: "theory = half the multiply-adds" for k in fns}
            opts = dict(theory=2.0, flops=2 * m * n * n, failed=refused, notes=notes)
            measure(ctx, where, fns, baseline="dense (masked)", **opts)


def modelscale_prune(model: nn.Module, example: torch.Tensor) -> tuple[nn.Module, str]:
    """Prune half the channels with modelscale's structured pruning (its config found by type)."""
    import modelscale.techniques.prune.structured as structured
    from modelscale.core.apply import apply
    from modelscale.core.config import TechniqueConfig

    configs = [
        v
        for v in vars(structured).values()
        if isinstance(v, type) and issubclass(v, TechniqueConfig) and v.__module__ == structured.__name__
    ]
    if not configs:
        raise RuntimeError("modelscale.techniques.prune.structured defines no TechniqueConfig")
    cls = getattr(structured, "StructuredPruneConfig", configs[0])
    fields = {f.name for f in dataclasses.fields(cls)}
    key = next(
        (k for k in ("amount", "ratio", "pruning_ratio", "sparsity", "channel_ratio") if k in fields), None
    )
    if key is None:
        raise RuntimeError(f"{cls.__name__} has no amount-like field: {sorted(fields)}")
    with torch.enable_grad():  # dependency-graph tracing needs autograd
        result = apply(model, cls(**{key: 0.5}), example_inputs=example)
    return result.model, f"modelscale {getattr(cls, 'type', cls.__name__)} {key}=0.5"


def case_prune(ctx: Ctx) -> None:
    batch, res = ctx.shapes["prune"]
    shape = f"b{batch} {res}px"
    with ctx.guard(6, "pruned ResNet-50", shape):
        dense, dense_label = resnet50()
        models = {"dense": (dense.eval(), dense_label)}
        failed = {}
        half = "hand-made half-width ResNet-50 (all channels x0.5), not modelscale"
        models["half-width"] = (resnet50_width(0.5).eval(), half)
        try:
            pruned, how = modelscale_prune(copy.deepcopy(dense), torch.randn(1, 3, res, res))
            models["modelscale 50%"] = (pruned.eval(), how)
        except Exception as exc:  # noqa: BLE001
            failed["modelscale 50%"] = "modelscale structured pruning unavailable: " + error_text(exc)
        x1 = ctx.randn(1, 3, res, res)
        stats = {}
        for k, (m, _) in models.items():
            m.to(ctx.device)
            set_tf32(False)
            stats[k] = (count_flops(m, x1) / 2, sum(p.numel() for p in m.parameters()))
        theory = {k: stats["dense"][0] / s[0] for k, s in stats.items()}
        notes = {
            k: f"{how}; MACs {stats['dense'][0] / 1e9:.2f}G -> {stats[k][0] / 1e9:.2f}G, "
            f"params {stats['dense'][1] / 1e6:.1f}M -> {stats[k][1] / 1e6:.1f}M"
            for k, (_, how) in models.items()
        }
        x = ctx.randn(batch, 3, res, res)

        def call(m, inp):
            set_tf32(False)
            return m(inp)

        fns = {k: (lambda m=m: call(m, x)) for k, (m, _) in models.items()}
        opts = dict(theory=theory, items=(batch, "img"), notes=notes, failed=failed, compare_outputs=False)
        measure(ctx, (6, "pruned ResNet-50 fp32 NCHW", shape), fns, baseline="dense", **opts)
        x = x.to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
        for m, _ in models.values():
            m.to(dtype=torch.bfloat16, memory_format=torch.channels_last)
        measure(ctx, (6, "pruned ResNet-50 bf16 channels_last", shape), fns, baseline="dense", **opts)


RUNNERS = {1: case_precision, 2: case_compile, 3: case_int8, 4: case_fp8, 5: case_sparse, 6: case_prune}


# ---------------------------------------------------------------- output


def _nvidia_smi() -> str | None:
    query = "name,driver_version,clocks.sm,clocks.max.sm,power.draw,power.limit,temperature.gpu,memory.used"
    try:
        out = subprocess.run(
            ["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=15,
        )
        return out.stdout.strip() or out.stderr.strip() or None
    except Exception:  # noqa: BLE001
        return None


def metadata(ctx: Ctx, args: argparse.Namespace) -> dict:
    meta = dict(
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        torch=torch.__version__,
        cuda=torch.version.cuda,
        python=platform.python_version(),
        platform=platform.platform(),
        device=str(ctx.device),
        quick=ctx.quick,
        repeats=ctx.repeats,
        warmup=ctx.warmup,
        argv=sys.argv[1:],
        nvidia_smi=_nvidia_smi(),
    )
    with contextlib.suppress(Exception):
        meta["cudnn"] = torch.backends.cudnn.version()
    with contextlib.suppress(Exception):
        import torchvision

        meta["torchvision"] = torchvision.__version__
    if ctx.cuda:
        props = torch.cuda.get_device_properties(ctx.device)
        meta.update(
            device_name=torch.cuda.get_device_name(ctx.device),
            capability=f"{props.major}.{props.minor}",
            sm_count=props.multi_processor_count,
            memory_gib=round(props.total_memory / 2**30, 1),
        )
    else:
        meta.update(device_name=platform.processor() or platform.machine(), threads=torch.get_num_threads())
    return meta


def _spin_up(ctx: Ctx, seconds: float = 1.5) -> None:
    """Busy the GPU for a moment so the first case does not start at idle clocks."""
    a = ctx.randn(4096, 4096, dtype=torch.bfloat16)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for _ in range(20):
            a @ a
        ctx.sync()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="tiny shapes and few repeats (smoke test)")
    parser.add_argument("--json", type=Path, help="write all rows and machine metadata here")
    parser.add_argument("--cases", default="1,2,3,4,5,6", help="comma-separated case numbers")
    parser.add_argument("--repeats", type=int, help="timed samples per function (default 30, quick 3)")
    parser.add_argument("--warmup", type=int, help="untimed calls per function first (default 5, quick 1)")
    parser.add_argument("--budget-s", type=float, default=210.0, help="skip what would start after this")
    parser.add_argument("--threads", type=int, help="CPU threads (torch.set_num_threads)")
    parser.add_argument("--compile-backend", help="default inductor; aot_eager with --quick on CPU")
    args = parser.parse_args(argv)
    cases = [int(c) for c in args.cases.split(",") if c.strip()]
    if bad := [c for c in cases if c not in RUNNERS]:
        parser.error(f"unknown case(s) {bad}; valid: {sorted(RUNNERS)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    ctx = Ctx(
        device=device,
        quick=args.quick,
        warmup=args.warmup or (1 if args.quick else 5),
        repeats=args.repeats or (3 if args.quick else 30),
        deadline=T0 + args.budget_s,
        shapes=QUICK if args.quick else FULL,
        min_sample_ms=1.0 if device.type == "cuda" else 0.0,
        compile_backend=args.compile_backend
        or ("aot_eager" if args.quick and device.type == "cpu" else "inductor"),
    )
    torch.manual_seed(0)
    if ctx.cuda:
        torch.backends.cudnn.benchmark = True
        _spin_up(ctx)
    set_tf32(False)
    meta = metadata(ctx, args)
    log_line(f"torch {meta['torch']} cuda {meta['cuda']} on {meta['device_name']}; cases {cases}")
    case_meta = {}
    with torch.no_grad():
        for num in cases:
            log_line(f"case {num}: {CASES[num]}")
            start, before = time.monotonic(), len(ctx.rows)
            if ctx.cuda:
                torch.cuda.reset_peak_memory_stats(device)
            if time.monotonic() > ctx.deadline:
                ctx.add(num, CASES[num], "-", "-", "-", error="skipped: time budget spent")
            else:
                try:
                    RUNNERS[num](ctx)
                except Exception as exc:  # noqa: BLE001
                    ctx.add(num, CASES[num], "-", "-", "-", error=error_text(exc))
                    traceback.print_exc()
            if len(ctx.rows) == before:
                ctx.add(num, CASES[num], "-", "-", "-", error="case produced no rows")
            peak = torch.cuda.max_memory_allocated(device) / 2**30 if ctx.cuda else None
            case_meta[num] = dict(
                seconds=round(time.monotonic() - start, 1), peak_gib=peak and round(peak, 2)
            )
            log_line(f"case {num} done in {case_meta[num]['seconds']} s, peak {fmt_value(peak, '.1f')} GiB")
    meta.update(cases=case_meta, total_s=round(time.monotonic() - T0, 1), nvidia_smi_end=_nvidia_smi())
    print_table(ctx.rows, f"modelscale GPU facts: {meta['device_name']}, torch {meta['torch']}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"meta": meta, "rows": ctx.rows}, indent=1, default=str))
        log_line(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
