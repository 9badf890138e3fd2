#!/usr/bin/env python3
"""PyTorch fp32 vs ONNX Runtime fp32 vs ORT dynamic int8 vs ORT static (QDQ) int8, on CPU.

Models:
1. the digits `cnn` (32/64/128 channels), trained 3 epochs on digits (seed 0);
2. the zoo `mlp` (2 × 128 hidden), trained 3 epochs on digits;
3. a BERT-mini-sized encoder (4 layers, hidden 256, 4 heads, FFN 1024, sequence 128): `hf:tiny-bert`
   at width 4 / depth 2 when transformers is installed, else a torch `nn.TransformerEncoder` of the
   same shape; random init, random byte tokens (timing only, no accuracy claim).

For each model: export with `export_onnx` (dynamo), quantize with `quantize_onnx_dynamic` and
`quantize_onnx_static` (minmax, per-channel; calibration: 8 digits train batches of 32, or 8 random
token batches of 8 for the encoder), then at batch 1 and 32 time the four variants INTERLEAVED in one
process (rotating order each round, warm-up first), report median / p90 ms and speedups against
PyTorch and against ORT fp32, the ONNX file sizes, and output agreement with PyTorch (digits test
split for cnn/mlp). Threads default to 1 for both PyTorch and ORT: the box this was built on has 2
shared cores, and 2-thread PyTorch timings there swing by 100× when neighbours are busy.

Usage, from the repository root::

    .venv/bin/python benchmarks/onnx_runtime.py --json benchmarks/results/onnx_runtime_cpu.json  # ~2-3 min
    .venv/bin/python benchmarks/onnx_runtime.py --quick          # smoke test (few repeats, small encoder)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from modelscale.data import load_data, make_loader
from modelscale.export import (
    OrtRunner,
    check_agreement,
    export_onnx,
    interleaved_latency,
    machine_notes,
    onnx_info,
    quantize_onnx_dynamic,
    quantize_onnx_static,
)
from modelscale.models import build_model

VARIANTS = ("pytorch_fp32", "ort_fp32", "ort_int8_dynamic", "ort_int8_static")


class _TorchEncoder(nn.Module):
    """Byte embedding + learned positions + nn.TransformerEncoder + mean-pool classifier."""

    def __init__(self, layers: int, d: int, heads: int, seq: int, classes: int = 2) -> None:
        super().__init__()
        self.tok = nn.Embedding(256, d)
        self.pos = nn.Parameter(torch.randn(seq, d) * 0.02)
        layer = nn.TransformerEncoderLayer(d, heads, 4 * d, dropout=0.0, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d, classes)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.tok(idx) + self.pos[: idx.shape[1]]).mean(1))


def _train(name: str, data) -> nn.Module:
    torch.manual_seed(0)
    model = build_model(name)
    try:
        from modelscale.train import TrainConfig, fit

        fit(model, data, TrainConfig(epochs=3, lr=3e-3, progress=False, seed=0))
    except ImportError:
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
        for epoch in range(3):
            for x, y in make_loader(data.train, batch_size=64, shuffle=True, seed=epoch):
                opt.zero_grad()
                nn.functional.cross_entropy(model(x), y).backward()
                opt.step()
    return model.eval()


def _encoder(quick: bool) -> tuple[nn.Module, str, int]:
    layers, d, seq = (1, 64, 32) if quick else (4, 256, 128)
    try:
        model = build_model("hf:tiny-bert", width=d / 64, depth=layers / 2, block_size=seq, num_classes=2)
        name = f"hf:tiny-bert ({layers} layers, hidden {d}, 4 heads, seq {seq})"
    except Exception:  # noqa: BLE001 - transformers missing or incompatible: same shape in plain torch
        torch.manual_seed(0)
        model = _TorchEncoder(layers, d, 4, seq)
        name = f"torch TransformerEncoder ({layers} layers, d {d}, 4 heads, seq {seq})"
    return model.eval(), name, seq


def _case(label, model, example, calib, eval_loader, sizes, make_input, work, threads, repeats, note=""):
    t0 = time.perf_counter()
    fp32 = export_onnx(model, example, work / f"{label}.onnx")
    dyn = quantize_onnx_dynamic(fp32, work / f"{label}.dyn.onnx")
    static = quantize_onnx_static(fp32, work / f"{label}.qdq.onnx", calib, max_batches=8)
    prep_s = time.perf_counter() - t0
    runners = {
        "ort_fp32": OrtRunner(fp32, threads=threads, spin=False),
        "ort_int8_dynamic": OrtRunner(dyn, threads=threads, spin=False),
        "ort_int8_static": OrtRunner(static, threads=threads, spin=False),
    }
    files = {name: onnx_info(r.path)["bytes"] for name, r in runners.items()}
    result = {
        "model": label,
        "note": note,
        "parameters": sum(p.numel() for p in model.parameters()),
        "file_bytes": files,
        "size_ratio_vs_fp32": {k: files["ort_fp32"] / v for k, v in files.items()},
        "export_and_quantize_s": round(prep_s, 2),
        "exporter": onnx_info(fp32)["exporter"],
        "agreement": {k: check_agreement(model, r, eval_loader) for k, r in runners.items()},
        "latency": {},
    }
    for b in sizes:
        x = make_input(b)
        feeds = {k: r.feed(x) for k, r in runners.items()}

        def torch_run(x=x):
            with torch.inference_mode():
                model(x)

        fns = {"pytorch_fp32": torch_run}
        fns |= {k: (lambda r=r, f=feeds[k]: r.run_feed(f)) for k, r in runners.items()}
        n = repeats if b == 1 else max(5, repeats // (4 if x.dtype == torch.int64 else 2))
        stats = interleaved_latency(fns, warmup=max(2, n // 5), repeats=n)
        base, ort = stats["pytorch_fp32"]["median_ms"], stats["ort_fp32"]["median_ms"]
        result["latency"][f"batch_{b}"] = {
            "median_ms": {k: round(s["median_ms"], 4) for k, s in stats.items()},
            "p90_ms": {k: round(s["p90_ms"], 4) for k, s in stats.items()},
            "repeats": n,
            "speedup_vs_pytorch": {k: round(base / s["median_ms"], 3) for k, s in stats.items()},
            "speedup_vs_ort_fp32": {k: round(ort / s["median_ms"], 3) for k, s in stats.items()},
        }
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for PyTorch and ORT (default 1)")
    parser.add_argument("--repeats", type=int, default=50, help="timed runs at batch 1 (fewer at batch 32)")
    parser.add_argument("--quick", action="store_true", help="smoke test: few repeats, tiny encoder")
    args = parser.parse_args()
    repeats = 5 if args.quick else args.repeats
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None

    data = load_data("digits", seed=0)
    calib = make_loader(data.train, batch_size=32, shuffle=True, seed=0)
    test = make_loader(data.test, batch_size=256, shuffle=False)

    def digits_input(b: int) -> torch.Tensor:
        return torch.stack([data.test[i % len(data.test)][0] for i in range(b)])

    cases = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name in ("cnn", "mlp"):
            model = _train(name, data)
            cases.append(
                _case(
                    name,
                    model,
                    digits_input(1),
                    calib,
                    test,
                    (1, 32),
                    digits_input,
                    work,
                    args.threads,
                    repeats,
                    note="trained 3 epochs on digits (seed 0); agreement on the digits test split (359)",
                )
            )
            print(_table(cases[-1]), flush=True)
        encoder, enc_name, seq = _encoder(args.quick)
        gen = torch.Generator().manual_seed(0)
        tokens = torch.randint(0, 256, (64, seq), generator=gen)
        enc_calib = [tokens[i : i + 8] for i in range(0, 64, 8)]
        enc_eval = [tokens[i : i + 16] for i in range(0, 64, 16)]
        cases.append(
            _case(
                "encoder",
                encoder,
                tokens[:2],
                enc_calib,
                enc_eval,
                (1, 32),
                lambda b: tokens[:b],  # b <= 64
                work,
                args.threads,
                repeats,
                note=f"{enc_name}; random init, random byte tokens: timing only; agreement on 64 random sequences",
            )
        )
        print(_table(cases[-1]), flush=True)

    out = {
        "benchmark": "onnx_runtime_cpu",
        "what": "PyTorch fp32 vs ONNX Runtime fp32 / dynamic int8 / static QDQ int8, interleaved medians",
        "threads": args.threads,
        "quick": args.quick,
        "cases": cases,
        "machine": machine_notes(args.threads) | {"load_average_1m_before": load_before},
        "wall_s": round(time.perf_counter() - started, 1),
    }
    print(f"total {out['wall_s']} s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")
    return 0


def _table(case: dict) -> str:
    lines = [f"\n== {case['model']}: {case['note']}"]
    lines.append(
        f"{'variant':<18}{'bytes':>10}{'agree':>8}{'max|d|':>10}"
        + "".join(f"{f'b{b[6:]} ms':>11}{'x pt':>7}" for b in case["latency"])
    )
    for v in VARIANTS:
        size = case["file_bytes"].get(v, "")
        agree = case["agreement"].get(v, {})
        row = f"{v:<18}{size!s:>10}"
        row += (
            f"{agree['class_agreement']:>8.3f}{agree['max_abs_diff']:>10.2e}" if agree else f"{'':>8}{'':>10}"
        )
        for lat in case["latency"].values():
            row += f"{lat['median_ms'][v]:>11.3f}{lat['speedup_vs_pytorch'][v]:>7.2f}"
        lines.append(row)
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
