"""Compress the largest model, or train a small one? Both, measured side by side at each size.

The family trained from scratch at several sizes (a sweep's points) is compared with compressed
versions of its largest member: structured pruning and low-rank SVD set to each smaller member's
parameter count (`ratio_of="params"`, `rank_by="param_ratio"`), and int8 weight-only quantization.
Every compressed variant gets the same fine-tuning budget (one `TrainConfig`); post-training
quantizers (registered with `trainable=False`: no float weights left to tune) are applied after the
fine-tuning of the other steps of their variant; every variant runs through the one engine. Each model is measured for the same numbers:
weights (parameters, counting quantized weights too), the bytes of its saved weights file (`measure_size`), CPU latency
(median, timed interleaved with the largest model in one process: `measure_latency_pair`) and the
test metric on the same split. A compressed variant competes at the family size nearest to it in
log(serialized bytes) — for float models bytes ∝ parameters, and bytes are the only fair axis for a
quantized one. The winner at a size is the better test metric (accuracy; bits per byte: lower).

Example::

    from modelscale.scaling.compress_or_train import compress_or_train_small
    sweep = run_sweep(cfg, out_dir="runs/scale/cnn")            # save_models=True (the default)
    res = compress_or_train_small(sweep, None, load_data("digits"), finetune=TrainConfig(epochs=5))
    print(res.markdown())                                     # one row per size with its winner
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelscale.core.errors import ModelscaleError


def weight_count(model: Any) -> int:
    """Parameters, counting the weights quantized layers hold as integer buffers (see measure.params)."""
    from modelscale.measure import count_params

    return count_params(model).total


@dataclass
class FrontierResult:
    """Every measured model (`rows`) and, per family size, which of trained-small / compressed wins (`table`)."""

    metric: str  # "accuracy" (higher is better) or "bits_per_byte" (lower is better)
    rows: list[dict[str, Any]]
    table: list[dict[str, Any]]
    settings: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def higher_is_better(self) -> bool:
        return self.metric != "bits_per_byte"

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "rows": self.rows,
            "table": self.table,
            "settings": self.settings,
            "notes": self.notes,
        }

    def markdown(self) -> str:
        from modelscale.core.formatting import human, table

        def m(v: float) -> str:
            return f"{100 * v:.2f}%" if self.higher_is_better else f"{v:.4f}"

        lines = [
            "## Compress the largest model or train a small one",
            "",
            f"Test {self.metric.replace('_', ' ')}; latency = median ms at batch "
            f"{self.settings.get('latency_batch')} on {self.settings.get('threads')} CPU thread(s), each "
            "model timed interleaved with the largest one.",
            "",
        ]
        head = ["size", "trained: params", "bytes", "ms", self.metric, "best compressed", "params", "bytes",
                "ms", self.metric, "winner", "margin"]  # fmt: skip
        body = []
        for t in self.table:
            c = t["compressed"]
            body.append([
                t["label"], human(t["params"]), human(t["bytes"]), f"{t['latency_ms']:.3f}", m(t["metric"]),
                c["name"] if c else "—", human(c["params"]) if c else "—", human(c["bytes"]) if c else "—",
                f"{c['latency_ms']:.3f}" if c else "—", m(c["metric"]) if c else "—", t["winner"],
                (f"{100 * t['margin']:+.2f} pp" if self.higher_is_better else f"{t['margin']:+.4f}") if c else "—",
            ])  # fmt: skip
        lines += [table(head, body), "", "### Every model", ""]
        head = [
            "model",
            "matched to",
            "params",
            "bytes",
            "bytes / matched",
            "ms",
            "speedup vs largest",
            self.metric,
        ]
        body = [
            [r["name"], r.get("matched_to") or "—", human(r["params"]), human(r["bytes"]),
             f"{r['bytes_ratio_to_match']:.2f}" if r.get("bytes_ratio_to_match") else "—",
             f"{r['latency_ms']:.3f}", f"{r['speedup_vs_largest']:.2f}×", m(r["metric"])]
            for r in self.rows
        ]  # fmt: skip
        lines += [table(head, body)]
        if self.notes:
            lines += ["", "Notes:", ""] + [f"- {n}" for n in self.notes]
        return "\n".join(lines) + "\n"


def _family(family_results: Any) -> list[dict[str, Any]]:
    """[{label, model}] from a SweepResult / records (model_path; largest data fraction, lowest seed) or modules."""
    from torch import nn

    from modelscale.models.loading import load_compressed

    points = getattr(family_results, "points", family_results)
    if isinstance(points, dict):
        points = [{"label": k, "model": v} for k, v in points.items()]
    if not isinstance(points, list | tuple) or not points:
        raise ModelscaleError(
            "family_results must be a SweepResult, a list of sweep records or a {label: model} mapping"
        )
    if all(isinstance(p, dict) and isinstance(p.get("model"), nn.Module) for p in points):
        return [{"label": str(p.get("label", i)), "model": p["model"]} for i, p in enumerate(points)]
    top = max(p.get("data_fraction", 1.0) for p in points)
    chosen: dict[tuple, dict[str, Any]] = {}
    for p in points:
        if p.get("data_fraction", 1.0) != top:
            continue
        key = (p.get("width"), p.get("depth"), p.get("phi"))
        if key not in chosen or p.get("seed", 0) < chosen[key].get("seed", 0):
            chosen[key] = p
    out = []
    for p in chosen.values():
        if not p.get("model_path"):
            raise ModelscaleError(
                f"point {p.get('key')} has no saved model; run the sweep with save_models=True"
            )
        label = (
            f"φ={p['phi']:g}"
            if p.get("phi") is not None
            else f"w={p['width']:g}" + (f",d={p['depth']:g}" if p.get("depth", 1.0) != 1.0 else "")
        )
        out.append({"label": label, "model": load_compressed(p["model_path"])})
    return out


def head_name(model: Any, num_outputs: int) -> str | None:
    """Name of the last Linear/Conv2d producing `num_outputs` features (the classifier or lm head), if any."""
    from torch import nn

    found = None
    for name, m in model.named_modules():
        if (isinstance(m, nn.Linear) and m.out_features == num_outputs) or (
            isinstance(m, nn.Conv2d) and m.out_channels == num_outputs
        ):
            found = name
    return found


def default_techniques(model: Any, smaller_params: list[int], *, head: str | None = None) -> list[Any]:
    """Structured pruning and low-rank SVD at each smaller size's parameter count, plus int8 weight-only.

    Pruning keeps the output layer's width (keep_head); low-rank leaves the `head` layer dense (a rank-2
    classifier cannot separate 10 classes) and sets the other layers' kept share so the whole model
    lands near the target (layers where factors would not be smaller stay dense, so it may land above).
    """
    from torch import nn

    from modelscale.core.select import Target
    from modelscale.techniques.lowrank.svd import LowRankSVDConfig
    from modelscale.techniques.prune.structured import StructuredPruneConfig
    from modelscale.techniques.quantize.weight_only import WeightOnlyConfig

    total = weight_count(model)
    factorable = sum(
        m.weight.numel()
        for n, m in model.named_modules()
        if isinstance(m, nn.Linear | nn.Conv2d) and n != head
    )
    target = Target(exclude=(head,)) if head else Target()
    out: list[Any] = []
    for p in sorted(set(smaller_params), reverse=True):
        share = p / total
        out.append(StructuredPruneConfig(ratio=min(1.0 - share, 0.99), ratio_of="params"))
        kept = (p - (total - factorable)) / factorable if factorable else share
        out.append(
            LowRankSVDConfig(target=target, rank_by="param_ratio", param_ratio=min(max(kept, 1e-3), 1.0))
        )
    out.append(WeightOnlyConfig(bits=8, group_size=0))
    return out


def _name(steps: list[Any]) -> str:
    return " + ".join(s.label() for s in steps)


def _compress(largest: Any, steps: list[Any], data: Any, finetune: Any) -> tuple[Any, bool, list[str]]:
    """The engine's run of one variant: its trainable techniques, one fine-tune, then post-training ones."""
    from modelscale.core.registry import get_technique
    from modelscale.engine import Session, finetune_step, run_steps, technique_step
    from modelscale.models.loading import ModelBundle

    trainable = [s for s in steps if get_technique(s.type).trainable]
    tuned = bool(trainable) and finetune is not None
    plan = [technique_step(s) for s in trainable]
    plan += [finetune_step(finetune)] if tuned else []
    plan += [technique_step(s) for s in steps if not get_technique(s.type).trainable]
    spec = dict(getattr(largest, "modelscale_spec", None) or {})
    session = Session(ModelBundle(copy.deepcopy(largest), spec, []), data, progress=False)
    run_steps(session, plan)
    notes = [n for r in session.bundle.records for n in r.notes]
    return session.model, tuned, notes


def compress_or_train_small(
    family_results: Any,
    largest_model_path_or_module: Any,
    data: Any,
    *,
    techniques: list[Any] | None = None,
    finetune: Any = None,
    latency_batch: int = 32,
    repeats: int = 30,
    warmup: int = 5,
    threads: int = 1,
) -> FrontierResult:
    """Measure the family trained from scratch against compressed versions of its largest model.

    family_results: a SweepResult (save_models=True), its records, or {label: nn.Module}.
    largest_model_path_or_module: the model to compress — an nn.Module, a folder saved by
    `save_compressed` (a sweep point's model_path), or None for the largest family member.
    data: the DataBundle the family was trained on (test split scores every model; train split fine-tunes).
    techniques: technique configs (or lists of configs applied in order) — default `default_techniques`.
    finetune: the TrainConfig every compressed variant is fine-tuned with (default: 5 epochs AdamW 1e-3).
    """
    import torch
    from torch import nn

    from modelscale.core.registry import config_from_dict
    from modelscale.measure import measure_latency_pair
    from modelscale.models.loading import load_compressed
    from modelscale.train import TrainConfig, evaluate

    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ModelscaleError(f"threads must be an integer >= 1, got {threads!r}")
    family = _family(family_results)
    for f in family:
        f["weights"] = weight_count(f["model"])
    family.sort(key=lambda f: f["weights"])
    largest = largest_model_path_or_module
    if largest is None:
        largest = family[-1]["model"]
    elif isinstance(largest, str | Path):
        largest = load_compressed(largest)
    if not isinstance(largest, nn.Module):
        raise ModelscaleError(
            "largest_model_path_or_module must be an nn.Module, a saved model folder or None"
        )
    largest.eval()
    finetune = TrainConfig(epochs=5, batch_size=32, lr=1e-3, progress=False) if finetune is None else finetune
    big = weight_count(largest)
    if techniques is None:
        head = head_name(largest, data.num_classes)
        techniques = default_techniques(
            largest, [f["weights"] for f in family if f["weights"] < big], head=head
        )
    variants = []
    for t in techniques:
        steps = t if isinstance(t, list | tuple) else [t]
        variants.append([config_from_dict(s) if isinstance(s, dict) else s for s in steps])
    task = data.task
    metric = "bits_per_byte" if task == "lm" else "accuracy"
    n = min(latency_batch, len(data.test))
    example = torch.stack([data.test[i][0] for i in range(n)])
    notes: list[str] = []
    rows: list[dict[str, Any]] = []

    def measure(name: str, model: nn.Module, kind: str, **extra: Any) -> dict[str, Any]:
        model.eval()
        scores = evaluate(model, data.test, task=task, device="cpu")
        pair = measure_latency_pair(largest, model, example, warmup=warmup, repeats=repeats, threads=threads)
        return {
            "name": name,
            "kind": kind,
            "params": weight_count(model),
            "bytes": _file_bytes(model),
            "latency_ms": pair.b.median_ms,
            "latency_p90_ms": pair.b.p90_ms,
            "speedup_vs_largest": pair.speedup,
            "metric": scores[metric],
            "test_loss": scores["loss"],
            **extra,
        }

    for f in family:
        rows.append(measure(f"trained {f['label']}", f["model"], "trained", label=f["label"]))
    for steps in variants:
        t0 = time.perf_counter()
        try:
            model, tuned, step_notes = _compress(largest, steps, data, finetune)
        except ModelscaleError as exc:
            notes.append(f"{_name(steps)} skipped: {exc}")
            continue
        row = measure(
            _name(steps), model, "compressed", technique=steps[0].type if len(steps) == 1 else _name(steps)
        )
        row.update(finetuned=tuned, configs=[s.to_dict() for s in steps], seconds=time.perf_counter() - t0)
        notes += [f"{row['name']}: {note}" for note in step_notes]
        rows.append(row)
    trained = [r for r in rows if r["kind"] == "trained"]
    for r in rows:
        if r["kind"] == "compressed":
            match = min(trained, key=lambda t: abs(math.log(r["bytes"] / t["bytes"])))
            r["matched_to"], r["bytes_ratio_to_match"] = match["label"], r["bytes"] / match["bytes"]
    sign = 1.0 if metric != "bits_per_byte" else -1.0
    table = []
    for t in trained:
        rivals = [r for r in rows if r.get("matched_to") == t["label"]]
        best = max(rivals, key=lambda r: sign * r["metric"]) if rivals else None
        margin = (best["metric"] - t["metric"]) if best else None
        if best is None:
            winner = "trained (no compressed variant at this size)"
        elif sign * margin > 0:
            winner = f"compressed: {best['name']}"
        elif margin == 0:
            winner = "tie (trained is simpler)"
        else:
            winner = "trained small"
        table.append({
            "label": t["label"], "params": t["params"], "bytes": t["bytes"], "latency_ms": t["latency_ms"],
            "metric": t["metric"], "compressed": best, "winner": winner, "margin": margin,
        })  # fmt: skip
    notes.append(
        f"fine-tuning of every non-quantization variant: {finetune.epochs} epochs, {finetune.optimizer} lr "
        f"{finetune.lr:g}, batch {finetune.batch_size}, seed {finetune.seed}; weight_only/dynamic_int8 are post-training"
    )
    notes.append("compressed variants compete at the family size nearest in log(serialized bytes)")
    settings = {"latency_batch": n, "threads": threads, "repeats": repeats, "warmup": warmup,
                "finetune": finetune.to_dict(), "largest_params": big}  # fmt: skip
    return FrontierResult(metric=metric, rows=rows, table=table, settings=settings, notes=notes)


def _file_bytes(model: Any) -> int:
    """The bytes of the weights file a saved folder of `model` holds (the estimate where none can be written)."""
    from modelscale.measure import measure_size

    report = measure_size(model)
    return report.file_bytes if report.file_bytes is not None else report.serialized_bytes
