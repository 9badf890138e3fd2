"""Report sections from the model views the runner recorded with each variant's final step
(`measure.model_views.record_views`: weight histograms, first-conv activation maps, agreement and CKA
with the original model on the test split). Nothing here loads a model or data: the report renders
what measurement produced.

Example::

    pairs = model_pairs(doc, runs)        # (run, views) for runs whose final step has views
    weights(doc, pairs); activations(doc, pairs); similarity_section(doc, pairs)
"""

from __future__ import annotations

from typing import Any

from modelscale.report.run_data import RunView
from modelscale.report.sections import Doc
from modelscale.report.tables import DASH, human, percent


def model_pairs(doc: Doc, runs: list[RunView]) -> list[tuple[RunView, dict[str, Any]]]:
    from modelscale.measure.model_views import load_views

    pairs = []
    for r in runs:
        base, final = r.baseline, r.final
        if base is None or final is None or final is base:
            continue
        views = load_views(final.folder) if final.folder is not None else None
        if views is None:
            doc.note(
                f"{r.label}: no model views recorded with its final step (runs before modelscale recorded them, "
                "or the step folder was removed); weights, activations and CKA not shown"
            )
            continue
        for n in views.get("notes", []):
            doc.note(f"{r.label}: {n}")
        pairs.append((r, views))
    return pairs


def weights(doc: Doc, pairs: list[tuple[RunView, dict[str, Any]]]) -> None:
    from modelscale.report import plots

    doc.add("h2", "Weights before and after")
    if not pairs:
        doc.add("p", "No run has both a baseline and a later step with recorded model views.")
        return
    panels, rows = [], []
    for r, views in pairs:
        w = views["weights"]
        for which, step in (("baseline", r.baseline), ("final", r.final)):
            st = w[which]["stats"]
            rows.append(
                [
                    f"{r.label}: {which} ({step.idx}-{step.name})",
                    str(w[which]["tensors"]),
                    human(st["count"]),
                    percent(st["zeros"]),
                    f"{st['mean_abs']:.4g}",
                    f"{st['std']:.4g}",
                    human(st["distinct"]),
                ]
            )
        panels.append({"label": r.label, "histograms": w, "final_step": f"final: {r.final.name}"})
    headers = ["Model", "Weight tensors", "Weights", "Exact zeros", "Mean |w|", "Std", "Distinct values"]
    doc.add("table", headers, rows)
    doc.add(
        "p",
        "Weights of every layer with a weight matrix or kernel, as used in forward (masks, quantization "
        "and low-rank factors folded in, LoRA updates added). Pruning shows as a spike at zero, quantization and clustering as "
        "few distinct values.",
    )
    doc.plot(
        plots.weights_plot,
        "weights.png",
        "Histogram of all weights, baseline (grey) vs final model (red).",
        panels,
    )


def activations(doc: Doc, pairs: list[tuple[RunView, dict[str, Any]]]) -> None:
    from modelscale.report import plots

    shown = False
    for r, views in pairs:
        maps = views.get("activations")
        if not maps or "base" not in maps:
            continue
        if maps["base"].shape[1] != maps["other"].shape[1]:
            doc.note(
                f"{r.label}: the first convolution has {maps['base'].shape[1]} channels in the original and "
                f"{maps['other'].shape[1]} in the final model; channels with the same index are shown side by "
                "side but need not correspond"
            )
        if not shown:
            doc.add("h2", "Activation maps")
            doc.add(
                "p",
                f"Output of the first convolution (`{maps['layer']}`) for one test image of each of the first "
                "classes: the 8 channels with the strongest response in the original model, the compressed "
                "model's same channels below. Red positive, blue negative; one colour scale per map pair.",
            )
            shown = True
        doc.plot(
            plots.activation_plot,
            f"activations_{r.id}.png",
            f"{r.label}: first-convolution feature maps, original vs compressed ({r.final.idx}-{r.final.name}).",
            maps,
            maps["labels"],
            f"{r.label}: first-conv feature maps, original vs compressed",
        )


def similarity_section(doc: Doc, pairs: list[tuple[RunView, Any, Any]]) -> None:
    from modelscale.report import plots

    doc.add("h2", "Agreement and CKA with the original model")
    results = {r.label: (r, views["similarity"]) for r, views in pairs if views.get("similarity")}
    if not results:
        doc.add("p", "No run with both models and its data available.")
        return
    blocks: list[str] = []
    for _, res in results.values():
        blocks += [b for b in res["blocks"] if b not in blocks]
        for n in res.get("notes", []):
            doc.note(n)
    rows = [
        [
            lab,
            f"{r.final.idx}-{r.final.name}",
            human(res["examples"]),
            percent(res["agreement"]),
            f"{res['output_cka']:.4f}" if res["output_cka"] is not None else DASH,
            *[f"{v:.4f}" if (v := res["blocks"].get(b)) is not None else DASH for b in blocks],
        ]
        for lab, (r, res) in results.items()
    ]
    headers = ["Variant", "Final step", "Test examples", "Agreement", "CKA (outputs)"] + [
        f"CKA `{b}`" for b in blocks
    ]
    doc.add("table", headers, rows)
    doc.add(
        "p",
        "Agreement: share of test examples (tokens for language models) on which the final model predicts "
        "the same class as the original. Linear CKA (Kornblith et al., 2019) of each block's output over up "
        "to 500 test examples: 1 means the same representation up to rotation and scale.",
    )
    series = {lab: [res["blocks"].get(b) for b in blocks] for lab, (_, res) in results.items()}
    doc.plot(plots.cka_plot, "cka.png", "Linear CKA with the original model, per block.", blocks, series)
