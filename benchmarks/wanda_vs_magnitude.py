#!/usr/bin/env python3
"""Why Wanda does (MiniLM) or does not (the small zoo gpt) beat magnitude pruning at 50% unstructured.

Wanda scores a weight by |W_ij|·‖X_j‖₂ and compares within each output row; magnitude ranks |W_ij| over
the whole layer. The activation norm can only help when the input features' norms differ a lot (the
outlier features of large LMs). Per model, on the same calibration as `llm_oneshot.py`:

- the end loss of magnitude (per layer, as the paper's baseline), magnitude compared per output row
  (masks computed here from |W|), Wanda per output row (the paper's default), Wanda per layer
  (`group="layer"`, the paper's ablation) and SparseGPT, all on the same layers (every Linear but the
  LM head) at 50% each;
- per pruned layer: the spread of ‖X_j‖₂ over input features (max / median, coefficient of variation),
  and the relative output error E‖ΔW x‖² / E‖W x‖² of the magnitude and Wanda masks on the dense
  model's calibration inputs (real tokens only), so one can see whether Wanda's score lowers the error
  it approximates;
- gpt only (12 layers): the end loss of pruning one layer alone, by magnitude and by Wanda, to show
  where magnitude's loss comes from.

Quality metric as in `llm_oneshot.py`: gpt bits per byte on the held-out pystdlib split (60 batches),
MiniLM 1 − mean cosine of sentence embeddings vs the dense encoder on held-out sentences.

Usage, from the repository root::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/wanda_vs_magnitude.py      # ~10 min on one thread
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import llm_oneshot as bench  # noqa: E402 - the same models, calibration and metrics
from modelscale import apply  # noqa: E402
from modelscale.core.machine import machine_notes  # noqa: E402

DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "wanda_vs_magnitude_cpu.json"
CONFIGS = {
    "magnitude (per layer)": {"type": "magnitude_prune", "amount": 0.5, "scope": "layer"},
    "Wanda (per output row)": {"type": "wanda", "sparsity": 0.5},
    "Wanda (per layer)": {"type": "wanda", "sparsity": 0.5, "group": "layer"},
    "SparseGPT": {"type": "sparsegpt", "sparsity": 0.5},
}


def with_target(config: dict[str, Any], head: str | None, only: str | None = None) -> dict[str, Any]:
    target: dict[str, Any] = {"types": ["Linear", "Conv1D"], "exclude": [head] if head else []}
    if only is not None:
        target["include"] = [only]
    return {**config, "target": target}


def input_second_moments(model: nn.Module, calib: list[Any], layers: list[str]) -> dict[str, torch.Tensor]:
    """E[x xᵀ] (float64) of each layer's input on the dense model, real tokens only."""
    from modelscale.techniques.oneshot.layer_stats import real_rows, token_mask
    from modelscale.techniques.oneshot.sources import call_model, model_inputs

    acc: dict[str, list] = {n: [0, 0] for n in layers}
    current: list[Any] = [None]

    def hook(name: str):
        def fn(_module: Any, args: Any) -> None:
            x = real_rows(args[0].detach(), current[0]).double()
            x = x.reshape(-1, x.shape[-1])
            acc[name][0] = acc[name][0] + x.t() @ x
            acc[name][1] += x.shape[0]

        return fn

    mods = dict(model.named_modules())
    handles = [mods[n].register_forward_pre_hook(hook(n)) for n in layers]
    try:
        with torch.no_grad():
            for batch in calib:
                inputs = model_inputs(batch)
                current[0] = token_mask(inputs)
                call_model(model, inputs)
    finally:
        for h in handles:
            h.remove()
    return {n: c / rows for n, (c, rows) in acc.items()}


def drop_mask(score: torch.Tensor, per_layer: bool) -> torch.Tensor:
    drop = torch.zeros_like(score, dtype=torch.bool)
    if per_layer:
        drop.view(-1)[score.reshape(-1).argsort()[: score.numel() // 2]] = True
    else:
        drop.scatter_(1, score.argsort(dim=1)[:, : score.shape[1] // 2], True)
    return drop


def layer_rows(model: nn.Module, moments: dict[str, torch.Tensor]) -> dict[str, dict[str, float]]:
    mods = dict(model.named_modules())
    out = {}
    for name, c in moments.items():
        w = mods[name].weight.detach().double()
        norm = c.diagonal().clamp_min(0).sqrt()
        energy = float(torch.einsum("ij,jk,ik->", w, c, w))
        row = {
            "norm_max_over_median": float(norm.max() / norm.median()),
            "norm_cv": float(norm.std() / norm.mean()),
        }
        for label, score, per_layer in (
            ("magnitude (per layer)", w.abs(), True),
            ("magnitude (per output row)", w.abs(), False),
            ("Wanda (per output row)", w.abs() * norm[None, :], False),
            ("Wanda (per layer)", w.abs() * norm[None, :], True),
        ):
            dw = w * drop_mask(score, per_layer)
            row[f"rel_output_error {label}"] = float(torch.einsum("ij,jk,ik->", dw, c, dw)) / energy
        out[name] = row
    return out


def magnitude_per_row(model: nn.Module, layers: list[str]) -> nn.Module:
    pruned = copy.deepcopy(model)
    mods = dict(pruned.named_modules())
    with torch.no_grad():
        for name in layers:
            w = mods[name].weight
            w.mul_(~drop_mask(w.abs(), per_layer=False))
    return pruned.eval()


def run_model(name: str, model: nn.Module, calib: list[Any], loss_of, head: str | None, per_layer_runs: bool):
    layers = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n != head]
    losses = {}
    for label, config in CONFIGS.items():
        losses[label] = loss_of(
            apply(copy.deepcopy(model), with_target(config, head), calibration=calib).model.eval()
        )
        print(f"{name:7s} {label:28s} loss {losses[label]:.4f}", flush=True)
    losses["magnitude (per output row)"] = loss_of(magnitude_per_row(model, layers))
    print(
        f"{name:7s} {'magnitude (per output row)':28s} loss {losses['magnitude (per output row)']:.4f}",
        flush=True,
    )
    rows = layer_rows(model, input_second_moments(model, calib, layers))
    if per_layer_runs:
        for layer in layers:
            for label in ("magnitude (per layer)", "Wanda (per output row)"):
                cfg = with_target(CONFIGS[label], head, only=layer)
                rows[layer][f"loss pruned alone {label}"] = loss_of(
                    apply(copy.deepcopy(model), cfg, calibration=calib).model.eval()
                )
            print(
                f"{name:7s} {layer:28s} " + json.dumps({k: round(v, 4) for k, v in rows[layer].items()}),
                flush=True,
            )
    ratio = sorted(
        r["rel_output_error Wanda (per output row)"] / r["rel_output_error magnitude (per layer)"]
        for r in rows.values()
    )
    spread = sorted(r["norm_max_over_median"] for r in rows.values())
    summary = {
        "wanda_over_magnitude_loss": losses["Wanda (per output row)"] / losses["magnitude (per layer)"],
        "criterion_wanda_at_most_half_of_magnitude": losses["Wanda (per output row)"]
        <= 0.5 * losses["magnitude (per layer)"],
        "median_layer_output_error_ratio_wanda_over_magnitude": ratio[len(ratio) // 2],
        "median_layer_norm_max_over_median": spread[len(spread) // 2],
    }
    if per_layer_runs:
        alone = {n: r["loss pruned alone magnitude (per layer)"] for n, r in rows.items()}
        blocks: dict[str, float] = {}
        for n, v in alone.items():
            blocks[n.rsplit(".", 2)[0]] = blocks.get(n.rsplit(".", 2)[0], 0.0) + v
        summary["magnitude_loss_pruned_alone_sum_by_block"] = blocks
        summary["magnitude_loss_pruned_alone_largest_layer"] = max(alone, key=alone.get)
    return {"losses": losses, "summary": summary, "per_layer": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="gpt,minilm")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON)
    args = parser.parse_args()
    torch.manual_seed(0)
    from modelscale.data import make_loader
    from modelscale.measure.lm_quality import compare_embeddings, embed

    result: dict[str, Any] = {"benchmark": "wanda_vs_magnitude_cpu", "models": {}}
    if "gpt" in args.models:
        model, data = bench.gpt_model()
        calib = [b for _, b in zip(range(8), make_loader(data.train, batch_size=16, shuffle=True, seed=0))]
        base = bench.gpt_quality(model, data, 60)["bits_per_byte"]

        def gpt_loss(m: nn.Module) -> float:
            return bench.gpt_quality(m, data, 60)["bits_per_byte"] - base

        result["models"]["gpt"] = {"metric": "bits per byte increase", "baseline_bits_per_byte": base,
                                   **run_model("gpt", model, calib, gpt_loss, "lm_head", True)}  # fmt: skip
    if "minilm" in args.models:
        model, calib, held_out = bench.minilm()
        reference = embed(model, held_out)

        def minilm_loss(m: nn.Module) -> float:
            return 1.0 - compare_embeddings(reference, embed(m, held_out)).mean_cosine

        result["models"]["minilm"] = {"metric": "1 - mean cosine vs dense",
                                      **run_model("minilm", model, calib, minilm_loss, None, False)}  # fmt: skip
    result["machine"] = {**machine_notes(torch.get_num_threads()), "load_after": os.getloadavg()}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v["summary"] for k, v in result["models"].items()}, indent=2))


if __name__ == "__main__":
    main()
