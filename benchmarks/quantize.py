#!/usr/bin/env python3
"""Quantization on CPU: measured latency ratio next to the theoretical bytes ratio, file sizes, accuracy.

Two tables, in one run (about 3 minutes on 2 busy cores):

1. kernels — one Linear layer (K -> N) at batch 1 and 32: float32 against each forward path this
   package has (dynamic int8 through torch._int_mm or simulated, weight-only int8/int4 dequantized or
   through ATen's _weight_int8pack_mm / _weight_int4pack_mm_for_cpu, bfloat16) and torchao's
   Int8DynamicActivationInt8WeightConfig when torchao is installed.
2. models — the zoo mlp and cnn (width 0.5) trained briefly on digits, torchvision:resnet18 at 3x32x32 (conv layers
   only) and a BERT-mini-sized encoder (hf:tiny-bert 4 layers, d=256, seq 128; a torch
   TransformerEncoder of that size without transformers): float32 against each technique at batch 1
   and 32, with the layers each one touched, the bytes ratio (float32 / stored, whole model), the
   serialized safetensors size ratio, and the test-accuracy delta on digits (mlp, cnn).

Latency: each pair (float32, quantized) is timed interleaved in this process (the order flips every
repeat), after warm-up, under torch.inference_mode; medians (and p90) over a time-budgeted number of
repeats (at least 5). speedup = float32 ms / quantized ms (> 1: quantized is faster).

Usage, from the repository root::

    .venv/bin/python benchmarks/quantize.py                    # writes benchmarks/results/quantize_cpu.json
    .venv/bin/python benchmarks/quantize.py --quick --json /tmp/q.json   # smoke test (~1 minute)
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
from torch import nn

from modelscale.core.apply import apply
from modelscale.core.machine import machine_notes
from modelscale.core.saving import save_compressed
from modelscale.techniques.quantize.cast import CastConfig, CastLayer
from modelscale.techniques.quantize.common import int_mm_available, quantized_bytes
from modelscale.techniques.quantize.dynamic_int8 import DynamicInt8Config, DynamicInt8Linear
from modelscale.techniques.quantize.weight_only import WeightOnlyConfig, WeightOnlyLayer

T0 = time.monotonic()


def log(msg: str) -> None:
    print(f"[{time.monotonic() - T0:6.1f}s] {msg}", flush=True)


# --- timing ---------------------------------------------------------------------------------------------
def time_pair(fa, fb, *, budget_s: float, max_repeats: int, cap_s: float = 3.0) -> dict:
    """Interleaved medians of two callables (ms).

    After one warm-up call each, the first timed round decides the repeats: as many as fit
    `budget_s` (at least 5, or 3 when a round takes over 0.5 s), or just that round when it took more
    than `cap_s` (a path so slow that more samples would not change the verdict).
    """

    def timed(fn) -> float:
        t = time.perf_counter()
        fn()
        return (time.perf_counter() - t) * 1e3

    with torch.inference_mode():
        fa(), fb()  # warm-up (first calls allocate, pack weights, pick kernels)
        sa, sb = [timed(fa)], [timed(fb)]
        one_round = (sa[0] + sb[0]) / 1e3
        if one_round > cap_s:
            repeats = 1
        else:
            least = 3 if one_round > 0.5 else 5
            repeats = int(max(least, min(max_repeats, budget_s / max(one_round, 1e-6))))
        for r in range(1, repeats):
            for fn, out in ((fb, sb), (fa, sa)) if r % 2 else ((fa, sa), (fb, sb)):
                out.append(timed(fn))

    def p90(s):
        return sorted(s)[min(len(s) - 1, int(0.9 * len(s)))]

    a, b = statistics.median(sa), statistics.median(sb)
    return {"float_ms": a, "float_p90_ms": p90(sa), "quant_ms": b, "quant_p90_ms": p90(sb),
            "speedup": a / b, "repeats": repeats}  # fmt: skip


# --- table 1: one Linear layer ------------------------------------------------------------------------
def kernel_rows(args) -> list[dict]:
    shapes = [(256, 1024), (1024, 4096)] if not args.quick else [(256, 1024)]
    rows = []
    torchao_cfg = None
    with contextlib.suppress(ImportError), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

        torchao_cfg = Int8DynamicActivationInt8WeightConfig
    for k, n in shapes:
        torch.manual_seed(0)
        lin = nn.Linear(k, n).eval()
        variants = {
            "dynamic_int8 (torch._int_mm)": DynamicInt8Linear(lin, kernel="int_mm") if args.int_mm else None,
            "dynamic_int8 (simulated)": DynamicInt8Linear(lin, kernel="simulated"),
            "int8 weight-only, dequant": WeightOnlyLayer(lin, bits=8, group_size=0, symmetric=True),
            "int8 weight-only, ATen _weight_int8pack_mm": WeightOnlyLayer(
                lin, bits=8, group_size=0, symmetric=True, kernel="torch"
            ),
            "int4 g32 weight-only, dequant": WeightOnlyLayer(lin, bits=4, group_size=32, symmetric=False),
            "int4 g32 weight-only, ATen _weight_int4pack_mm_for_cpu": WeightOnlyLayer(
                lin, bits=4, group_size=32, symmetric=False, kernel="torch"
            ),
            "bfloat16 cast": CastLayer(lin, dtype="bfloat16"),
        }
        if torchao_cfg is not None:
            ao = copy.deepcopy(lin)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                quantize_(ao, torchao_cfg())
            variants["torchao Int8DynamicActivationInt8Weight"] = ao
        for batch in (1, 32):
            x = torch.randn(batch, k)
            for name, layer in variants.items():
                if layer is None:
                    continue
                if getattr(layer, "kernel", "torch") == "dequant" and "ATen" in name:
                    continue  # the ATen kernel refused this layer
                r = time_pair(lambda lin=lin, x=x: lin(x), lambda layer=layer, x=x: layer(x),
                              budget_s=args.budget / 3, max_repeats=args.repeats)  # fmt: skip
                rows.append({"shape": f"{k}->{n}", "batch": batch, "path": name, **r})
                log(f"kernel {k}->{n} b{batch} {name}: {r['speedup']:.2f}x")
    return rows


# --- table 2: models ------------------------------------------------------------------------------------
def trained_digits(name: str, epochs: int, **kwargs):
    from modelscale.data import load_data
    from modelscale.models import build_model
    from modelscale.train import TrainConfig, evaluate, fit

    data = load_data("digits", seed=0)
    torch.manual_seed(0)
    model = build_model(name, num_classes=10, input_shape=data.input_shape, **kwargs)
    cfg = TrainConfig(
        epochs=epochs, optimizer="adamw", lr=3e-3, batch_size=64, seed=0, progress=False, device="cpu"
    )
    fit(model, data, cfg)
    model.eval()
    return model, data, lambda m: evaluate(m, data.test)["accuracy"]


def bert_mini():
    """hf:tiny-bert at BERT-mini size (4 layers, d=256, 4 heads, seq 128), else a torch encoder of that size."""
    try:
        from modelscale.models import build_model

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = build_model("hf:tiny-bert", num_classes=2, width=4, depth=2, block_size=128)
        return model.eval(), "hf:tiny-bert (4 layers, d=256, seq 128)"
    except Exception:  # transformers missing: the same size with torch modules

        class Encoder(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.embed = nn.Embedding(256, 256)
                layer = nn.TransformerEncoderLayer(256, 4, 1024, dropout=0.0, batch_first=True)
                self.encoder = nn.TransformerEncoder(layer, 4, enable_nested_tensor=False)
                self.head = nn.Linear(256, 2)

            def forward(self, tokens):
                return self.head(self.encoder(self.embed(tokens)).mean(1))

        torch.backends.mha.set_fastpath_enabled(False)  # run every Linear through its own forward
        return Encoder().eval(), "torch TransformerEncoder (4 layers, d=256, seq 128)"


def methods(model_kind: str) -> list[tuple[str, object]]:
    if model_kind == "resnet18":
        conv = {"types": ["Conv2d"]}
        return [
            ("dynamic_int8", None),  # Linear only: nothing to do on a conv-only target
            ("weight_only int8 g128", WeightOnlyConfig(bits=8, group_size=128, target=conv)),
            (
                "weight_only int4 g32 asym",
                WeightOnlyConfig(bits=4, group_size=32, symmetric=False, target=conv),
            ),
            ("cast bfloat16", CastConfig(dtype="bfloat16", target=conv)),
            ("cast float8_e4m3", CastConfig(dtype="float8_e4m3", target=conv)),
        ]
    half = [("cast float16", CastConfig(dtype="float16"))] if model_kind in ("mlp", "cnn") else []
    return [
        ("dynamic_int8", DynamicInt8Config()),
        ("weight_only int8 g128", WeightOnlyConfig(bits=8, group_size=128)),
        ("weight_only int4 g32 asym", WeightOnlyConfig(bits=4, group_size=32, symmetric=False)),
        ("cast bfloat16", CastConfig(dtype="bfloat16")),
        *half,
        ("cast float8_e4m3", CastConfig(dtype="float8_e4m3")),
    ]


def file_size(model, records, folder: Path) -> int:
    save_compressed(folder, model, records)
    return (folder / "model.safetensors").stat().st_size


def model_rows(args) -> list[dict]:
    from modelscale.models import build_model

    rows = []
    cases = []
    log("training mlp and cnn on digits")
    mlp, data, acc_fn = trained_digits("mlp", 8)
    x_digits = torch.stack([data.test[i][0] for i in range(32)])
    cases.append(("mlp", mlp, x_digits, acc_fn))
    if not args.quick:
        cnn, _, _ = trained_digits("cnn", 3, width=0.5)
        cases.append(("cnn", cnn, x_digits, acc_fn))
        torch.manual_seed(0)
        resnet = build_model("torchvision:resnet18", num_classes=10, input_shape=(3, 32, 32)).eval()
        cases.append(("resnet18", resnet, torch.randn(32, 3, 32, 32), None))
    log("building the BERT-mini-sized encoder")
    bert, bert_name = bert_mini()
    cases.append(("transformer", bert, torch.randint(0, 256, (32, 128)), None))
    tmp = Path(tempfile.mkdtemp(prefix="quantize-bench-"))
    for kind, model, x32, acc_fn in cases:
        base_acc = acc_fn(model) if acc_fn else None
        base_file = file_size(model, [], tmp / f"{kind}-float")
        for label, config in methods(kind):
            row = {"model": bert_name if kind == "transformer" else kind, "method": label}
            if config is None:
                rows.append({**row, "touched": "n/a: dynamic_int8 quantizes Linear layers only"})
                continue
            result = apply(model, config)
            q = result.model.eval()
            types = {}
            for layer in result.record.layers:
                types[layer["kind"]] = types.get(layer["kind"], 0) + 1
            sizes = quantized_bytes(q)
            row.update(
                touched=", ".join(f"{n} {k}" for k, n in sorted(types.items())),
                bytes_ratio=sizes["ratio"],
                quantized_layers_bytes_ratio=sizes["quantized_ratio"],
                file_ratio=base_file / file_size(q, [result.record], tmp / f"{kind}-{label}"),
                kernel=result.record.summary.get("kernel", "dtype"),
            )
            if acc_fn:
                row["accuracy_delta_points"] = 100 * (base_acc - acc_fn(q))
            for batch in (1, 32):
                xb = x32[:batch]
                r = time_pair(lambda m=model, xb=xb: m(xb), lambda q=q, xb=xb: q(xb), budget_s=args.budget,
                              max_repeats=args.repeats)  # fmt: skip
                row[f"b{batch}"] = r
            rows.append(row)
            log(f"{kind} {label}: b1 {row['b1']['speedup']:.2f}x, b32 {row['b32']['speedup']:.2f}x, "
                f"bytes {row['bytes_ratio']:.2f}x, file {row['file_ratio']:.2f}x")  # fmt: skip
    return rows


# --- output ---------------------------------------------------------------------------------------------
def machine(args) -> dict:
    """Machine notes taken at the start (load average included), plus this benchmark's own keys."""
    flags = []
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as fh:
        present = next((ln.split(":", 1)[1].split() for ln in fh if ln.startswith("flags")), [])
        flags = [
            f
            for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_int8", "amx_bf16")
            if f in present
        ]
    return machine_notes(packages=("torchao",)) | {
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_flags": flags,
        "int_mm_available": args.int_mm,
        "setup": "digits seed 0 (load_data split), mlp 8 epochs, cnn width 0.5 3 epochs, adamw lr 3e-3; "
        "resnet18 3x32x32 random init; encoder seq 128; inputs batch 1 and 32",
    }


def print_tables(kernels: list[dict], models: list[dict]) -> None:
    print("\nOne Linear layer (float32 ms vs quantized ms, speedup > 1 = faster)")
    print(f"{'shape':>10} {'b':>3} {'path':<56} {'fp32 ms':>9} {'q ms':>9} {'speedup':>8}")
    for r in kernels:
        print(f"{r['shape']:>10} {r['batch']:>3} {r['path']:<56} {r['float_ms']:9.3f} {r['quant_ms']:9.3f} "
              f"{r['speedup']:8.2f}")  # fmt: skip
    print("\nModels (speedup = fp32 ms / quantized ms; bytes = fp32 bytes / stored bytes, whole model)")
    head = (
        f"{'model':<14} {'method':<26} {'touched':<14} {'b1 ms':>15} {'b1 x':>6} {'b32 ms':>17} {'b32 x':>6}"
    )
    print(head + f" {'bytes':>6} {'file':>6} {'dAcc':>6}")
    for r in models:
        model = r["model"].split(" ")[0]
        if "b1" not in r:
            print(f"{model:<14} {r['method']:<26} {r['touched']}")
            continue
        b1, b32 = r["b1"], r["b32"]
        acc = f"{r['accuracy_delta_points']:6.2f}" if "accuracy_delta_points" in r else f"{'-':>6}"
        print(f"{model:<14} {r['method']:<26} {r['touched']:<14} "
              f"{b1['float_ms']:7.2f}/{b1['quant_ms']:7.2f} {b1['speedup']:6.2f} "
              f"{b32['float_ms']:8.2f}/{b32['quant_ms']:8.2f} {b32['speedup']:6.2f} "
              f"{r['bytes_ratio']:6.2f} {r['file_ratio']:6.2f} {acc}")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--json", default="benchmarks/results/quantize_cpu.json", help="where to write results"
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (1: no stalls on shared cores)"
    )
    parser.add_argument("--repeats", type=int, default=40, help="most timed repeats per pair")
    parser.add_argument(
        "--budget", type=float, default=1.2, help="seconds of timing per model pair and batch"
    )
    parser.add_argument("--quick", action="store_true", help="fewer shapes and models (smoke test)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.int_mm = int_mm_available("cpu")
    info = machine(args)
    log(f"torch {torch.__version__}, {args.threads} threads, torch._int_mm on CPU: {args.int_mm}")
    kernels = kernel_rows(args)
    models = model_rows(args)
    print_tables(kernels, models)
    notes = [
        "dynamic_int8 runs a real int8 GEMM (torch._int_mm, int8 x int8 -> int32) when int_mm_available is "
        "true; activations are quantized per row on every call",
        "weight_only dequantizes to float32 each call unless an ATen kernel row says otherwise; fp8 is storage "
        "only on CPU (no fp8 GEMM); float16/bfloat16 layers compute in that dtype",
        "resnet18: only Conv2d layers are targeted (fc stays float32); dynamic_int8 has no conv path",
        "float16 is timed on mlp/cnn only: this CPU has no fast float16 GEMM/conv (see those rows), "
        "and on resnet18/the encoder a single call takes tens of seconds",
        "a timing with repeats=1 is a path slower than 3 s per float32+quantized round: one sample only",
        "the machine was shared with other jobs: see load averages; ratios are interleaved medians",
    ]
    info["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    out = {"machine": info, "notes": notes, "kernels": kernels, "models": models,
           "seconds": time.monotonic() - T0}  # fmt: skip
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")
    log(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
