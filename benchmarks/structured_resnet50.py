#!/usr/bin/env python3
"""Structured-pruned ResNet-50 on CPU: our `structured_prune` against Torch-Pruning on the same shapes.

Issue 15's criterion: a ResNet-50 with half its channels removed runs with a measured speedup ÷ MACs
reduction ("efficiency" = speedup × MACs ratio) of at least 0.8 at batch 1, and at least
Torch-Pruning's. One run, one process, torchvision `resnet50(weights=None)` (untrained: size and speed
do not depend on the weights' values; no accuracy is claimed), synthetic 3×224×224 inputs.

Variants, each pruned from the same dense model (seed 0):
- ours: `apply(model, {"type": "structured_prune", "ratio": R})` at its defaults, with the
  channel-rounding option `round_to` = 8 and 16, and with `channels_last=True` (NHWC weights);
- Torch-Pruning used directly, the way its README shows: `MetaPruner` with
  `GroupMagnitudeImportance(p=2)`, `pruning_ratio=R`, the classifier `fc` ignored, one `step()`.

For each: params ratio and MACs ratio (`modelscale.measure.count_macs` for every model), whether its
parameter shapes equal Torch-Pruning's, and — per memory format (contiguous NCHW; `channels_last` with
`--formats`), thread count and batch — the latency of dense vs pruned timed paired and interleaved
(`measure_latency_pair`: median of per-pair ratios, bootstrap 95% interval, unstable flag with its
reasons). Efficiency = speedup × MACs ratio (1.0: time falls exactly as fast as MACs). Ours is also
timed directly against Torch-Pruning's model (ratio > 1: ours faster; where the two are bitwise the
same model, as at ratio 0.5, that pair is an A/A test of the machine's timing noise). The acceptance rows compare
models in the same layout: NCHW dense vs NCHW pruned, and NHWC-weight dense vs NHWC-weight pruned (for
`channels_last`; Torch-Pruning's model converted the same way). "ours channels_last vs dense" (the
user's view: their NCHW model against our output) and "dense channels_last (layout only)" show how much
of that row is the layout rather than the pruning. A per-layer-kind breakdown at batch 1 (each leaf module timed alone on its
recorded input, min of 7) shows where time does not fall with MACs.

Usage, from the repository root (about 5 minutes on 2 busy cores)::

    .venv/bin/python benchmarks/structured_resnet50.py --json benchmarks/results/structured_resnet50_cpu.json
    .venv/bin/python benchmarks/structured_resnet50.py --formats contiguous,channels_last --threads 1,2
    .venv/bin/python benchmarks/structured_resnet50.py --quick        # smoke run (~1 minute)
"""

from __future__ import annotations

import argparse
import collections
import copy
import json
import os
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from modelscale.core.apply import apply
from modelscale.core.machine import machine_notes
from modelscale.measure import count_macs, count_params, measure_latency_pair

T0 = time.monotonic()
SHAPE = (3, 224, 224)
TP_LABEL = "torch-pruning"


def log(msg: str) -> None:
    print(f"[{time.monotonic() - T0:6.1f}s] {msg}", flush=True)


def dense_resnet50() -> nn.Module:
    import torchvision

    torch.manual_seed(0)
    return torchvision.models.resnet50(weights=None).eval()


def prune_torch_pruning(dense: nn.Module, ratio: float, example: torch.Tensor) -> nn.Module:
    """Torch-Pruning as its README shows: group L2 magnitude, uniform ratio, classifier ignored."""
    import torch_pruning as tp

    model = copy.deepcopy(dense)
    pruner = tp.pruner.MetaPruner(
        model,
        example,
        importance=tp.importance.GroupMagnitudeImportance(p=2),
        pruning_ratio=ratio,
        ignored_layers=[model.fc],
    )
    pruner.step()
    return model.eval()


def shapes(model: nn.Module) -> list[tuple[str, tuple[int, ...]]]:
    return [(n, tuple(p.shape)) for n, p in model.named_parameters()]


def conv_widths(model: nn.Module) -> list[int]:
    return [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]


def build_variants(ratio: float, quick: bool) -> tuple[nn.Module, dict[str, dict[str, Any]]]:
    dense = dense_resnet50()
    example = torch.randn(1, *SHAPE)
    p0, m0 = count_params(dense).total, count_macs(dense, example).macs
    configs: dict[str, dict[str, Any]] = {"ours": {"type": "structured_prune", "ratio": ratio}}
    if not quick:
        for r in (8, 16):
            configs[f"ours round_to={r}"] = {"type": "structured_prune", "ratio": ratio, "round_to": r}
    configs["ours channels_last"] = {"type": "structured_prune", "ratio": ratio, "channels_last": True}
    variants: dict[str, dict[str, Any]] = {}
    for label, config in configs.items():
        t0 = time.perf_counter()
        result = apply(dense, config, example_inputs=example)
        variants[label] = {
            "model": result.model.eval(),
            "config": config,
            "apply_s": time.perf_counter() - t0,
        }
    t0 = time.perf_counter()
    variants[TP_LABEL] = {
        "model": prune_torch_pruning(dense, ratio, example),
        "config": {
            "library": "torch_pruning",
            "pruner": "MetaPruner",
            "importance": "GroupMagnitudeImportance(p=2)",
            "pruning_ratio": ratio,
            "ignored_layers": ["fc"],
        },
        "apply_s": time.perf_counter() - t0,
    }
    tp_shapes = shapes(variants[TP_LABEL]["model"])
    tp_state = variants[TP_LABEL]["model"].state_dict()
    for label, v in variants.items():
        model = v["model"]
        widths = conv_widths(model)
        v.update(
            params_dense=p0,
            macs_dense=m0,
            params_ratio=count_params(model).total / p0,
            macs_ratio=count_macs(model, example).macs / m0,
            same_shapes_as_torch_pruning=shapes(model) == tp_shapes,
            # bitwise the same model: then "ours vs torch-pruning" is an A/A test of the timing noise
            same_weights_as_torch_pruning=shapes(model) == tp_shapes
            and all(torch.equal(t, tp_state[k]) for k, t in model.state_dict().items()),
            conv_widths_not_multiple_of_8=sum(w % 8 != 0 for w in widths),
            conv_widths_not_multiple_of_16=sum(w % 16 != 0 for w in widths),
            distinct_conv_widths=sorted(set(widths)),
        )
        log(
            f"{label}: params {v['params_ratio']:.4f}, MACs {v['macs_ratio']:.4f} "
            f"(1/{1 / v['macs_ratio']:.3f}), same shapes as Torch-Pruning: {v['same_shapes_as_torch_pruning']} "
            f"(same weights: {v['same_weights_as_torch_pruning']}), "
            f"apply {v['apply_s']:.1f} s"
        )
    return dense, variants


def to_format(model: nn.Module, fmt: str) -> nn.Module:
    return copy.deepcopy(model).to(memory_format=torch.channels_last) if fmt == "channels_last" else model


def pair_row(a: nn.Module, b: nn.Module, x: torch.Tensor, threads: int, budget: float) -> dict[str, Any]:
    pair = measure_latency_pair(
        a, b, x, warmup=3, repeats=10, threads=threads, time_budget_s=budget, max_repeats=400
    )
    s = pair.stats
    return {
        "a_median_ms": pair.a.median_ms,
        "a_p90_ms": pair.a.p90_ms,
        "b_median_ms": pair.b.median_ms,
        "b_p90_ms": pair.b.p90_ms,
        "speedup": s.ratio,  # median of per-pair a_i / b_i (> 1: b faster)
        "ci_low": s.ci_low,
        "ci_high": s.ci_high,
        "pairs": s.pairs,
        "trimmed": s.trimmed,
        "unstable": s.unstable,
        "reasons": s.reasons,
        "verdict": s.verdict,
        "load_before": s.load_before,
        "load_after": s.load_after,
        "describe": s.describe(),
    }


# (row label, base model, pruned model, basis). Bases and variants are keys of `timing_models`.
PAIRS = [
    ("ours", "dense", "ours", "same layout"),
    ("ours round_to=8", "dense", "ours round_to=8", "same layout"),
    ("ours round_to=16", "dense", "ours round_to=16", "same layout"),
    (TP_LABEL, "dense", TP_LABEL, "same layout"),
    ("ours channels_last vs dense", "dense", "ours channels_last", "user's view: NHWC pruned vs NCHW dense"),
    (
        "ours channels_last vs dense channels_last",
        "dense channels_last",
        "ours channels_last",
        "same layout (NHWC weights)",
    ),
    (
        f"{TP_LABEL} channels_last vs dense channels_last",
        "dense channels_last",
        f"{TP_LABEL} channels_last",
        "same layout (NHWC weights)",
    ),
    ("dense channels_last (layout only)", "dense", "dense channels_last", "layout only"),
    (f"ours vs {TP_LABEL}", TP_LABEL, "ours", "direct"),
    (
        f"ours channels_last vs {TP_LABEL} channels_last",
        f"{TP_LABEL} channels_last",
        "ours channels_last",
        "direct",
    ),
    (f"ours channels_last vs {TP_LABEL}", TP_LABEL, "ours channels_last", "direct, layouts differ"),
]


def timing_models(dense: nn.Module, variants: dict[str, dict[str, Any]]) -> dict[str, nn.Module]:
    models = {"dense": dense, "dense channels_last": to_format(dense, "channels_last")}
    models |= {label: v["model"] for label, v in variants.items()}
    # Torch-Pruning has no layout option: its model converted here, as a user of it would
    models[f"{TP_LABEL} channels_last"] = to_format(variants[TP_LABEL]["model"], "channels_last")
    return models


def timing_section(dense: nn.Module, variants: dict[str, dict[str, Any]], args: argparse.Namespace) -> list:
    rows = []
    gen = torch.Generator().manual_seed(0)
    base_models = timing_models(dense, variants)
    macs = {label: v["macs_ratio"] for label, v in variants.items()} | {
        "dense": 1.0,
        "dense channels_last": 1.0,
    }
    macs[f"{TP_LABEL} channels_last"] = variants[TP_LABEL]["macs_ratio"]
    for fmt in args.formats:
        # channels_last format: every model and input NHWC, so the *channels_last variants are duplicates
        pairs = [p for p in PAIRS if p[1] in base_models and p[2] in base_models]
        if fmt == "channels_last":
            pairs = [p for p in pairs if "channels_last" not in p[1] + p[2]]
        models = {k: to_format(m, fmt) for k, m in base_models.items()}
        for threads in args.threads:
            for batch in args.batches:
                x = torch.randn(batch, *SHAPE, generator=gen)
                if fmt == "channels_last":
                    x = x.contiguous(memory_format=torch.channels_last)
                budget = args.budget_b1 if batch == 1 else args.budget
                for label, base, variant, basis in pairs:
                    row = {"format": fmt, "threads": threads, "batch": batch, "variant": label}
                    row |= {"base": base, "pruned": variant, "basis": basis}
                    row |= pair_row(models[base], models[variant], x, threads, budget)
                    text = f"{fmt} t={threads} b={batch} {label}: {row['describe']}"
                    if not basis.startswith(("direct", "layout")):
                        mr = macs[variant] / macs[base]
                        row |= {
                            "macs_ratio": mr,
                            "efficiency": row["speedup"] * mr,
                            "efficiency_ci": [row["ci_low"] * mr, row["ci_high"] * mr],
                        }
                        text += f"; efficiency {row['efficiency']:.3f}"
                    rows.append(row)
                    log(text)
    return rows


def _leaf_inputs(model: nn.Module, x: torch.Tensor) -> dict[str, tuple[nn.Module, torch.Tensor]]:
    seen: dict[str, tuple[nn.Module, torch.Tensor]] = {}
    hooks = [
        m.register_forward_hook(lambda mod, inp, out, n=n: seen.__setitem__(n, (mod, inp[0].clone())))
        for n, m in model.named_modules()
        if not list(m.children())
    ]
    with torch.inference_mode():
        model(x)
    for h in hooks:
        h.remove()
    return seen


def _kind(m: nn.Module) -> str:
    if isinstance(m, nn.Conv2d):
        k, s = m.kernel_size[0], m.stride[0]
        return f"Conv2d {k}x{k}" + (" stride 2" if s > 1 else "")
    return type(m).__name__


def breakdown_section(dense: nn.Module, pruned: nn.Module, threads: int, fmt: str) -> dict[str, Any]:
    """Time of each leaf module alone (min of 7) summed per kind, dense vs pruned, batch 1."""
    x = torch.randn(1, *SHAPE)
    if fmt == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    dense, pruned = to_format(dense, fmt), to_format(pruned, fmt)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a, b = _leaf_inputs(dense, x), _leaf_inputs(pruned, x)
        kinds: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0.0])
        with torch.inference_mode():
            for name, (ma, xa) in a.items():
                mb, xb = b[name]
                for side, (m, inp) in enumerate(((ma, xa), (mb, xb))):
                    m(inp)
                    best = float("inf")
                    for _ in range(7):
                        t0 = time.perf_counter()
                        m(inp)
                        best = min(best, time.perf_counter() - t0)
                    kinds[_kind(ma)][side] += best * 1e3
    finally:
        torch.set_num_threads(before)
    total_a = sum(v[0] for v in kinds.values())
    total_b = sum(v[1] for v in kinds.values())
    out = {
        "format": fmt,
        "threads": threads,
        "sum_dense_ms": total_a,
        "sum_pruned_ms": total_b,
        "kinds": {
            k: {
                "dense_ms": v[0],
                "pruned_ms": v[1],
                "speedup": v[0] / v[1],
                "share_dense": v[0] / total_a,
                "share_pruned": v[1] / total_b,
            }
            for k, v in sorted(kinds.items(), key=lambda kv: -kv[1][1])
        },
    }
    log(
        f"breakdown {fmt} t={threads}: modules alone {total_a:.1f} -> {total_b:.1f} ms ({total_a / total_b:.2f}x)"
    )
    return out


def acceptance(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Issue 15: at batch 1, 1 thread, NCHW inputs: efficiency >= 0.8 and not below Torch-Pruning's."""
    by = {
        r["variant"]: r for r in rows if r["batch"] == 1 and r["threads"] == 1 and r["format"] == "contiguous"
    }
    if "ours" not in by or TP_LABEL not in by:
        return {"checked": False, "why": "batch 1, 1 thread, contiguous was not timed"}

    def verdict(
        row: dict[str, Any] | None, tp_row: dict[str, Any] | None, direct: dict[str, Any] | None
    ) -> dict:
        if row is None or tp_row is None:
            return {"checked": False}
        out = {
            "checked": True,
            "efficiency": row["efficiency"],
            "efficiency_ci": row["efficiency_ci"],
            "torch_pruning_efficiency": tp_row["efficiency"],
            "torch_pruning_efficiency_ci": tp_row["efficiency_ci"],
            "ours_over_torch_pruning_direct": None if direct is None else direct["speedup"],
            "direct_ci": None if direct is None else [direct["ci_low"], direct["ci_high"]],
            "direct_verdict": None if direct is None else direct["verdict"],
            "any_unstable": any(r is not None and r["unstable"] for r in (row, tp_row, direct)),
            "efficiency_at_least_0_8": row["efficiency"] >= 0.8,
            "efficiency_ci_above_0_8": row["efficiency_ci"][0] >= 0.8,
            # identical shapes run identical kernels: "at least Torch-Pruning's" holds unless the direct
            # paired timing says ours is slower (its whole interval below 1)
            "not_slower_than_torch_pruning": direct is not None and not direct["ci_high"] < 1.0,
        }
        out["met"] = bool(out["efficiency_at_least_0_8"] and out["not_slower_than_torch_pruning"])
        return out

    layout = by.get("dense channels_last (layout only)")
    return {
        "defaults (NCHW both sides)": verdict(by["ours"], by[TP_LABEL], by.get(f"ours vs {TP_LABEL}")),
        "channels_last option (NHWC weights both sides)": verdict(
            by.get("ours channels_last vs dense channels_last"),
            by.get(f"{TP_LABEL} channels_last vs dense channels_last"),
            by.get(f"ours channels_last vs {TP_LABEL} channels_last"),
        ),
        "user's view: ours channels_last vs the dense NCHW model": None
        if "ours channels_last vs dense" not in by
        else {
            "speedup": by["ours channels_last vs dense"]["speedup"],
            "efficiency": by["ours channels_last vs dense"]["efficiency"],
            "of which the layout alone on the dense model": None if layout is None else layout["speedup"],
        },
    }


def print_tables(variants: dict[str, dict[str, Any]], rows: list, breakdown: list, verdict: dict) -> None:
    print("\n## shapes: params and MACs ratio (pruned / dense)")
    print(
        f"{'variant':<20s}{'params':>8s}{'MACs':>8s}{'1/MACs':>8s}  same shapes as TP  widths %8 / %16 != 0"
    )
    for label, v in variants.items():
        print(
            f"{label:<20s}{v['params_ratio']:>8.4f}{v['macs_ratio']:>8.4f}{1 / v['macs_ratio']:>8.3f}  "
            f"{str(v['same_shapes_as_torch_pruning']):<18s}{v['conv_widths_not_multiple_of_8']} / "
            f"{v['conv_widths_not_multiple_of_16']}"
        )
    print(
        "\n## latency: speedup = base / pruned (median of paired ratios, 95% CI); efficiency = speedup × MACs ratio"
    )
    print(
        f"{'format':<14s}{'thr':>3s}{'b':>4s}  {'variant':<26s}{'dense ms':>9s}{'pruned ms':>10s}  speedup [95% CI]     eff.  pairs"
    )
    for r in rows:
        eff = f"{r['efficiency']:.3f}" if "efficiency" in r else "  -  "
        flag = " UNSTABLE" if r["unstable"] else ""
        print(
            f"{r['format']:<14s}{r['threads']:>3d}{r['batch']:>4d}  {r['variant']:<50s}{r['a_median_ms']:>9.2f}"
            f"{r['b_median_ms']:>10.2f}  {r['speedup']:.3f} [{r['ci_low']:.3f}-{r['ci_high']:.3f}]  {eff}  "
            f"{r['pairs']}{flag}"
        )
    for bd in breakdown:
        print(
            f"\n## where the time goes, batch 1, {bd['format']}, {bd['threads']} thread(s): modules timed alone"
        )
        print(f"{'kind':<22s}{'dense ms':>9s}{'pruned ms':>10s}{'speedup':>8s}{'share d':>8s}{'share p':>8s}")
        for k, v in bd["kinds"].items():
            print(
                f"{k:<22s}{v['dense_ms']:>9.2f}{v['pruned_ms']:>10.2f}{v['speedup']:>8.2f}"
                f"{v['share_dense']:>8.1%}{v['share_pruned']:>8.1%}"
            )
    print("\n## issue 15 acceptance (batch 1, 1 thread, NCHW inputs)")
    print(json.dumps(verdict, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--ratio", type=float, default=0.5, help="fraction of channels removed")
    parser.add_argument("--batches", default="1,8", help="comma-separated batch sizes")
    parser.add_argument("--threads", default="1", help="comma-separated intra-op thread counts")
    parser.add_argument("--formats", default="contiguous", help="contiguous and/or channels_last")
    parser.add_argument("--budget-b1", type=float, default=12.0, help="timing seconds per pair at batch 1")
    parser.add_argument(
        "--budget", type=float, default=20.0, help="timing seconds per pair at larger batches"
    )
    parser.add_argument("--no-breakdown", action="store_true", help="skip the per-layer-kind breakdown")
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: batch 1, ours and Torch-Pruning only"
    )
    args = parser.parse_args()
    args.batches = [int(b) for b in args.batches.split(",")] if not args.quick else [1]
    args.threads = [int(t) for t in args.threads.split(",")]
    args.formats = [f.strip() for f in args.formats.split(",")]
    if not set(args.formats) <= {"contiguous", "channels_last"}:
        parser.error("--formats takes contiguous and/or channels_last")
    if args.quick:
        args.budget_b1 = min(args.budget_b1, 3.0)
    torch.set_num_threads(args.threads[0])
    notes = machine_notes(args.threads[0], packages=("torchvision", "torch_pruning"))
    notes["shared_machine"] = (
        f"{os.cpu_count()} logical CPUs shared with other jobs (load average recorded before and after, "
        "and per pair): absolute ms are inflated and noisy; read the paired ratios and their intervals"
    )
    log(f"{notes['cpu']}, threads {args.threads}, torch {notes['torch']}, load {notes['load_average']}")
    dense, variants = build_variants(args.ratio, args.quick)
    rows = timing_section(dense, variants, args)
    breakdown = []
    if not args.no_breakdown:
        for fmt in args.formats:
            breakdown.append(breakdown_section(dense, variants["ours"]["model"], args.threads[0], fmt))
    verdict = acceptance(rows)
    notes["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    print_tables(variants, rows, breakdown, verdict)
    elapsed = time.monotonic() - T0
    print(f"\n{elapsed:.0f} s; load average {notes['load_average']} -> {notes['load_average_at_end']}")
    if args.json:
        payload = {
            "benchmark": "structured_resnet50_cpu",
            "machine": notes,
            "settings": {
                "model": "torchvision resnet50(weights=None), seed 0, eval mode",
                "input": list(SHAPE),
                "ratio": args.ratio,
                "batches": args.batches,
                "threads": args.threads,
                "formats": args.formats,
                "budget_b1_s": args.budget_b1,
                "budget_s": args.budget,
                "quick": args.quick,
                "speedup": "median over interleaved pairs of dense_i / pruned_i, bootstrap 95% CI (measure.paired_stats)",
                "efficiency": "speedup × MACs ratio (pruned MACs / dense MACs); 1.0: time falls as fast as MACs",
                "macs": "modelscale.measure.count_macs at batch 1 for every model",
            },
            "variants": {
                label: {k: v for k, v in vals.items() if k != "model"} for label, vals in variants.items()
            },
            "timings": rows,
            "breakdown": breakdown,
            "acceptance": verdict,
            "elapsed_s": elapsed,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=1, allow_nan=False) + "\n")
        log(f"wrote {args.json}")


if __name__ == "__main__":
    main()
