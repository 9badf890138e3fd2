#!/usr/bin/env python3
"""int8 on CPU for a BERT-style encoder: our int8 paths next to PyTorch's, ONNX Runtime's and torchao's.

Model: `hf:tiny-bert` at width 8 / depth 2, i.e. a transformers BertModel with hidden 512, 4 layers,
4 heads, FFN 2048, sequence 128 (task="embedding": the mean-pooled last hidden state, 512 per
sample); random init, random byte tokens — a speed measurement, no accuracy claim (the real MiniLM
encoder's embedding agreement is tested in tests/techniques/quantize/test_int8_kernels.py).

Variants, every Linear of the encoder quantized by each:
- `fp32` — the float model (the baseline of every ratio);
- `ours dynamic (tensor)` — dynamic_int8, default: per-tensor activations, fused oneDNN kernel;
- `ours dynamic (row)` — dynamic_int8(activations="row"): per-row activations, torch._int_mm;
- `ours dynamic (row, smooth)` — the same with smooth=0.5 (SmoothQuant, calibrated on the static batches);
- `ours dynamic (row, smooth) + torch.compile` — those layers with the model through torch.compile;
- `ours static` — static_int8 (minmax, calibrated on 4 random-token batches of 8): fused oneDNN kernel;
- `torch.ao quantize_dynamic` — where the installed torch still has it (fbgemm/x86 engine);
- `ORT dynamic int8` — export_onnx + ONNX Runtime's quantize_dynamic (QInt8 weights), ORT session;
- `ours pt2e static (inductor)` / `ours pt2e dynamic (inductor)` — pt2e_int8: PT2E export, the x86
  Inductor quantizer (static: calibrated on the same batches as `ours static`; dynamic: per-call scale)
  and torch.compile with freezing — the int8 GEMMs, the activations' quantization and the ops between
  them fused into one graph (compiled at the first call of each batch size: `first_call_s`);
- `torchao int8 dynamic` — torchao's Int8DynamicActivationInt8WeightConfig, where installed;
- `fp32 torch.compile (reference)` — the float model through torch.compile: what the compiler alone
  gives, next to the compiled int8 paths (not an int8 path; not in the acceptance).

Timing: 1 thread on each side (torch.set_num_threads(1), ORT intra-op 1, no spinning), after warm-up,
under torch.inference_mode. One round runs every variant once, the order rotating each round; the
per-round ratio fp32 ms / variant ms is paired within the round. A repeat is `--rounds` rounds;
three repeats; the reported speedup is the median of the three repeat medians, with their range
(min–max) and the p10–p90 of all paired ratios. Output agreement: cosine of the flattened outputs
against fp32 on the timed batch. The load average is recorded before and after (2 shared cores).

Usage, from the repository root::

    .venv/bin/python benchmarks/int8_encoder.py --json benchmarks/results/int8_encoder_cpu.json  # ~6 min
    .venv/bin/python benchmarks/int8_encoder.py --quick            # smoke test (~1 min)
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
from modelscale.models import build_model
from modelscale.techniques.quantize.dynamic_int8 import DynamicInt8Config
from modelscale.techniques.quantize.pt2e_int8 import Pt2eInt8Config
from modelscale.techniques.quantize.static_int8 import StaticInt8Config

T0 = time.monotonic()
SEQ = 128


def log(msg: str) -> None:
    print(f"[{time.monotonic() - T0:6.1f}s] {msg}", flush=True)


def encoder(width: int) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(0)
        return build_model("hf:tiny-bert", task="embedding", width=width, depth=2, block_size=SEQ).eval()


def build_variants(model: nn.Module, example: torch.Tensor, work: Path) -> tuple[dict, dict]:
    """name -> callable(tokens), and name -> what it is (kernels, notes)."""
    variants, about = {"fp32": model}, {"fp32": "float32 eager"}
    linears = {"types": ["Linear"]}
    dyn = apply(copy.deepcopy(model), DynamicInt8Config(target=linears))
    variants["ours dynamic (tensor)"] = dyn.model
    about["ours dynamic (tensor)"] = f"dynamic_int8 kernel={dyn.record.summary['kernel']}"
    row = apply(copy.deepcopy(model), DynamicInt8Config(target=linears, activations="row"))
    variants["ours dynamic (row)"] = row.model
    about["ours dynamic (row)"] = f"dynamic_int8 activations=row kernel={row.record.summary['kernel']}"
    g = torch.Generator().manual_seed(1)
    calibration = [torch.randint(0, 256, (8, SEQ), generator=g) for _ in range(4)]
    smooth = DynamicInt8Config(target=linears, activations="row", smooth=0.5)
    variants["ours dynamic (row, smooth)"] = apply(
        copy.deepcopy(model), smooth, calibration=calibration
    ).model
    about["ours dynamic (row, smooth)"] = (
        "dynamic_int8 activations=row smooth=0.5 (SmoothQuant, calibrated on the static batches): the "
        "accurate path on the real MiniLM (0.999 cosine), torch._int_mm"
    )
    with torch.no_grad():
        variants["ours dynamic (row, smooth) + torch.compile"] = torch.compile(
            copy.deepcopy(variants["ours dynamic (row, smooth)"])
        )
    about["ours dynamic (row, smooth) + torch.compile"] = (
        "the same layers, the whole model through torch.compile (Inductor fuses the per-row quantization "
        "and the rescale around torch._int_mm)"
    )
    static = apply(copy.deepcopy(model), StaticInt8Config(target=linears), calibration=calibration)
    variants["ours static"] = static.model
    about["ours static"] = f"static_int8 minmax kernel={static.record.summary['kernel']}"
    for activations in ("static", "dynamic"):
        name = f"ours pt2e {activations} (inductor)"
        try:
            pt2e = apply(
                copy.deepcopy(model), Pt2eInt8Config(activations=activations), calibration=calibration
            )
            variants[name] = pt2e.model
            about[name] = (
                f"pt2e_int8 activations={activations}: PT2E x86 Inductor quantizer + torch.compile (freezing), "
                f"{pt2e.record.summary['quantized_weights']} int8 weights in {pt2e.record.summary['regions']} region"
            )
        except Exception as exc:  # noqa: BLE001 - e.g. torchao absent: reported, not fatal
            about[name] = f"not measured: {str(exc).splitlines()[0][:160]}"
    with torch.no_grad():
        variants["fp32 torch.compile (reference)"] = torch.compile(copy.deepcopy(model))
    about["fp32 torch.compile (reference)"] = (
        "float32 through torch.compile (Inductor, default mode): how much of a compiled int8 path's gain is "
        "the compiler's alone; not an int8 path"
    )
    quantize_dynamic = getattr(getattr(torch.ao, "quantization", None), "quantize_dynamic", None)
    if quantize_dynamic is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            variants["torch.ao quantize_dynamic"] = quantize_dynamic(
                copy.deepcopy(model), {nn.Linear}, torch.qint8
            )
        about["torch.ao quantize_dynamic"] = f"engine={torch.backends.quantized.engine}"
    else:
        about["torch.ao quantize_dynamic"] = f"absent in torch {torch.__version__}"
    try:
        from modelscale.export import OrtRunner, export_onnx, quantize_onnx_dynamic

        fp32_onnx = export_onnx(model, example, work / "encoder.onnx")
        int8_onnx = quantize_onnx_dynamic(fp32_onnx, work / "encoder_int8.onnx")
        variants["ORT dynamic int8"] = OrtRunner(int8_onnx, threads=1, spin=False)
        about["ORT dynamic int8"] = "onnxruntime quantize_dynamic QInt8, per_channel=False, ORT_ENABLE_ALL"
    except Exception as exc:  # noqa: BLE001 - a missing or failing peer is reported, not fatal
        about["ORT dynamic int8"] = f"not measured: {str(exc).splitlines()[0][:160]}"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

            ao = copy.deepcopy(model)
            quantize_(ao, Int8DynamicActivationInt8WeightConfig())
        variants["torchao int8 dynamic"] = ao
        import torchao

        about["torchao int8 dynamic"] = f"torchao {torchao.__version__} Int8DynamicActivationInt8WeightConfig"
    except Exception as exc:  # noqa: BLE001
        about["torchao int8 dynamic"] = f"not measured: {str(exc).splitlines()[0][:160]}"
    return variants, about


def measure(variants: dict, x: torch.Tensor, *, rounds: int, repeats: int) -> dict:
    names = list(variants)
    outputs = {}
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        first_call = {}
        for name, fn in variants.items():
            t = time.perf_counter()
            fn(x)  # warm-up: packing, kernel choice, allocations; compiles a compiled variant at this shape
            first_call[name] = time.perf_counter() - t
            outputs[name] = torch.as_tensor(fn(x)).float()
        times: dict[str, list[list[float]]] = {n: [] for n in names}
        for _ in range(repeats):
            for n in names:
                times[n].append([])
            for r in range(rounds):
                order = names[r % len(names) :] + names[: r % len(names)]
                for n in order:
                    t = time.perf_counter()
                    variants[n](x)
                    times[n][-1].append((time.perf_counter() - t) * 1e3)
    ref = outputs["fp32"].flatten()
    rows = {}
    for n in names:
        paired = [
            [f / q for f, q in zip(fr, qr, strict=True)]
            for fr, qr in zip(times["fp32"], times[n], strict=True)
        ]
        per_repeat = [statistics.median(p) for p in paired]
        flat = sorted(v for p in paired for v in p)
        cos = torch.nn.functional.cosine_similarity(outputs[n].flatten(), ref, dim=0).item()
        rows[n] = {
            "ms_median": statistics.median(v for rep in times[n] for v in rep),
            "speedup": statistics.median(per_repeat),
            "speedup_repeat_medians": per_repeat,
            "speedup_p10": flat[int(0.1 * (len(flat) - 1))],
            "speedup_p90": flat[int(0.9 * (len(flat) - 1))],
            "cosine_vs_fp32": cos,
            "first_call_s": first_call[n],
        }
    return rows


def acceptance(rows: dict, batch: int) -> dict:
    ours = {n: r for n, r in rows.items() if n.startswith("ours")}
    best_name = max(ours, key=lambda n: ours[n]["speedup"])
    peers = [rows[n]["speedup"] for n in ("torch.ao quantize_dynamic", "ORT dynamic int8") if n in rows]
    best = ours[best_name]
    out = {
        "our_best": best_name,
        "our_best_speedup": best["speedup"],
        "faster_peer_speedup": max(peers) if peers else None,
        "beats_faster_peer": bool(peers) and best["speedup"] >= max(peers),
        "cosine_ok": best["cosine_vs_fp32"] >= 0.999,
    }
    if batch == 32:
        out["at_least_2.5x"] = best["speedup"] >= 2.5
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--quick", action="store_true", help="hidden 256, few rounds (smoke test)")
    ap.add_argument(
        "--rounds", type=int, default=0, help="rounds per repeat (0: 5 at batch 32, 15 at batch 1)"
    )
    ap.add_argument("--batches", default="32,1", help="comma-separated batch sizes")
    args = ap.parse_args()
    torch.set_num_threads(1)
    load_before = os.getloadavg()
    width = 4 if args.quick else 8
    model = encoder(width)
    hidden = model.hf.config.hidden_size
    log(f"encoder hidden {hidden}, {model.hf.config.num_hidden_layers} layers, seq {SEQ}; load {load_before}")
    results = {"model": f"hf:tiny-bert width={width} depth=2 (BertModel hidden {hidden}, 4 layers, 4 heads, "
                        f"FFN {4 * hidden}, seq {SEQ}), random init, task=embedding", "batches": {}}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        g = torch.Generator().manual_seed(0)
        example = torch.randint(0, 256, (2, SEQ), generator=g)
        variants, about = build_variants(model, example, Path(tmp))
        results["variants"] = about
        log("variants: " + "; ".join(f"{k}: {v}" for k, v in about.items()))
        for batch in (int(b) for b in args.batches.split(",")):
            x = torch.randint(0, 256, (batch, SEQ), generator=g)
            rounds = args.rounds or ((3 if args.quick else 5) if batch > 8 else (5 if args.quick else 15))
            load = os.getloadavg()
            rows = measure(variants, x, rounds=rounds, repeats=3)
            results["batches"][str(batch)] = {
                "rounds_per_repeat": rounds, "repeats": 3, "load_average_before": load,
                "load_average_after": os.getloadavg(), "rows": rows, "acceptance": acceptance(rows, batch),
            }  # fmt: skip
            for n, r in rows.items():
                rep = r["speedup_repeat_medians"]
                log(f"batch {batch:>2} {n:<26} {r['ms_median']:9.1f} ms  {r['speedup']:.2f}x "
                    f"(repeats {min(rep):.2f}-{max(rep):.2f}, p10-p90 {r['speedup_p10']:.2f}-{r['speedup_p90']:.2f})"
                    f"  cos {r['cosine_vs_fp32']:.5f}")  # fmt: skip
            log(f"batch {batch} acceptance: {results['batches'][str(batch)]['acceptance']}")
    notes = machine_notes(threads=1, packages=("onnxruntime", "torchao", "transformers"))
    notes["load_average_at_start"] = load_before
    notes["flag"] = (
        "measured on 2 shared cores with other agents' jobs running (see the load averages): absolute ms are "
        "inflated and noisy; the paired, interleaved ratios are the figures to read"
    )
    results["machine"] = notes
    results["argv"] = sys.argv[1:]
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
        log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
