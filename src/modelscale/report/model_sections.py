"""Report sections that load the saved step models: weight histograms, first-conv activation maps,
and agreement / CKA with the original model on each run's test split.

Example::

    pairs = model_pairs(doc, runs)        # (run, baseline bundle, final bundle), at most MAX_MODEL_RUNS
    weights(doc, pairs); activations(doc, pairs); similarity_section(doc, pairs)
"""

from __future__ import annotations

import json
from typing import Any

from modelscale.report.run_data import RunView
from modelscale.report.sections import Doc
from modelscale.report.tables import DASH, human, percent

MAX_MODEL_RUNS = 6  # runs whose models are loaded for weights, activations and CKA


def load_data(doc: Doc, run: RunView) -> Any:
    from modelscale.engine.specs import DataSection

    key = json.dumps(run.config.get("data", {}), sort_keys=True)
    if key not in doc.data:
        try:
            doc.data[key] = DataSection.from_dict(run.config.get("data", {})).load()
        except Exception as exc:  # noqa: BLE001 - data moved or missing: the model sections are skipped
            doc.note(f"{run.label}: cannot load its data ({exc}); agreement, CKA and activation maps skipped")
            doc.data[key] = None
    return doc.data[key]


def model_pairs(doc: Doc, runs: list[RunView]) -> list[tuple[RunView, Any, Any]]:
    from modelscale.report.model_views import load_step_model

    pairs = []
    for r in runs:
        base, final = r.baseline, r.final
        if base is None or final is None or final is base:
            continue
        if len(pairs) == MAX_MODEL_RUNS:
            doc.note(
                f"models of {r.label} and later runs not loaded (at most {MAX_MODEL_RUNS} runs per report)"
            )
            break
        if base.folder is None or final.folder is None:
            doc.note(f"{r.label}: checkpoint folders missing; weights, activations and CKA skipped")
            continue
        try:
            pairs.append(
                (r, load_step_model(base.folder, doc.models), load_step_model(final.folder, doc.models))
            )
        except Exception as exc:  # noqa: BLE001 - a model that no longer loads is a note, not a lost report
            doc.note(f"{r.label}: cannot load its saved models ({exc}); weights, activations and CKA skipped")
    return pairs


def weights(doc: Doc, pairs: list[tuple[RunView, Any, Any]]) -> None:
    import numpy as np

    from modelscale.report import plots
    from modelscale.report.model_views import layer_weights, pooled, weight_stats

    doc.add("h2", "Weights before and after")
    if not pairs:
        doc.add("p", "No run has both a baseline and a later step model on disk.")
        return
    panels, rows = [], []
    rng = np.random.default_rng(0)
    for r, base, final in pairs:
        values = {}
        for which, bundle, step in (("baseline", base, r.baseline), ("final", final, r.final)):
            weights = layer_weights(bundle.model)
            v = pooled(weights)
            st = weight_stats(v)
            values[which] = v if v.size <= 2_000_000 else rng.choice(v, 2_000_000, replace=False)
            rows.append(
                [
                    f"{r.label}: {which} ({step.idx}-{step.name})",
                    str(len(weights)),
                    human(st["count"]),
                    percent(st["zeros"]),
                    f"{st['mean_abs']:.4g}",
                    f"{st['std']:.4g}",
                    human(st["distinct"]),
                ]
            )
        panels.append(
            {
                "label": r.label,
                "base": values["baseline"],
                "final": values["final"],
                "final_step": f"final: {r.final.name}",
            }
        )
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


def activations(doc: Doc, pairs: list[tuple[RunView, Any, Any]]) -> None:
    from modelscale.report import plots
    from modelscale.report.model_views import first_conv_maps, is_image_cnn, pick_examples

    shown = False
    for r, base, final in pairs:
        data = load_data(doc, r)
        if data is None or not is_image_cnn(base.model, data):
            continue
        inputs, labels = pick_examples(data.test, 3)
        maps = first_conv_maps(base.model, final.model, inputs)
        if maps is None:
            doc.note(
                f"{r.label}: the first convolution is not present by name in the final model; no activation maps"
            )
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
            labels,
            f"{r.label}: first-conv feature maps, original vs compressed",
        )


def similarity_section(doc: Doc, pairs: list[tuple[RunView, Any, Any]]) -> None:
    from modelscale.report import plots
    from modelscale.report.model_views import similarity

    doc.add("h2", "Agreement and CKA with the original model")
    results = {}
    for r, base, final in pairs:
        data = load_data(doc, r)
        if data is None:
            continue
        results[r.label] = (r, similarity(base.model, final.model, data))
    if not results:
        doc.add("p", "No run with both models and its data available.")
        return
    blocks: list[str] = []
    for _, res in results.values():
        blocks += [b for b in res["blocks"] if b not in blocks]
        for n in res["notes"]:
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
