"""AWQ-style activation-aware scaling: protect the weights that meet large activations, then quantize.

Lin et al., "AWQ: Activation-aware Weight Quantization for LLM Compression and Acceleration" (MLSys 2024).
For the layers that read one input X (q/k/v after a LayerNorm; fc1; out_proj; fc2), with s_x the mean
|x| per input channel and s_w the mean relative weight magnitude |w| / max_group |w| per input channel
(the "duo" scale of AutoAWQ; `duo=False` gives the paper's s_x^α), a per-channel scale

    s = s_x^α / s_w^(1−α)  (normalised by √(max·min)),    y = W x = (W · diag(s)) (diag(s)⁻¹ x)

is chosen on the grid α = k / grid, k = 1 … grid − 1, plus s = 1 (plain round-to-nearest), by

    α* = argmin_α ‖block(X; Q(clip(W·diag(s)))·diag(s)⁻¹) − block(X; W)‖²      (objective="block")

i.e. by the output of the block holding the layers, run on a calibration batch (the paper scores α on the
output of the module holding the group), with every layer searched earlier in the block already rounded.
`objective="layers"` scores Σ_layers ‖(W' − W) X‖² through each layer's Hessian H = 2XXᵀ/n instead.
s = 1 is always a candidate, so the choice is never worse than rounding without scales on its objective.
Q(clip(·)) is the rounding actually stored: round-to-nearest after a per-(row, group) clipping search
(`clip`: the range r·[min, max], r on a grid down to 1 − clip_range, chosen by the group's output error
through diag(s)⁻¹ H diag(s)⁻¹), so α and clipping are searched together (groups of more than
`clip_joint_limit` weights, as in AutoAWQ, choose α on unclipped rounding and clip once after: the joint
search costs minutes on a 25088-wide layer; the record's `awq_clip_search` says which). Where possible diag(s)⁻¹ is
*folded* into the op that produces X — a LayerNorm / RMSNorm's weight and bias, or the rows of a Linear
whose output reaches X linearly (v_proj → out_proj, up_proj → down_proj) — and a fold is accepted only if
the block's output is unchanged on a calibration batch (so a LayerNorm whose output also feeds a residual
is left alone). Otherwise the layers get explicit input scales (`InputScaled`), and then each layer of a
shared input has its own α (`per_layer_alpha`). `quantizer="gptq"` runs GPTQ on the scaled weights with
the scaled inputs' Hessian instead of the final round-to-nearest.

Example::

    from modelscale import apply
    from modelscale.techniques.oneshot.awq import AWQConfig
    result = apply(model, AWQConfig(bits=3, group_size=128), calibration=batches)
    [(r["name"], r["awq_alpha"], r["folded_into"]) for r in result.record.layers]
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, replace
from typing import ClassVar, Literal

import torch
from torch import nn

from modelscale.core.apply import ApplyContext, ChangeRecord
from modelscale.core.config import check_range, param
from modelscale.core.registry import register
from modelscale.techniques.oneshot.awq_clip import clip_rtn, output_error, rtn
from modelscale.techniques.oneshot.calibrate import OneShotConfig, Unit, run_oneshot
from modelscale.techniques.oneshot.gptq import (
    check_obs_fields,
    check_quant_fields,
    quantize_unit,
    record_for,
)
from modelscale.techniques.oneshot.packed import (
    InputScaled,
    is_conv1d,
    layer_features,
    quant_row,
    quantized_layer,
    restore_oneshot_layers,
    set_weight_matrix,
    weight_matrix,
)
from modelscale.techniques.quantize.common import (
    SCALE_DTYPES,
    group_layout,
    quantize_groups,
    replace_module,
)

FOLD_TOLERANCE = 1e-4  # relative change of the block output that still counts as an exact fold


@dataclass(kw_only=True)
class AWQConfig(OneShotConfig):
    """Activation-aware per-channel scales (grid-searched, folded where exact), then RTN or GPTQ."""

    type: ClassVar[str] = "awq"
    version: ClassVar[int] = 1

    bits: int = param(4, "bits per weight: 2, 3, 4 or 8")
    group_size: int = param(128, "weights sharing one scale along each row; 0 = one group per output channel")
    symmetric: bool = param(False, "symmetric codes (no zero point) or asymmetric with a uint8 zero point")
    grid: int = param(20, "α values tried in [0, 1) for the scale s = s_x^α (/ s_w^(1−α) with duo)")
    clip: bool = param(
        True, "search a per-group clipping range by its output error (gptq: during the α search only)"
    )
    clip_grid: int = param(11, "clipping ratios tried per side, evenly from 1 down to 1 - clip_range")
    clip_range: float = param(0.5, "the smallest clipping ratio tried is 1 - clip_range")
    clip_separate: bool = param(
        True, "asymmetric codes: then refine the group's min and max ratios separately"
    )
    clip_joint_limit: int = param(
        4_000_000,
        "groups of at most this many weights search clipping at every α; larger ones once after α",
    )
    objective: Literal["block", "layers"] = param(
        "block", "score each α by the block's output error, or by the summed per-layer output errors"
    )
    duo: bool = param(
        True, "scales s_x^α / s_w^(1−α) with s_w the relative weight magnitude (α = 0 stays s = 1)"
    )
    per_layer_alpha: bool = param(
        True, "layers sharing an input but no fold (explicit input scales) each get their own α"
    )
    quantizer: Literal["rtn", "gptq"] = param("rtn", "how the scaled weights are quantized")
    act_order: bool = param(True, "with gptq: quantize columns by decreasing Hessian diagonal")
    damp: float = param(0.01, "with gptq: damping of the Hessian (×10 on a failed Cholesky)")
    block_size: int = param(128, "with gptq: columns per lazy batch update")
    scale_dtype: Literal["float32", "float16", "bfloat16"] = param(
        "float32", "dtype the scales are stored in"
    )
    kernel: Literal["dequant", "torch"] = param(
        "dequant", "4/8 bits: dequant, or ATen weight-only CPU kernels where a layer fits"
    )

    def validate(self) -> None:
        super().validate()
        check_quant_fields(self.bits, self.group_size)
        check_range("grid", self.grid, 1)
        check_range("clip_grid", self.clip_grid, 1)
        check_range("clip_range", self.clip_range, 0.0, 0.95)
        check_range("clip_joint_limit", self.clip_joint_limit, 0)
        check_obs_fields(self.damp, self.block_size)


def channel_scale(s_x: torch.Tensor, alpha: float, s_w: torch.Tensor | None = None) -> torch.Tensor:
    """s = s_x^α (or s_x^α / s_w^(1−α) with weight magnitudes), normalised by √(max·min) to straddle 1."""
    s = s_x.pow(alpha)
    if s_w is not None:
        s = (s / (s_w.pow(1.0 - alpha) + 1e-4)).clamp(min=1e-4)
    return s / (s.max() * s.min()).sqrt()


def weight_magnitude(weights: list[torch.Tensor], group_size: int) -> torch.Tensor:
    """s_w: per input channel, the mean over rows of |w| relative to its group's max |w|."""
    w = torch.cat(weights).abs()
    rows, cols = w.shape
    group, groups = group_layout(cols, group_size)
    if groups * group != cols:
        return w.div(w.amax(1, keepdim=True) + 1e-6).mean(0)
    g = w.view(rows, groups, group)
    return g.div(g.amax(-1, keepdim=True) + 1e-6).view(rows, cols).mean(0)


def activation_magnitude(stats) -> torch.Tensor:
    """s_x: the mean |x| per input channel (floored at 1e-4)."""
    return (stats.abs / max(stats.rows, 1)).clamp(min=1e-4)


def scaled_weight(w: torch.Tensor, h: torch.Tensor, s: torch.Tensor, config: AWQConfig) -> torch.Tensor:
    """W·diag(s), clipped (with `clip`) on the scaled inputs' Hessian diag(s)⁻¹ H diag(s)⁻¹: what gets rounded."""
    ws = w * s
    if config.clip:
        ws = clip_rtn(ws, h / (s[:, None] * s[None, :]), config)
    return ws


def fake_quantized(w: torch.Tensor, h: torch.Tensor, s: torch.Tensor, config: AWQConfig) -> torch.Tensor:
    """The weight the quantized layer computes with, seen from its unscaled input: Q(clip(W·s)) / s."""
    return rtn(scaled_weight(w, h, s, config), config) / s


def candidate_scales(members, originals, stats, config: AWQConfig):
    """The grid: (0, s = 1) — plain round-to-nearest — then (α, s_x^α [/ s_w^(1−α) with `duo`]), α = k / grid."""
    s_x = activation_magnitude(stats[members[0][0]])
    s_w = weight_magnitude([originals[n] for n, _ in members], config.group_size) if config.duo else None
    yield 0.0, torch.ones_like(s_x)
    for k in range(1, config.grid):
        yield k / config.grid, channel_scale(s_x, k / config.grid, s_w)


def clip_search(members, originals, config: AWQConfig) -> str:
    """ "joint" (clipping searched at every α), "after" (once, after α: AutoAWQ's order) or "off".

    A clipping search costs `clip_grid` (×3 with `clip_separate`) roundings and output errors of the whole
    weight; at every one of `grid` α values that is minutes on a 25088-wide layer, so groups of more than
    `clip_joint_limit` weights choose α on unclipped rounding and clip once for the chosen α."""
    if not config.clip:
        return "off"
    return "joint" if sum(originals[n].numel() for n, _ in members) <= config.clip_joint_limit else "after"


def search_alpha(
    members, originals, stats, config: AWQConfig, score
) -> tuple[float, torch.Tensor, float, float]:
    """(α, s, error at α, error at α = 0): the grid point whose rounded weights Q(clip(W·s))/s score lowest.

    `score` maps {name: rounded weight} to an error; α = 0 is always tried, so the choice is never worse
    than plain round-to-nearest (with clipping when it is searched jointly) on that error."""
    hs = {n: stats[n].hessian() for n, _ in members}
    if clip_search(members, originals, config) == "after":
        config = replace(config, clip=False)
    best, base = None, 0.0
    for alpha, s in candidate_scales(members, originals, stats, config):
        fakes = {n: fake_quantized(originals[n], hs[n], s, config) for n, _ in members}
        err = score(fakes)
        if best is None:
            base = err
        if best is None or err < best[2]:
            best = (alpha, s, err)
    return best[0], best[1], best[2], base


def layers_score(originals, stats):
    """Σ_layers ‖(W' − W) X‖² through each layer's Hessian (objective="layers")."""
    return lambda fakes: sum(output_error(w - originals[n], stats[n].hessian()) for n, w in fakes.items())


def block_score(unit: Unit, members, reference: torch.Tensor):
    """‖block(X; W') − block(X; W)‖² on the unit's probe batch, W' written into the members (objective="block")."""
    modules = dict(members)

    def score(fakes) -> float:
        for n, w in fakes.items():
            set_weight_matrix(modules[n], w)
        return float((unit.probe() - reference).double().pow(2).sum())

    return score


def _shared_input_groups(unit: Unit) -> list[list[tuple[str, nn.Module]]]:
    groups: list[list[tuple[str, nn.Module]]] = []
    for name, module in unit.layers:
        x = unit.first_inputs.get(name)
        for group in groups:
            if x is not None and unit.first_inputs.get(group[0][0]) is x:
                group.append((name, module))
                break
        else:
            groups.append([(name, module)])
    return groups


@contextlib.contextmanager
def _trace(unit: Unit, group_inputs: dict[str, list]):
    """During one probe: each submodule's output (by identity) and call order; each group's input."""
    outputs: dict[int, str] = {}
    order: list[str] = []
    keep: list[torch.Tensor] = []
    handles = []
    for name, module in unit.module.named_modules():

        def post(_m, _a, out, name=name):
            if name not in order:
                order.append(name)
            if isinstance(out, torch.Tensor):
                keep.append(out)
                outputs.setdefault(id(out), name)

        handles.append(module.register_forward_hook(post))
    for lname, box in group_inputs.items():
        module = dict(unit.layers)[lname]
        handles.append(
            module.register_forward_pre_hook(
                lambda _m, args, box=box: box.append(args[0]) if not box else None
            )
        )
    try:
        yield outputs, order
    finally:
        for h in handles:
            h.remove()
        keep.clear()


def _candidates(unit: Unit, group, outputs, order, x) -> list[tuple[str, nn.Module, str]]:
    """Ops before the group that may absorb diag(s)⁻¹: a norm whose output is X, then Linears ending in X's width."""
    prefix = f"{unit.name}." if unit.name and unit.name != "(model)" else ""
    members = {n for n, _ in group}
    in_f = layer_features(group[0][1])[1]
    found = []
    local = {name: m for name, m in unit.module.named_modules()}
    producer = outputs.get(id(x))
    if producer is not None:
        m = local[producer]
        w = getattr(m, "weight", None)
        if isinstance(w, torch.Tensor) and w.dim() == 1 and w.numel() == in_f:
            found.append((prefix + producer, m, "norm"))
    ran = [order.index(n[len(prefix) :]) for n in members if n[len(prefix) :] in order]
    if not ran:
        return found
    first = min(ran)
    for name in reversed(order[:first]):
        m = local[name]
        linear = isinstance(m, nn.Linear) or is_conv1d(m)
        if linear and prefix + name not in members and layer_features(m)[0] == in_f:
            found.append((prefix + name, m, "linear"))
    return found


def _scale_producer(module: nn.Module, kind: str, s: torch.Tensor) -> None:
    with torch.no_grad():
        if kind == "norm":
            module.weight.div_(s.to(module.weight.dtype))
            if getattr(module, "bias", None) is not None:
                module.bias.div_(s.to(module.bias.dtype))
            return
        set_weight_matrix(module, weight_matrix(module) / s[:, None])
        if module.bias is not None:
            module.bias.div_(s.to(module.bias.dtype))


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return float((a - b).norm()) <= FOLD_TOLERANCE * float(b.norm()) + 1e-12


def _trial_scale(n: int) -> torch.Tensor:
    """A fixed, far-from-one scale for testing whether a fold is exact (exactness does not depend on s)."""
    return 1.0 + 0.5 * torch.sin(torch.arange(n, dtype=torch.float32) * 1.3)


def find_fold(unit: Unit, group, candidates, reference: torch.Tensor):
    """The first candidate (name, module, kind) into which diag(s)⁻¹ folds exactly, or None; weights unchanged."""
    s = _trial_scale(layer_features(group[0][1])[1])
    originals = [(m, weight_matrix(m)) for _, m in group]
    for w_module, w in originals:
        set_weight_matrix(w_module, w * s)
    found = None
    for name, module, kind in candidates:
        saved = {k: v.detach().clone() for k, v in module.state_dict().items()}
        _scale_producer(module, kind, s)
        exact = _close(unit.probe(), reference)
        module.load_state_dict(saved)
        if exact:
            found = (name, module, kind)
            break
    for w_module, w in originals:
        set_weight_matrix(w_module, w)
    return found


def _choose_scales(
    unit: Unit, groups, folds, reference, config: AWQConfig, clipped: dict
) -> dict[str, tuple]:
    """Search α for every group (or layer); returns name -> (s, info, fold). Leaves the original weights in place.

    `clipped` gets name -> (W·s, its clipped version) of the chosen rounding (objective="block")."""
    originals = {n: weight_matrix(m) for n, m in unit.layers}
    chosen: dict[str, tuple] = {}
    try:
        for group, fold in zip(groups, folds):
            split = fold is None and config.per_layer_alpha
            for members in [[layer] for layer in group] if split else [group]:
                if config.objective == "block":
                    score = block_score(unit, members, reference)
                else:
                    score = layers_score(originals, unit.stats)
                alpha, s, err, base = search_alpha(members, originals, unit.stats, config, score)
                if config.objective == "block":  # keep the chosen rounding: later searches see it
                    fakes = {}
                    for n, _ in members:
                        ws = originals[n] * s
                        cut = scaled_weight(originals[n], unit.stats[n].hessian(), s, config)
                        clipped[n] = (ws, cut)  # the final rounding reuses it if its weight is unchanged
                        fakes[n] = rtn(cut, config) / s
                    score(fakes)
                info = {
                    "awq_alpha": alpha,
                    "awq_error_ratio": err / base if base else 1.0,
                    "awq_objective": config.objective,
                    "awq_clip_search": clip_search(members, originals, config),
                    "folded_into": fold[0] if fold is not None and alpha > 0 else None,
                }
                for n, _ in members:
                    chosen[n] = (s, info, fold if alpha > 0 else None)
    finally:
        for n, m in unit.layers:
            set_weight_matrix(m, originals[n])
    return chosen


def _restore(model: nn.Module, config: AWQConfig, record: ChangeRecord) -> None:
    restore_oneshot_layers(model, record, config)


@register(AWQConfig, restore=_restore)
def awq(model: nn.Module, config: AWQConfig, ctx: ApplyContext) -> ChangeRecord:
    """AWQ: activation-aware per-channel scales (folded where exact), then RTN with clipping or GPTQ."""
    rows: list[dict] = []
    notes: list[str] = []

    def compress(unit: Unit) -> None:
        groups = _shared_input_groups(unit)
        reference = unit.probe()
        xs: dict[str, list] = {g[0][0]: [] for g in groups}
        traced = unit.module is not None
        if traced:
            with _trace(unit, xs) as (outputs, order):
                unit.probe()
        folds = []
        for group in groups:
            x = xs[group[0][0]][0] if traced and xs[group[0][0]] else None
            cands = _candidates(unit, group, outputs, order, x) if x is not None else []
            folds.append(find_fold(unit, group, cands, reference) if cands else None)
        clipped: dict[str, tuple] = {}
        scales = _choose_scales(unit, groups, folds, reference, config, clipped)
        # folds first (on float weights; a producer that is itself quantized later is rounded with its
        # rows already divided by s, which RTN per row commutes with), then every scaled weight
        done: set[int] = set()
        for name, module in unit.layers:
            s, info, fold = scales[name]
            if fold is not None and id(info) not in done:
                done.add(id(info))
                _scale_producer(fold[1], fold[2], s)
            if info["awq_alpha"] > 0:
                set_weight_matrix(module, weight_matrix(module) * s)
        hessians = {}
        for name, _ in unit.layers:
            s = scales[name][0]
            hessians[name] = unit.stats[name].hessian() / (s[:, None] * s[None, :])
        if config.quantizer == "gptq":
            before = len(rows)
            quantize_unit(model, config, unit, rows, notes, hessians=hessians)
            by_name = {r["name"]: r for r in rows[before:]}
        else:
            by_name = {}
            for name, module in unit.layers:
                w = weight_matrix(module)
                if config.clip:
                    seen = clipped.pop(name, None)
                    same = seen is not None and torch.equal(seen[0], w)
                    w = seen[1] if same else clip_rtn(w, hessians[name], config)
                q, sc, z = quantize_groups(
                    w, bits=config.bits, group_size=config.group_size, symmetric=config.symmetric,
                    scale_dtype=SCALE_DTYPES[config.scale_dtype],
                )  # fmt: skip
                layer = quantized_layer(
                    module, q, sc, z, bits=config.bits, group_size=config.group_size, symmetric=config.symmetric,
                    scale_dtype=config.scale_dtype, kernel=config.kernel,
                )  # fmt: skip
                replace_module(model, name, layer)
                row = quant_row(name, module, layer, symmetric=config.symmetric, group_size=config.group_size,
                                kernel=getattr(layer, "kernel", "dequant"))  # fmt: skip
                rows.append(row)
                by_name[name] = row
        for name, _ in unit.layers:
            s, info, fold = scales[name]
            explicit = info["awq_alpha"] > 0 and fold is None
            by_name[name].update(info, input_scale=explicit)
            if explicit:
                layer = model.get_submodule(name)
                wrapped = InputScaled(layer, 1.0 / s)
                replace_module(model, name, wrapped)
                by_name[name]["bytes"] += wrapped.inv_scale.numel() * 4

    report = run_oneshot(model, config, ctx, technique=config.type, compress=compress)
    folded = sum(1 for r in rows if r.get("folded_into"))
    explicit = sum(1 for r in rows if r.get("input_scale"))
    record = record_for(config, rows, report, report.notes + notes)
    record.summary.update(folded_layers=folded, explicit_scale_layers=explicit)
    if explicit:
        record.notes.append(
            f"{explicit} layer(s) keep an explicit input scale (no exact fold found before them)"
        )
    return record
