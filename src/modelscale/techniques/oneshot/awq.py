"""AWQ-style activation-aware scaling: protect the weights that meet large activations, then quantize.

Lin et al., "AWQ: Activation-aware Weight Quantization for LLM Compression and Acceleration" (MLSys 2024).
For the layers that read one input X (q/k/v after a LayerNorm; fc1; out_proj; fc2), with s_x the mean
|x| per input channel, a per-channel scale s = s_x^α (normalised by √(max·min)) is applied as

    y = W x = (W · diag(s)) (diag(s)⁻¹ x),      α* = argmin_α Σ_layers ‖(Q(W·diag(s)) · diag(s)⁻¹ − W) X‖²

with α on a grid over [0, 1) (α = 0 is plain round-to-nearest, so the chosen scale is never worse on this
objective). The error uses the calibration Hessian H = 2XXᵀ/n: ‖D X‖² ∝ Σ_rows (D H Dᵀ). Where possible
diag(s)⁻¹ is *folded* into the op that produces X — a LayerNorm / RMSNorm's weight and bias, or the rows of
a Linear whose output reaches X linearly (v_proj → out_proj, up_proj → down_proj) — and the fold is
accepted only if the block's output is unchanged on a calibration batch (so a LayerNorm whose output also
feeds a residual is left alone). Otherwise the layer gets an explicit input scale (`InputScaled`). Then
the scaled weights are quantized: round-to-nearest with a per-group clipping search (`clip`), or GPTQ on
the scaled inputs' Hessian diag(s)⁻¹ H diag(s)⁻¹ (`quantizer="gptq"`).

Example::

    from modelscale import apply
    from modelscale.techniques.oneshot.awq import AWQConfig
    result = apply(model, AWQConfig(bits=3, group_size=128), calibration=batches)
    [(r["name"], r["awq_alpha"], r["folded_into"]) for r in result.record.layers]
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import nn

from modelscale.core.apply import ApplyContext, ChangeRecord
from modelscale.core.config import check_range, param
from modelscale.core.registry import register
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
    dequantize_groups,
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
    grid: int = param(20, "α values tried in [0, 1) for the scale s = s_x^α")
    clip: bool = param(True, "with rtn: search a per-group clipping range that minimises the output error")
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
        check_obs_fields(self.damp, self.block_size)


def _rtn(w: torch.Tensor, config: AWQConfig) -> torch.Tensor:
    q, s, z = quantize_groups(
        w, bits=config.bits, group_size=config.group_size, symmetric=config.symmetric,
        scale_dtype=SCALE_DTYPES[config.scale_dtype],
    )  # fmt: skip
    return dequantize_groups(q, s, z, group_size=group_layout(w.shape[1], config.group_size)[0])


def _output_error(d: torch.Tensor, h: torch.Tensor) -> float:
    """Σ_rows d H dᵀ: the layer output error ‖d X‖² up to the constant n/2."""
    return float(((d @ h) * d).sum())


def search_alpha(group, stats, config: AWQConfig) -> tuple[float, torch.Tensor, float, float]:
    """(α, s, error at α, error at α = 0) for layers sharing one input, on the grid α = k / grid."""
    first = stats[group[0][0]]
    s_x = (first.abs / max(first.rows, 1)).clamp(min=1e-4)
    weights = [(weight_matrix(m), stats[n].hessian()) for n, m in group]
    best = (0.0, torch.ones_like(s_x), float("inf"))
    base = float("inf")
    for k in range(config.grid):
        alpha = k / config.grid
        s = s_x.pow(alpha)
        s = s / (s.max() * s.min()).sqrt()
        err = sum(_output_error(_rtn(w * s, config) / s - w, h) for w, h in weights)
        if k == 0:
            base = err
        if err < best[2]:
            best = (alpha, s, err)
    return best[0], best[1], best[2], base


def clip_rtn(w: torch.Tensor, h: torch.Tensor, config: AWQConfig, ratios: int = 20) -> torch.Tensor:
    """Clip each (row, group) to r·[min, max], r from 1 down to 0.5, choosing r by its output error."""
    rows, cols = w.shape
    group, groups = group_layout(cols, config.group_size)
    if groups * group != cols:
        return w
    wg = w.view(rows, groups, group)
    hg = torch.stack([h[g * group : (g + 1) * group, g * group : (g + 1) * group] for g in range(groups)])
    lo = wg.amin(-1, keepdim=True).clamp(max=0)
    hi = wg.amax(-1, keepdim=True).clamp(min=0)
    if config.symmetric:
        hi = torch.maximum(hi, -lo)
        lo = -hi
    best_err = torch.full((rows, groups), float("inf"))
    best = wg.clone()
    for k in range(ratios // 2 + 1):
        r = 1.0 - k / ratios
        clipped = torch.maximum(torch.minimum(wg, hi * r), lo * r)
        d = _rtn(clipped.reshape(rows, cols), config).view(rows, groups, group) - wg
        err = torch.einsum("rgi,gij,rgj->rg", d, hg, d)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best = torch.where(better[..., None], clipped, best)
    return best.reshape(rows, cols)


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


def _fold(unit: Unit, group, s: torch.Tensor, candidates, reference: torch.Tensor) -> str | None:
    """Fold diag(s)⁻¹ into the first candidate that leaves the block output unchanged; its name or None."""
    originals = [(m, weight_matrix(m)) for _, m in group]
    for w_module, w in originals:
        set_weight_matrix(w_module, w * s)
    for name, module, kind in candidates:
        saved = {k: v.detach().clone() for k, v in module.state_dict().items()}
        _scale_producer(module, kind, s)
        if _close(unit.probe(), reference):
            return name
        module.load_state_dict(saved)
    for w_module, w in originals:
        set_weight_matrix(w_module, w)
    return None


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
        scales: dict[str, tuple[torch.Tensor, dict]] = {}
        for group in groups:
            alpha, s, err, base = search_alpha(group, unit.stats, config)
            info = {"awq_alpha": alpha, "awq_error_ratio": err / base if base else 1.0, "folded_into": None}
            if alpha > 0:
                cands = (
                    _candidates(unit, group, outputs, order, xs[group[0][0]][0])
                    if traced and xs[group[0][0]]
                    else []
                )
                info["folded_into"] = _fold(unit, group, s, cands, reference)
            for name, _ in group:
                scales[name] = (s, info)
        # explicit scales last: until its InputScaled wrapper exists, a scaled layer changes the block output
        for name, module in unit.layers:
            s, info = scales[name]
            if info["awq_alpha"] > 0 and info["folded_into"] is None:
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
                    w = clip_rtn(w, hessians[name], config)
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
            s, info = scales[name]
            explicit = info["awq_alpha"] > 0 and info["folded_into"] is None
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
