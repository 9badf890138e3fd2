#!/usr/bin/env python3
"""Structural compression on CPU: theoretical ratios (params, MACs, bytes) next to measured latency.

One run, one process, untrained weights (size and speed do not depend on training; no accuracy is
claimed here), synthetic inputs for timing. Every latency is a pair timed INTERLEAVED with its dense
model (`measure_latency_pair`: warm-up, then a b b a ... ; medians), at batch 1 and 32, and reported as
latency ratio = variant median / dense median (< 1: faster). Repeats adapt to the model's cost
(clamped to [--min-repeats, --max-repeats]) and are printed with every row.

1. structured_prune ratio 0.3/0.5/0.7, with and without round_to=8, on the digits `cnn` (1×8×8),
   `torchvision:resnet18` adapted to 3×32×32 and `torchvision:mobilenet_v2` at 3×32×32:
   params ratio and MACs ratio (theoretical) next to the latency ratio (measured).
2. Unstructured magnitude_prune 50/80/90 %, weight_cluster 4-bit, and prune 80 % + cluster 4-bit on
   the cnn and resnet18: dense torch.save bytes, zipped (zlib 9) bytes, bitmask / CSR / best-per-tensor
   encoded bytes (`modelscale.measure.sparse`), clustered packed bytes (codebooks + 4-bit indices +
   the untouched tensors dense), and the latency ratio — masked and clustered models run the dense
   kernels (plus the mask / codebook lookup per forward), so expect ~1.0 or slower.
3. lowrank_svd at energy 0.5/0.7/0.9 on the digits `mlp` and resnet18: params ratio vs latency ratio.
4. semistructured_24 on the mlp: no CPU kernel, so the masked model's latency ratio (~1.0 or slower).

Usage, from the repository root (about 3-4 minutes on 2 busy cores)::

    .venv/bin/python benchmarks/structured.py --json benchmarks/results/structured_cpu.json
    .venv/bin/python benchmarks/structured.py --quick --json /tmp/structured.json   # smoke test
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from modelscale.core.apply import apply
from modelscale.core.machine import machine_notes
from modelscale.measure import count_macs, measure_latency_pair, measure_size
from modelscale.measure.sparse import sparse_storage
from modelscale.models import build_model

MODELS = {
    "cnn": ("cnn", (1, 8, 8)),
    "mlp": ("mlp", (1, 8, 8)),
    "resnet18": ("torchvision:resnet18", (3, 32, 32)),
    "mobilenet_v2": ("torchvision:mobilenet_v2", (3, 32, 32)),
}
T0 = time.monotonic()


def log(msg: str) -> None:
    print(f"[{time.monotonic() - T0:6.1f}s] {msg}", flush=True)


def build(key: str) -> tuple[nn.Module, tuple[int, ...]]:
    name, shape = MODELS[key]
    torch.manual_seed(0)
    return build_model(name, num_classes=10, input_shape=shape).eval(), shape


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def macs(model: nn.Module, shape: tuple[int, ...]) -> int:
    return count_macs(model, torch.randn(1, *shape)).macs


class Timer:
    """Interleaved dense-vs-variant latency at each batch size, repeats scaled to the model's cost."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.batches = (1, 32) if not args.quick else (1, 4)
        self._cost: dict[tuple[int, int], int] = {}  # (id(dense), batch) -> repeats

    def _repeats(self, model: nn.Module, x: torch.Tensor) -> int:
        key = (id(model), x.shape[0])
        if key not in self._cost:
            with torch.inference_mode():
                model(x)
                times = []
                for _ in range(2):
                    t0 = time.perf_counter()
                    model(x)
                    times.append(time.perf_counter() - t0)
            wanted = int(self.args.pair_seconds / max(2 * min(times), 1e-6))
            self._cost[key] = max(self.args.min_repeats, min(self.args.max_repeats, wanted))
        return self._cost[key]

    def ratios(self, dense: nn.Module, variant: nn.Module, shape: tuple[int, ...]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        gen = torch.Generator().manual_seed(0)
        for b in self.batches:
            x = torch.randn(b, *shape, generator=gen)
            repeats = self._repeats(dense, x)
            pair = measure_latency_pair(
                dense, variant, x, warmup=2 if repeats > 5 else 1, repeats=repeats, threads=self.args.threads
            )
            out[f"b{b}"] = {
                "dense_ms": pair.a.median_ms,
                "dense_p90_ms": pair.a.p90_ms,
                "variant_ms": pair.b.median_ms,
                "variant_p90_ms": pair.b.p90_ms,
                "latency_ratio": pair.b.median_ms / pair.a.median_ms,
                # min / min: the least preempted runs (a cross-check of the median, not a replacement)
                "min_ratio": pair.b.min_ms / pair.a.min_ms,
                "repeats": repeats,
            }
            v = out[f"b{b}"]
            # preemption on a loaded box makes timings bimodal: flag when median and min disagree
            v["noisy"] = bool(abs(math.log(v["latency_ratio"] / v["min_ratio"])) > math.log(1.25))
        return out


def structured_section(timer: Timer, quick: bool) -> list[dict[str, Any]]:
    rows = []
    for key in ("cnn", "resnet18", "mobilenet_v2") if not quick else ("cnn",):
        dense, shape = build(key)
        p0, m0 = n_params(dense), macs(dense, shape)
        for ratio in (0.3, 0.5, 0.7) if not quick else (0.5,):
            for round_to in (None, 8):
                t0 = time.perf_counter()
                config = {"type": "structured_prune", "ratio": ratio, "round_to": round_to}
                pruned = apply(dense, config, example_inputs=torch.randn(1, *shape)).model.eval()
                row = {
                    "model": key,
                    "input": list(shape),
                    "ratio": ratio,
                    "round_to": round_to,
                    "params_dense": p0,
                    "params_ratio": n_params(pruned) / p0,
                    "macs_dense": m0,
                    "macs_ratio": macs(pruned, shape) / m0,
                    "apply_s": time.perf_counter() - t0,
                    "latency": timer.ratios(dense, pruned, shape),
                }
                rows.append(row)
                log(f"structured {key} ratio={ratio} round_to={round_to}: {_lat(row)}")
    return rows


def _storage(dense_bytes: int | None, model: nn.Module, record: Any | None, zip_level: int) -> dict[str, Any]:
    """Bytes of `model` in each form, and each / `dense_bytes` (None: this model is the dense one)."""
    size = measure_size(model, level=zip_level)
    dense_bytes = dense_bytes or size.serialized_bytes
    sparse = sparse_storage(model)
    out = {
        "serialized_bytes": size.serialized_bytes,
        "zipped_bytes": size.zipped_bytes,
        "raw_dense_bytes": sparse.dense_bytes,  # the tensors' bytes without torch.save's container
        "bitmask_bytes": sparse.bitmask_bytes,
        "csr_bytes": sparse.csr_bytes,
        "best_sparse_bytes": sparse.best_bytes,
        "sparsity": sparse.sparsity,
        "clustered_packed_bytes": None,
    }
    if record is not None and "packed_bytes" in record.summary:
        # clustered layers packed (codebook + indices); everything else (biases, BN, skipped) dense
        out["clustered_packed_bytes"] = (
            sparse.dense_bytes - record.summary["dense_bytes"] + record.summary["packed_bytes"]
        )
    for k in (
        "raw_dense_bytes",
        "zipped_bytes",
        "bitmask_bytes",
        "csr_bytes",
        "best_sparse_bytes",
        "clustered_packed_bytes",
    ):
        if out[k] is not None:
            out[k.replace("_bytes", "_ratio")] = out[k] / dense_bytes
    return out


def unstructured_section(timer: Timer, quick: bool, zip_level: int) -> list[dict[str, Any]]:
    # (label, label of the model the step starts from (None: dense), step)
    variants: list[tuple[str, str | None, dict[str, Any]]] = [
        ("magnitude 50%", None, {"type": "magnitude_prune", "amount": 0.5}),
        ("magnitude 80%", None, {"type": "magnitude_prune", "amount": 0.8}),
        ("magnitude 90%", None, {"type": "magnitude_prune", "amount": 0.9}),
        ("cluster 4-bit", None, {"type": "weight_cluster", "bits": 4}),
        ("prune 80% + cluster 4-bit", "magnitude 80%", {"type": "weight_cluster", "bits": 4}),
    ]
    if quick:
        variants = [variants[1], variants[4]]
    rows = []
    for key in ("cnn", "resnet18") if not quick else ("cnn",):
        dense, shape = build(key)
        base = {"model": key, "input": list(shape), "variant": "dense", "steps": []}
        base |= _storage(None, dense, None, zip_level)
        dense_bytes = base["serialized_bytes"]
        rows.append(base)
        made: dict[str, tuple[nn.Module, list[dict[str, Any]]]] = {}
        for label, start, step in variants:
            t0 = time.perf_counter()
            model, steps = made[start] if start else (dense, [])
            result = apply(model, step)
            model, steps = result.model.eval(), [*steps, step]
            made[label] = (model, steps)
            row = {"model": key, "input": list(shape), "variant": label, "steps": steps}
            row |= _storage(dense_bytes, model, result.record, zip_level)
            row["apply_s"] = time.perf_counter() - t0
            row["latency"] = timer.ratios(dense, model, shape)
            rows.append(row)
            log(f"unstructured {key} {label}: best sparse {row['best_sparse_ratio']:.3f}, {_lat(row)}")
    return rows


def svd_section(timer: Timer, quick: bool) -> list[dict[str, Any]]:
    rows = []
    for key in ("mlp", "resnet18") if not quick else ("mlp",):
        dense, shape = build(key)
        p0, m0 = n_params(dense), macs(dense, shape)
        for energy in (0.5, 0.7, 0.9) if not quick else (0.7,):
            t0 = time.perf_counter()
            result = apply(dense, {"type": "lowrank_svd", "rank_by": "energy", "energy": energy})
            model = result.model.eval()
            row = {
                "model": key,
                "input": list(shape),
                "energy": energy,
                "factorized_layers": result.record.summary["factorized"],
                "params_ratio": n_params(model) / p0,
                "macs_ratio": macs(model, shape) / m0,
                "apply_s": time.perf_counter() - t0,
                "latency": timer.ratios(dense, model, shape),
            }
            rows.append(row)
            log(f"svd {key} energy={energy}: params {row['params_ratio']:.3f}, {_lat(row)}")
    return rows


def semistructured_section(timer: Timer) -> list[dict[str, Any]]:
    dense, shape = build("mlp")
    result = apply(dense, {"type": "semistructured_24"})
    model = result.model.eval()
    sparse = sparse_storage(model)
    row = {
        "model": "mlp",
        "input": list(shape),
        "sparsity_of_targeted": result.record.summary["sparsity"],
        "kernel": "masked dense (no CPU kernel for 2:4)",
        "bitmask_ratio": sparse.bitmask_bytes / sparse_storage(dense).dense_bytes,
        "notes": result.record.notes,
        "latency": timer.ratios(dense, model, shape),
    }
    log(f"2:4 mlp: {_lat(row)}")
    return [row]


def _lat(row: dict[str, Any]) -> str:
    return ", ".join(
        f"{b}: {v['latency_ratio']:.3f} ({v['dense_ms']:.3g}->{v['variant_ms']:.3g} ms, n={v['repeats']})"
        for b, v in row["latency"].items()
    )


def _cell(row: dict[str, Any], batch: str) -> str:
    v = row["latency"].get(batch)
    if not v:
        return "-"
    flag = "*" if v["noisy"] else " "
    return f"{v['latency_ratio']:5.2f} {v['min_ratio']:5.2f}{flag}n={v['repeats']:<3d}"


def print_tables(results: dict[str, Any], batches: tuple[int, ...]) -> None:
    b1, b2 = (f"b{b}" for b in batches)
    lat = f"{b1 + ' med  min':<17s} {b2 + ' med  min':<17s}"
    print("\n## structured_prune: theoretical (params, MACs) vs measured latency ratio (variant / dense)")
    print(f"{'model':<13s}{'ratio':>6s} {'round':>5s} {'params':>7s} {'MACs':>7s}  {lat}")
    for r in results["structured"]:
        rt = str(r["round_to"] or "-")
        print(
            f"{r['model']:<13s}{r['ratio']:>6.1f} {rt:>5s} {r['params_ratio']:>7.3f} {r['macs_ratio']:>7.3f}  "
            f"{_cell(r, b1)} {_cell(r, b2)}"
        )
    print("\n## unstructured: bytes / dense torch.save bytes; latency ratio (masked: dense kernels)")
    print(
        f"{'model':<9s}{'variant':<27s}{'dense KB':>9s} {'raw':>6s} {'zip':>6s} {'bitmask':>7s} {'CSR':>6s} {'best':>6s} "
        f"{'packed':>6s}  {lat}"
    )
    for r in results["unstructured"]:

        def f(k: str, row: dict[str, Any] = r) -> str:
            return f"{row[k]:6.3f}" if row.get(k) is not None else f"{'-':>6s}"

        cells = f"{_cell(r, b1)} {_cell(r, b2)}" if "latency" in r else ""
        print(
            f"{r['model']:<9s}{r['variant']:<27s}{r['serialized_bytes'] / 1024:>9.1f} {f('raw_dense_ratio')} "
            f"{f('zipped_ratio')} "
            f"{f('bitmask_ratio'):>7s} {f('csr_ratio')} {f('best_sparse_ratio')} {f('clustered_packed_ratio')}  {cells}"
        )
    print("\n## lowrank_svd: params / MACs ratio vs latency ratio")
    print(f"{'model':<10s}{'energy':>7s} {'layers':>6s} {'params':>7s} {'MACs':>7s}  {lat}")
    for r in results["svd"]:
        print(
            f"{r['model']:<10s}{r['energy']:>7.1f} {r['factorized_layers']:>6d} {r['params_ratio']:>7.3f} "
            f"{r['macs_ratio']:>7.3f}  {_cell(r, b1)} {_cell(r, b2)}"
        )
    print("\n## semistructured_24 (2:4) on the mlp: no CPU kernel, masked dense weights")
    for r in results["semistructured_24"]:
        print(
            f"mlp sparsity {r['sparsity_of_targeted']:.2f}  bitmask bytes ratio {r['bitmask_ratio']:.3f}  "
            f"latency {_cell(r, b1)} {_cell(r, b2)}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--json", type=Path, help="write the results here (e.g. benchmarks/results/structured_cpu.json)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op CPU threads (2 on oversubscribed cores stalled forwards by ~0.3-0.5 s)",
    )
    parser.add_argument(
        "--pair-seconds", type=float, default=2.0, help="target timing seconds per pair and batch"
    )
    parser.add_argument("--min-repeats", type=int, default=3)
    parser.add_argument("--max-repeats", type=int, default=100)
    parser.add_argument(
        "--zip-level",
        type=int,
        default=1,
        help="zlib level for zipped bytes (9 takes ~50 s per sparse resnet18)",
    )
    parser.add_argument("--quick", action="store_true", help="tiny smoke run of every section")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    timer = Timer(args)
    notes = machine_notes(args.threads, packages=("numpy",))
    log(f"{notes['cpu']}, {args.threads} threads, torch {notes['torch']}, load {notes['load_average']}")
    results = {
        "structured": structured_section(timer, args.quick),
        "unstructured": unstructured_section(timer, args.quick, args.zip_level),
        "svd": svd_section(timer, args.quick),
        "semistructured_24": semistructured_section(timer),
    }
    notes["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    print_tables(results, timer.batches)
    print("\n* noisy: median and min ratios differ by > 25 % (a loaded machine): rerun before quoting it")
    elapsed = time.monotonic() - T0
    print(f"{elapsed:.0f} s; load average {notes['load_average']} -> {notes['load_average_at_end']}")
    if args.json:
        payload = {
            "benchmark": "structured_cpu",
            "machine": notes,
            "settings": {
                "batches": list(timer.batches),
                "pair_seconds": args.pair_seconds,
                "min_repeats": args.min_repeats,
                "max_repeats": args.max_repeats,
                "zip_level": args.zip_level,
                "threads": args.threads,
                "quick": args.quick,
                "weights": "untrained (seed 0); synthetic inputs for timing; no accuracy claims",
                "latency_ratio": "median variant ms / median dense ms, interleaved pairs (< 1: faster)",
                "min_ratio": "min variant ms / min dense ms (less hit by preemption, but rests on one sample each)",
                "noisy": "median and min ratios differ by more than 25 %",
                "bytes_ratio": "encoded bytes / dense torch.save bytes of the same model",
            },
            "notes": [
                "masked (magnitude, 2:4) and clustered models run dense kernels on CPU plus a mask or "
                "codebook lookup per forward: their latency ratio is ~1.0 or worse; only bytes shrink",
                "bitmask/CSR/packed bytes count real encoded buffers (modelscale.measure.sparse, "
                "modelscale.techniques.cluster.storage), not estimates",
            ],
            "elapsed_s": elapsed,
            "results": results,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=1, allow_nan=False) + "\n")
        log(f"wrote {args.json}")


if __name__ == "__main__":
    main()
