"""Looks inside two models — the original and a compressed one — for the report: weights, feature
maps, agreement and CKA. Pure measurement: plain numbers and arrays out, nothing changes the models.
The recipe runner calls `record_views` once per variant and saves the result with the final step
(`views.json` + `views.npz`); the report only renders what was recorded.

- `layer_weights(model)`: every weight matrix / kernel as used in forward (masks, quantization and
  low-rank factors folded in through the module's `weight`, LoRA updates added), by layer.
- `first_conv_maps(base, other, inputs)`: the first Conv2d's output maps of both models.
- `similarity(base, other, data)`: agreement of predictions and linear CKA per top-level block.

Example::

    views = record_views(base_model, final_model, data, folder)   # writes folder/views.json + views.npz
    print(views["similarity"]["agreement"])
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

SKIP_BLOCKS = (nn.Identity, nn.Dropout, nn.ReLU, nn.GELU, nn.Flatten)
VIEWS_JSON, VIEWS_NPZ = "views.json", "views.npz"
HIST_BINS = 80


def layer_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """Effective weight (dim >= 2) of each weight layer, by module name; inner modules of a layer whose
    `weight` is computed (quantized, low-rank, masked) are not counted again."""
    out: dict[str, torch.Tensor] = {}
    taken: list[str] = []
    with torch.no_grad():
        for name, module in model.named_modules():
            if any(name.startswith(t + ".") for t in taken):
                continue
            try:
                weight = getattr(module, "weight", None)
            except Exception:  # noqa: BLE001 - a computed weight that cannot be formed is just not shown
                weight = None
            if isinstance(weight, torch.Tensor) and weight.dim() >= 2:
                out[name] = (weight.detach().float() + _adapter_delta(module, weight)).cpu()
                taken.append(name)
    return out


def _adapter_delta(module: nn.Module, weight: torch.Tensor) -> torch.Tensor | float:
    """The unmerged update of a PEFT LoRA-style layer (its `weight` is the frozen base), else 0."""
    if not (hasattr(module, "get_delta_weight") and hasattr(module, "lora_A")):
        return 0.0
    delta: torch.Tensor | float = 0.0
    for adapter in getattr(module, "active_adapters", []):
        if adapter in getattr(module, "lora_A", {}) or adapter in getattr(module, "lora_embedding_A", {}):
            try:
                d = module.get_delta_weight(adapter).detach().float()
            except Exception:  # noqa: BLE001 - an adapter kind without a dense delta: base weight only
                continue
            if d.shape == weight.shape:
                delta = delta + d
    return delta


def pooled(weights: dict[str, torch.Tensor]) -> np.ndarray:
    if not weights:
        return np.zeros(0, dtype=np.float32)
    return torch.cat([w.reshape(-1) for w in weights.values()]).numpy()


def weight_stats(values: np.ndarray) -> dict[str, float]:
    n = int(values.size)
    return {
        "count": float(n),
        "zeros": float((values == 0).sum()) / n if n else float("nan"),
        "mean_abs": float(np.abs(values).mean()) if n else float("nan"),
        "std": float(values.std()) if n else float("nan"),
        "max_abs": float(np.abs(values).max()) if n else float("nan"),
        "distinct": float(np.unique(values).size) if n else 0.0,
    }


def first_conv_name(model: nn.Module) -> str | None:
    return next((n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)), None)


def is_image_cnn(model: nn.Module, data: Any) -> bool:
    shape = tuple(getattr(data, "input_shape", ()))
    return (
        getattr(data, "task", "") == "classification"
        and len(shape) == 3
        and first_conv_name(model) is not None
    )


def pick_examples(dataset: Any, count: int = 3) -> tuple[torch.Tensor, list[int]]:
    """The first test example of each of the first `count` distinct classes: (inputs, labels)."""
    xs, labels = [], []
    for i in range(len(dataset)):
        x, y = dataset[i]
        if int(y) not in labels:
            xs.append(x)
            labels.append(int(y))
            if len(labels) == count:
                break
    return torch.stack(xs), labels


def _module_output(model: nn.Module, name: str, x: torch.Tensor) -> torch.Tensor:
    from modelscale.measure._common import logits_of
    from modelscale.measure.similarity import find_module

    got: list[torch.Tensor] = []
    handle = find_module(model, name).register_forward_hook(
        lambda _m, _i, out: got.append(logits_of(out).detach().float().cpu())
    )
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    return got[0]


def first_conv_maps(base: nn.Module, other: nn.Module, inputs: torch.Tensor) -> dict[str, Any] | None:
    """Output maps (N, C, H, W) of the base model's first Conv2d and of the same-named module in `other`."""
    name = first_conv_name(base)
    if name is None or name not in dict(other.named_modules()):
        return None
    a = _module_output(base, name, inputs)
    b = _module_output(other, name, inputs)
    if a.dim() != 4 or b.dim() != 4:
        return None
    return {"layer": name, "base": a.numpy(), "other": b.numpy(), "inputs": inputs.float().cpu().numpy()}


def comparable_blocks(a: nn.Module, b: nn.Module, limit: int = 6) -> list[str]:
    """Top-level blocks present in both models by name, in definition order; a container child
    (Sequential / ModuleList / ModuleDict) is replaced by its own children. At most `limit`, evenly spread."""
    names: list[str] = []

    def has_params(m: nn.Module) -> bool:
        return any(True for _ in m.parameters())

    for name, child in a.named_children():
        container = isinstance(child, nn.Sequential | nn.ModuleList | nn.ModuleDict)
        if container and sum(has_params(c) for c in child.children()) > 1:
            names += [f"{name}.{sub}" for sub, _ in child.named_children()]
        else:
            names.append(name)
    in_b = dict(b.named_modules())
    in_a = dict(a.named_modules())
    keep = [n for n in names if n in in_b and not isinstance(in_a[n], SKIP_BLOCKS)]
    if len(keep) > limit:
        picks = np.linspace(0, len(keep) - 1, limit).round().astype(int)
        keep = [keep[i] for i in sorted(set(picks.tolist()))]
    return keep


def block_outputs(
    model: nn.Module, names: list[str], loader: Any, *, max_batches: int | None, max_examples: int
) -> dict[str, torch.Tensor]:
    """(n, features) outputs of each named module over the loader's inputs, captured in one pass."""
    import contextlib

    from modelscale.measure._common import inputs_for, prepared
    from modelscale.measure.quality import iter_batches
    from modelscale.measure.similarity import capture

    dev = torch.device("cpu")
    stores: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    with contextlib.ExitStack() as stack:
        ready = stack.enter_context(prepared(model, dev, None))
        for n in names:
            stack.enter_context(capture(ready, n, stores[n], max_examples))
        stack.enter_context(torch.no_grad())
        seen = 0
        for x, _ in iter_batches(loader, max_batches):
            if seen >= max_examples:
                break
            ready(*inputs_for(ready, x, dev, None))
            seen += int(x.shape[0]) if isinstance(x, torch.Tensor) else max_examples
    return {n: torch.cat(v) for n, v in stores.items() if v}


def similarity(
    base: nn.Module,
    other: nn.Module,
    data: Any,
    *,
    blocks: int = 6,
    max_batches: int = 8,
    examples: int = 500,
) -> dict[str, Any]:
    """Agreement with `base` on the test split, CKA of outputs and of each comparable block (one pass
    per model for all blocks; CKA over the first `examples` test examples)."""
    from torch.utils.data import DataLoader

    from modelscale.measure.similarity import linear_cka, paired_pass

    batch = 64 if data.task == "lm" else 256
    loader = DataLoader(data.test, batch_size=batch, shuffle=False)
    limit = max_batches if data.task == "lm" else None
    paired = paired_pass(base, other, loader, task=data.task, max_batches=limit, cka_examples=examples)
    names = comparable_blocks(base, other, blocks)
    notes: list[str] = []
    per_block: dict[str, float | None] = {}
    kwargs = {"max_batches": limit, "max_examples": examples}
    try:
        acts_a, acts_b = (
            block_outputs(base, names, loader, **kwargs),
            block_outputs(other, names, loader, **kwargs),
        )
    except Exception as exc:  # noqa: BLE001 - blocks that cannot be hooked: agreement still stands
        acts_a, acts_b = {}, {}
        notes.append(
            f"CKA per block not computed: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
        )
    for name in names:
        if name in acts_a and name in acts_b:
            n = min(acts_a[name].shape[0], acts_b[name].shape[0])
            per_block[name] = linear_cka(acts_a[name][:n], acts_b[name][:n])
        else:
            per_block[name] = None
    return {
        "agreement": paired.agreement,
        "examples": paired.a.examples,
        "base_accuracy": paired.a.accuracy,
        "other_accuracy": paired.b.accuracy,
        "output_cka": paired.cka,
        "blocks": per_block,
        "notes": notes,
    }


def weight_histograms(base: nn.Module, final: nn.Module, *, bins: int = HIST_BINS) -> dict[str, Any]:
    """Both models' pooled weights on common bins (0.05-99.95 percentile range), with their stats."""
    values = {"baseline": pooled(layer_weights(base)), "final": pooled(layer_weights(final))}
    both = np.concatenate(list(values.values()))
    lo, hi = np.percentile(both, [0.05, 99.95]) if both.size > 1 else (-1.0, 1.0)
    if not hi > lo:
        lo, hi = float(lo) - 1.0, float(hi) + 1.0
    edges = np.linspace(lo, hi, bins + 1)
    out: dict[str, Any] = {"edges": edges.tolist()}
    for which, v in values.items():
        counts, _ = np.histogram(v, bins=edges)  # the 0.1% outside the range are left out, as shown
        out[which] = {
            "counts": counts.tolist(),
            "stats": weight_stats(v),
            "tensors": len(layer_weights(base if which == "baseline" else final)),
        }
    return out


def record_views(base: nn.Module, final: nn.Module, data: Any, folder: Any) -> dict[str, Any]:
    """Measure the views of `final` against `base` on `data`'s test split; save them into `folder`."""
    import json

    folder = Path(folder)
    base, final = base.eval(), final.eval()
    views: dict[str, Any] = {"weights": weight_histograms(base, final), "notes": []}
    arrays: dict[str, np.ndarray] = {}
    if data is not None:
        views["similarity"] = similarity(base, final, data)
        if is_image_cnn(base, data):
            inputs, labels = pick_examples(data.test, 3)
            maps = first_conv_maps(base, final, inputs)
            if maps is None:
                views["notes"].append("the first convolution is not present by name in the final model")
            else:
                views["activations"] = {"layer": maps["layer"], "labels": labels}
                arrays = {"base": maps["base"], "other": maps["other"], "inputs": maps["inputs"]}
    tmp = folder / (VIEWS_JSON + ".tmp")
    tmp.write_text(json.dumps(views, allow_nan=True))
    if arrays:
        np.savez_compressed(folder / VIEWS_NPZ, **arrays)
    tmp.replace(folder / VIEWS_JSON)
    return views


def load_views(folder: Any) -> dict[str, Any] | None:
    """The views saved in a step folder (arrays of the activation maps included), or None."""
    import json

    folder = Path(folder)
    if not (folder / VIEWS_JSON).is_file():
        return None
    views = json.loads((folder / VIEWS_JSON).read_text())
    if "activations" in views and (folder / VIEWS_NPZ).is_file():
        with np.load(folder / VIEWS_NPZ, allow_pickle=False) as npz:
            views["activations"].update({k: npz[k] for k in ("base", "other", "inputs")})
    return views
