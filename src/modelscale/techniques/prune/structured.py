"""Structured pruning: physically remove channels, neurons and attention heads (the model gets smaller).

Fang et al., "DepGraph: Towards Any Structural Pruning" (CVPR 2023), through Torch-Pruning. Layers
whose widths must change together (a conv, its BatchNorm, the next conv's inputs, every branch of a
residual add or a concatenation) form one *group*; a group's channel c is scored as the mean over its
members of an importance, e.g. L2 magnitude ``s_c = mean_l ||W_l[c]||_2^2``, Taylor
``s_c = mean_l sum |w · dL/dw|`` or the BatchNorm scale ``|gamma_c|``. With scope="uniform" every
group of C channels keeps ``max(1, floor(C·(1-ratio)))`` (rounded down to a multiple of `round_to`);
with scope="global" all channels are ranked together, so widths differ per layer. The layers that
produce the model's outputs keep their outputs (`keep_head`), so the output shape never changes.
Unlike masks, the pruned model has fewer parameters and MACs and runs faster on any hardware; the
record lists per-layer shapes, parameters and MACs before and after.

Attention: channels are removed evenly from every head (the head count stays), or with `prune_heads`
whole heads go (head width stays). ``nn.MultiheadAttention`` has its attention width tied to the
model width by Torch-Pruning; zoo/BERT-style attention (q/k/v Linear children plus head-count and
head-width attributes) gets `head_dim` updated; fused q/k/v projections (GPT-2) keep their width.
Pruning head width changes the default 1/sqrt(head_dim) attention scale: fine-tune afterwards.

Speed: on CPU, time falls more slowly than MACs (pooling, BatchNorm and layout reorders scale with the
width, convs with its square); `channels_last` stores 4-D weights NHWC, which oneDNN runs with fewer
reorders (benchmarks/structured_resnet50.py measures both against Torch-Pruning on the same shapes).

Saving: the record's `state` holds, per changed module, the new parameter/buffer shapes and plain
attributes (JSON); `restore_structure` resizes a fresh model to them so the weights load strictly.

Example::

    from modelscale import apply
    from modelscale.techniques.prune.structured import StructuredPruneConfig
    x = torch.randn(1, 3, 64, 64)
    result = apply(model, StructuredPruneConfig(ratio=0.3), example_inputs=x)
    print(result.record.summary["params_after"], result.record.summary["macs_ratio"])
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import nn
from torch.nn.utils import parametrize

from modelscale.core.apply import ApplyContext, ChangeRecord
from modelscale.core.config import TechniqueConfig, check_range, param
from modelscale.core.errors import ModelscaleError
from modelscale.core.registry import register
from modelscale.core.select import Target, select_modules
from modelscale.techniques.prune.structure_io import (
    apply_structure,
    retie,
    snapshot,
    structure_diff,
    tied_parameters,
)
from modelscale.techniques.prune.structured_attention import (
    channel_groups,
    find_attention,
    prune_heads,
    sync_attention,
)
from modelscale.techniques.prune.structured_tp import (
    forward_any,
    make_importance,
    output_producers,
    output_tensors,
    trace,
    trace_inputs,
    transposed_linear_types,
)

# Layer kinds whose channels Torch-Pruning can remove; a kind that `target` does not select is frozen.
_WIDTH_LAYERS = (nn.modules.conv._ConvNd, nn.Linear, nn.LSTM, nn.MultiheadAttention, nn.Embedding)


def _default_target() -> Target:
    return Target(types=("Linear", "Conv1d", "Conv2d", "Conv3d", "MultiheadAttention", "Embedding", "Conv1D"))


@dataclass(kw_only=True)
class StructuredPruneConfig(TechniqueConfig):
    """Remove whole channels, neurons or heads with Torch-Pruning's dependency graph."""

    type: ClassVar[str] = "structured_prune"
    version: ClassVar[int] = 1

    target: Target = param(
        factory=_default_target,
        help="layers whose widths may shrink; coupled layers that are not selected keep their width",
    )
    ratio: float = param(
        0.3,
        "fraction in [0, 1) of CHANNELS removed from each group of coupled layers (of parameters with ratio_of=params)",
    )
    ratio_of: Literal["channels", "params"] = param(
        "channels",
        "what `ratio` counts; 'params' searches the channel ratio that removes that share of parameters",
    )
    importance: Literal["l1", "l2", "bn_scale", "taylor"] = param(
        "l2", "channel score: weight L1/L2 norm, BatchNorm |gamma|, or |w·grad| on calibration batches"
    )
    scope: Literal["uniform", "global"] = param(
        "uniform", "remove `ratio` from every group, or rank all channels together so widths differ per layer"
    )
    round_to: int | None = param(
        None, "keep channel counts a multiple of this (hardware-friendly widths), or none"
    )
    keep_head: bool = param(True, "never prune the outputs of the layer(s) producing the model output")
    prune_heads: bool = param(
        False, "remove whole attention heads (a `ratio` share of them) instead of head width"
    )
    iterative_steps: int = param(
        1, "reach `ratio` in this many equal steps (fine-tune between them in a pipeline)"
    )
    calibration_batches: int = param(8, "batches of calibration data used for taylor gradients")
    channels_last: bool = param(
        False,
        "store 4-D weights channels-last (NHWC): CPU oneDNN then runs narrowed convs and pooling without "
        "layout reorders (the pruned model gains more than the dense); inputs need no change",
    )

    def validate(self) -> None:
        check_range("ratio", self.ratio, 0.0, 1.0, hi_open=True)
        check_range("iterative_steps", self.iterative_steps, 1, 1000)
        check_range("calibration_batches", self.calibration_batches, 1)
        if self.round_to is not None:
            check_range("round_to", self.round_to, 1, 4096)
        for pattern, values in self.target.overrides.items():
            extra = sorted(set(values) - {"ratio"})
            if extra:
                raise ModelscaleError(
                    f"override {pattern!r} sets {', '.join(extra)}; structured_prune overrides only 'ratio' per layer"
                )
        if self.target.overrides and (self.scope != "uniform" or self.ratio_of != "channels"):
            raise ModelscaleError(
                "per-layer ratio overrides need scope='uniform' and ratio_of='channels'; drop the overrides or change those"
            )


# --------------------------------------------------------------------------------------------------
# helpers


def count_params(model: nn.Module) -> int:
    """All parameters, tied ones once (the one counter, `modelscale.measure.count_params`)."""
    from modelscale.measure.params import count_params as measure_params

    return measure_params(model).total


def count_macs(model: nn.Module, example_inputs: Any) -> tuple[int, dict[str, int]]:
    """Total multiply-accumulates of one forward on `example_inputs`, and each module's own MACs.

    The one MAC counter, `modelscale.measure.count_macs` (the same number `profile` reports; attention
    counted on every kernel path)."""
    from modelscale.measure.macs import count_macs as measure_macs

    report = measure_macs(model, example_inputs)
    return report.macs, {row.name: row.macs for row in report.layers}


@contextlib.contextmanager
def _no_bare_errors(stage: str) -> Iterator[None]:
    """Turn a failure inside Torch-Pruning or the pruned model's forward into a one-line error."""
    try:
        yield
    except ModelscaleError:
        raise
    except Exception as exc:
        first = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise ModelscaleError(
            f"structured_prune failed: {stage} ({type(exc).__name__}: {first}); exclude the layers of the "
            "block it names with target.exclude, or prune this model with magnitude_prune or lowrank_svd"
        ) from exc


def _accumulate_grads(model: nn.Module, batches: list, loss_fn) -> None:
    """Fill `.grad` with the summed gradient of `loss_fn` over the calibration batches (eval mode)."""
    flags = {p: p.requires_grad for p in model.parameters()}
    for p in flags:
        p.requires_grad_(True)
    model.zero_grad(set_to_none=True)
    try:
        for batch in batches:
            if not isinstance(batch, tuple | list) or len(batch) < 2:
                raise ModelscaleError("taylor importance needs calibration batches of (inputs, targets)")
            loss = loss_fn(forward_any(model, batch[0]), batch[1])
            loss.backward()
    finally:
        for p, flag in flags.items():
            p.requires_grad_(flag)


def _sync_attributes(model: nn.Module, units: list) -> None:
    """Keep attributes that forward() reads consistent with the pruned tensors."""
    sync_attention(units)
    for m in model.modules():
        if type(m).__name__ == "VisionTransformer" and hasattr(m, "conv_proj") and hasattr(m, "hidden_dim"):
            m.hidden_dim = m.conv_proj.out_channels  # torchvision ViT reshapes with this attribute


def _out_width(m: nn.Module) -> int:
    for attr in ("out_channels", "out_features", "embed_dim", "embedding_dim", "hidden_size", "nf"):
        if isinstance(getattr(m, attr, None), int):
            return getattr(m, attr)
    return 0


def _prune_in_place(
    model: nn.Module,
    config: StructuredPruneConfig,
    ctx: ApplyContext,
    ratio: float,
    steps: int,
    batches: list,
) -> tuple[list[dict[str, Any]], list[str]]:
    """Prune `model` in place to channel ratio `ratio` in `steps` steps; returns (steps, notes)."""
    import torch_pruning as tp

    custom = transposed_linear_types(model)
    width_types = (*_WIDTH_LAYERS, *custom)
    selected = {id(m) for _, m in select_modules(model, config.target)}
    ignored = [m for m in model.modules() if isinstance(m, width_types) and id(m) not in selected]
    units = find_attention(model)
    heads_before = {id(u.module): u.heads for u in units}
    ties = tied_parameters(model)
    notes: list[str] = []
    fused = [p for u in units if u.fused for p in u.projections]
    if fused:
        # Torch-Pruning maps channels through a split only along dim 1; q/k/v split off the last dim.
        ignored.extend(fused)
        notes.append(
            f"{len(fused)} fused q/k/v projection(s): attention width kept (its split cannot be traced)"
        )
    extra: dict[str, Any] = {}
    if config.scope == "uniform":
        # One ranking scope per layer. (Torch-Pruning's default per-layer scopes are keyed by the
        # group's root name, and two groups sharing a root overwrite each other.)
        ratios, per_head = {}, channel_groups(units)
        for name, m in model.named_modules():
            if isinstance(m, width_types) and id(m) in selected:
                r = config.target.override_for(name).get("ratio", ratio)
                # Keep >= 1 channel: a group asked to lose all its channels is skipped whole.
                channels = _out_width(m) // per_head.get(m, 1)
                ratios[m] = max(0.0, min(r, 1.0 - 1.0001 / channels)) if channels else r
        extra["pruning_ratio_dict"] = ratios
    was_training = model.training
    frozen_flags = {name: p.requires_grad for name, p in model.named_parameters()}
    model.eval()
    model.requires_grad_(True)  # tracing follows autograd, also through frozen layers
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            pruner = trace(
                tp,
                model,
                trace_inputs(model, ctx.example_inputs),
                importance=make_importance(config.importance, custom),
                global_pruning=config.scope == "global",
                pruning_ratio=ratio,
                iterative_steps=steps,
                ignored_layers=ignored,
                round_to=config.round_to,
                in_channel_groups={},  # fresh dicts: Torch-Pruning's defaults are shared, mutable objects
                out_channel_groups=channel_groups(units),  # every head loses the same channels
                forward_fn=lambda m, x: forward_any(m, x),
                output_transform=output_tensors,
                customized_pruners=dict(custom),
                root_module_types=[nn.modules.conv._ConvNd, nn.Linear, nn.LSTM, *custom],
                **extra,
            )
        for w in caught:
            text = str(w.message)
            if "Unwrapped parameters" in text:
                names = [n.strip(" '") for n in text[text.find("[") + 1 : text.find("]")].split(",")]
                more = f" and {len(names) - 3} more" if len(names) > 3 else ""
                notes.append(
                    f"parameters outside layers ({', '.join(names[:3])}{more}) pruned along their last dimension"
                )
        if config.keep_head:
            for m in output_producers(pruner.DG):
                pruner.ignored_layers.extend(m.modules())
        frozen = list(pruner.ignored_layers)
        if config.prune_heads:
            # Heads are removed whole; the width pass below then leaves attention groups alone.
            for u in units:
                if not u.fused:
                    pruner.ignored_layers.extend(u.projections)
        history = []
        for step in range(steps):
            if config.importance == "taylor":
                _accumulate_grads(model, batches, ctx.loss_fn)
            step_ratio = pruner.per_step_pruning_ratio[step + 1]
            if config.prune_heads and units:
                notes.extend(prune_heads(pruner, units, heads_before, step_ratio, frozen))
                _sync_attributes(model, units)
            for group in pruner.step(interactive=True):
                group.prune()
                _sync_attributes(model, units)
            notes.extend(retie(model, ties))
            history.append(
                {"step": step + 1, "channel_ratio": round(step_ratio, 6), "params": count_params(model)}
            )
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
        for name, p in model.named_parameters():  # pruned layers hold new Parameter objects
            p.requires_grad_(frozen_flags.get(name, True))
    return history, sorted(set(notes), key=notes.index)


def _search_channel_ratio(
    model: nn.Module, config: StructuredPruneConfig, ctx: ApplyContext, batches: list
) -> tuple[float, float]:
    """Bisect the channel ratio whose pruning removes `config.ratio` of the parameters (on copies)."""
    base = count_params(model)

    def removed(r: float) -> float:
        trial = copy.deepcopy(model)
        _prune_in_place(trial, config, ctx, r, 1, batches)
        return 1.0 - count_params(trial) / base

    goal = config.ratio
    lo, hi = 0.0, 0.95
    best_r, best_f = hi, removed(hi)
    if best_f < goal - 0.01:
        raise ModelscaleError(
            f"ratio_of='params': at most {best_f:.1%} of the parameters can be removed with this target; "
            "lower `ratio` or select more layers"
        )
    r = min(max(1.0 - math.sqrt(1.0 - goal), 0.01), hi)  # exact for a chain of equally pruned layers
    for _ in range(12):
        f = removed(r)
        if abs(f - goal) < abs(best_f - goal):
            best_r, best_f = r, f
        if abs(f - goal) <= 0.005:
            break
        lo, hi = (r, hi) if f < goal else (lo, r)
        r = (lo + hi) / 2
    return best_r, best_f


def _check(model: nn.Module, config: StructuredPruneConfig, ctx: ApplyContext) -> list:
    if ctx.example_inputs is None:
        raise ModelscaleError(
            "structured_prune needs example inputs to trace the model; pass example_inputs=<a batch> to apply"
        )
    if any(parametrize.is_parametrized(m) for m in model.modules()):
        raise ModelscaleError(
            "structured_prune cannot resize masked/parametrized layers; run it before mask-based pruning "
            "or call modelscale.techniques.prune.masks.bake_masks(model) first"
        )
    if config.importance == "bn_scale" and not any(
        isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()
    ):
        raise ModelscaleError(
            "importance='bn_scale' needs BatchNorm layers; this model has none (use l1, l2 or taylor)"
        )
    if config.importance != "taylor":
        return []
    if ctx.calibration is None or ctx.loss_fn is None:
        raise ModelscaleError(
            "importance='taylor' needs gradients: pass calibration=[(inputs, targets), ...] and loss_fn to apply"
        )
    batches = list(itertools.islice(iter(ctx.calibration), config.calibration_batches))
    if not batches:
        raise ModelscaleError("importance='taylor' got an empty calibration set; pass at least one batch")
    return batches


def _layer_rows(before, after, changes, macs_before, macs_after, model) -> list[dict[str, Any]]:
    modules = dict(model.named_modules())
    rows = []
    for name, change in changes.items():
        if not change["tensors"]:
            continue
        old = before[name]["tensors"]
        new = after[name]["tensors"]
        params = dict(modules[name].named_parameters(recurse=False))
        rows.append(
            {
                "name": name,
                "type": type(modules[name]).__name__,
                "shapes_before": old,
                "shapes_after": new,
                "params_before": sum(math.prod(old[k]) for k in params if k in old),
                "params_after": sum(p.numel() for p in params.values()),
                "macs_before": macs_before.get(name, 0),
                "macs_after": macs_after.get(name, 0),
            }
        )
    return rows


@register(
    StructuredPruneConfig,
    restore=lambda model, config, record: restore_structure(model, config, record),
    strength="ratio",
)
def structured_prune(model: nn.Module, config: StructuredPruneConfig, ctx: ApplyContext) -> ChangeRecord:
    """Structured pruning with Torch-Pruning: remove channels/neurons/heads, shrinking params and MACs."""
    batches = _check(model, config, ctx)
    before = snapshot(model)
    params_before = count_params(model)
    macs_before, layer_macs_before = count_macs(model, trace_inputs(model, ctx.example_inputs))
    notes: list[str] = []
    channel_ratio = config.ratio
    if config.ratio_of == "params" and config.ratio > 0:
        channel_ratio, found = _search_channel_ratio(model, config, ctx, batches)
        notes.append(f"ratio_of=params: channel ratio {channel_ratio:.4f} removes {found:.2%} of parameters")
    history: list[dict[str, Any]] = []
    if channel_ratio > 0:
        with _no_bare_errors("while removing channels"):
            history, prune_notes = _prune_in_place(
                model, config, ctx, channel_ratio, config.iterative_steps, batches
            )
        notes.extend(prune_notes)
    else:
        notes.append("ratio 0: nothing pruned")
    if config.channels_last:
        notes.append(f"{_to_channels_last(model)} 4-D tensor(s) stored channels-last")
    after = snapshot(model)
    changes = structure_diff(before, after)
    params_after = count_params(model)
    with _no_bare_errors("the pruned model no longer runs"):
        macs_after, layer_macs_after = count_macs(model, trace_inputs(model, ctx.example_inputs))
    rows = _layer_rows(before, after, changes, layer_macs_before, layer_macs_after, model)
    changed = {r["name"] for r in rows}
    kept = [n for n, m in select_modules(model, config.target) if n not in changed and _out_width(m)]
    if kept and channel_ratio > 0:
        shown = ", ".join(kept[:8]) + (f" and {len(kept) - 8} more" if len(kept) > 8 else "")
        notes.append(
            f"{len(kept)} selected layer(s) kept their shape (coupled to the output, an unselected layer, "
            f"or too narrow): {shown}"
        )
    return ChangeRecord(
        technique=config.type,
        config=config.to_dict(),
        layers=rows,
        summary={
            "ratio": config.ratio,
            "ratio_of": config.ratio_of,
            "channel_ratio": channel_ratio,
            "params_before": params_before,
            "params_after": params_after,
            "params_removed_fraction": 1.0 - params_after / max(params_before, 1),
            "macs_before": macs_before,
            "macs_after": macs_after,
            "macs_ratio": macs_after / max(macs_before, 1),
            "layers_changed": len(rows),
            "steps": history,
        },
        notes=notes,
        state={"structure": changes},
    )


def _to_channels_last(model: nn.Module) -> int:
    """Store every 4-D parameter and buffer channels-last (values unchanged); returns how many."""
    count = sum(t.dim() == 4 for t in itertools.chain(model.parameters(), model.buffers()))
    model.to(memory_format=torch.channels_last)
    return count


def restore_structure(model: nn.Module, config: StructuredPruneConfig, record: ChangeRecord) -> None:
    """Resize a fresh model to the recorded pruned shapes so the saved weights load strictly (into
    channels-last tensors where the config asked for them: loading copies into the existing layout)."""
    apply_structure(model, record.state.get("structure", {}))
    if getattr(config, "channels_last", False):
        _to_channels_last(model)
