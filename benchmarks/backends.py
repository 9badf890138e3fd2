#!/usr/bin/env python3
"""Eager PyTorch vs `torch.compile` vs ONNX Runtime on CPU, through the same code `profile --compile
--backend both` runs (`measure.backends`): paired, interleaved, ratios with their 95% interval.

Models (random init: a speed measurement, no accuracy claim):
1. the digits `cnn` (zoo default, input 1×8×8);
2. the digits `mlp` (zoo default);
3. a BERT-style encoder: `hf:tiny-bert` at width 8 / depth 2 — a transformers BertModel with hidden
   512, 4 layers, 4 heads, FFN 2048, sequence 128, task "embedding" (mean-pooled last hidden state) —
   on random byte tokens; with `--quick`, width 2 (hidden 128).

For each model and batch size (1 and 32; the encoder's are `--encoder-batches`) one `measure_backends`
call: the model is compiled (`torch.compile`, Inductor, default mode; the first
call's wall time is the compile time, reported apart) and exported to a temporary ONNX file opened in
an ORT session with the same intra-op thread count; then eager, compiled and ORT are timed in one
interleaved loop until every ratio's 95% interval is within ±5% or `--budget` seconds are spent. The
ratio printed is eager ms / backend ms (> 1: the backend is faster); "UNSTABLE" marks a figure that is
not to be believed (load above the cores, wide interval, heavy tails), never a speedup.

Inductor's on-disk cache is pointed at a fresh temporary folder (unless `--warm-cache`), so the compile
times are those of a first compile on this machine.

Usage, from the repository root::

    .venv/bin/python benchmarks/backends.py --json benchmarks/results/backends_cpu.json   # ~10 min loaded
    .venv/bin/python benchmarks/backends.py --quick                                       # smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

T0 = time.monotonic()


def log(msg: str) -> None:
    print(f"[{time.monotonic() - T0:6.1f}s] {msg}", flush=True)


def _models(quick: bool, encoder_batches: list[int]):
    import torch

    from modelscale.models import build_model

    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    width = 2 if quick else 8
    yield (
        "cnn (digits zoo)",
        build_model("cnn").eval(),
        lambda b: torch.rand(b, 1, 8, 8, generator=g),
        [1, 32],
    )
    yield (
        "mlp (digits zoo)",
        build_model("mlp").eval(),
        lambda b: torch.rand(b, 1, 8, 8, generator=g),
        [1, 32],
    )
    encoder = build_model("hf:tiny-bert", task="embedding", width=width, depth=2, block_size=128).eval()
    hidden = 64 * width
    name = f"BERT-style encoder (hf:tiny-bert width {width} depth 2: hidden {hidden}, 4 layers, seq 128)"
    yield name, encoder, lambda b: torch.randint(0, 256, (b, 128), generator=g), encoder_batches


def _row(cmp, backend: str) -> dict:
    run = cmp.run("model", backend)
    row = {"status": run.status, "reason": run.reason}
    if run.latency is not None:
        row |= {
            "median_ms": run.latency.median_ms,
            "p90_ms": run.latency.p90_ms,
            "repeats": run.latency.repeats,
        }
    if backend != "eager":
        row |= {"max_abs_diff": run.max_abs_diff, "cosine": run.cosine, "setup": run.setup}
        ratio = cmp.ratio("model:eager", f"model:{backend}")
        if ratio is not None:
            s = ratio.stats
            row["speedup_vs_eager"] = {
                "ratio": s.ratio,
                "ci95": [s.ci_low, s.ci_high],
                "pairs": s.pairs,
                "trimmed": s.trimmed,
                "verdict": s.verdict,
                "unstable": s.unstable,
                "reasons": s.reasons,
                "load": [s.load_before, s.load_after],
            }
    return row


def _fmt(row: dict) -> str:
    if row["status"] != "ok":
        return f"NOT MEASURED ({row['reason']})"
    text = f"{row['median_ms']:8.3f} ms"
    s = row.get("speedup_vs_eager")
    if s:
        text += f"  {s['ratio']:.2f}x [{s['ci95'][0]:.2f}-{s['ci95'][1]:.2f}]"
        text += " UNSTABLE" if s["unstable"] else f" {s['verdict']}"
    return text


def _strict(value):
    """JSON has no NaN: non-finite floats become null."""
    import math

    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _strict(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_strict(v) for v in value]
    return value


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--budget", type=float, default=8.0, help="seconds of adaptive paired repeats per case")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--encoder-batches", default="1,32")
    ap.add_argument("--encoder-repeats", type=int, default=10, help="minimum paired rounds for the encoder")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--warm-cache", action="store_true", help="keep Inductor's usual on-disk cache")
    args = ap.parse_args()
    if not args.warm_cache:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="inductor-cold-")
    if args.quick:
        args.budget, args.repeats, args.encoder_batches, args.encoder_repeats = 1.0, 10, "1,4", 5

    import torch

    from modelscale.core.machine import machine_notes
    from modelscale.export.ort_latency import ort_candidate
    from modelscale.measure.backends import measure_backends
    from modelscale.measure.compiled import compiled_candidate
    from modelscale.measure.paired_stats import usable_cores

    makers = {"compiled": compiled_candidate(), "ort": ort_candidate()}
    notes_before = machine_notes(
        threads=args.threads, packages=("torch", "onnxruntime", "onnx", "transformers")
    )
    results = []
    batches = [int(b) for b in args.encoder_batches.split(",")]
    for name, model, make_input, sizes in _models(args.quick, batches):
        repeats = args.encoder_repeats if name.startswith("BERT") else args.repeats
        for batch in sizes:
            torch._dynamo.reset()  # each case compiles afresh (and stays under Dynamo's recompile limit)
            x = make_input(batch)
            log(f"{name}, batch {batch}: compiling, exporting, timing ...")
            cmp = measure_backends(
                {"model": model},
                x,
                makers,
                threads=args.threads,
                repeats=repeats,
                time_budget_s=args.budget,
            )
            row = {"model": name, "batch": batch, **{b: _row(cmp, b) for b in ("eager", "compiled", "ort")}}
            results.append(row)
            comp = row["compiled"].get("setup", {})
            ort = row["ort"].get("setup", {})
            print(
                f"  eager {_fmt(row['eager'])}\n  compiled {_fmt(row['compiled'])}"
                f"  (compile {comp.get('compile_s') or float('nan'):.1f} s, cache {comp.get('cache')})\n"
                f"  ort {_fmt(row['ort'])}  (export {ort.get('export_s') or float('nan'):.1f} s)",
                flush=True,
            )
    payload = {
        "benchmark": "benchmarks/backends.py",
        "what": "eager vs torch.compile (inductor, default mode) vs ONNX Runtime (CPU EP) latency, paired and "
        "interleaved in one process by measure.backends; ratio = eager ms / backend ms (> 1: backend faster), "
        "median of per-round ratios with bootstrap 95% CI; compile time = first-call wall time, cold Inductor "
        "cache unless warm_cache; in each ratio's reasons, base = eager and other = the backend",
        "machine_before": notes_before,
        "machine_after": machine_notes(threads=args.threads),
        "settings": {
            "threads": args.threads,
            "budget_s": args.budget,
            "repeats_min": args.repeats,
            "encoder_repeats_min": args.encoder_repeats,
            "quick": args.quick,
            "warm_cache": args.warm_cache,
            "argv": sys.argv[1:],
        },
        "results": results,
    }
    loads = [v for n in (notes_before, payload["machine_after"]) for v in (n.get("load_average") or [])[:1]]
    cores = usable_cores()  # the count paired_stats flags against
    if loads and max(loads) > cores:
        payload["load_note"] = (
            f"LOADED machine: 1-minute load {min(loads):.1f}-{max(loads):.1f} on {cores} usable cores while "
            "timing (other jobs running); every ratio is flagged unstable and none is a speedup claim"
        )
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(
            json.dumps(_strict(payload), indent=2, allow_nan=False, default=str) + "\n"
        )
        log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
