"""Sensitivity-knapsack warm starts: one quick per-layer sensitivity pass of the baseline picks the first
trials of a search, aimed at a ladder of byte goals with the least predicted loss.

1. Per compressor option (a stage option whose technique has a registered strength knob, before the
   quantizers), `analysis.sensitivity` applies it to ONE layer at a time at a few strengths across the
   knob's range and measures, on a few validation batches, the rise of the mean loss
   r(ℓ, s) = L(ℓ, s) − L₀ (loss, not accuracy: a few batches resolve it) and the state-dict bytes saved
   b(ℓ, s).
2. Each quantizer option is applied alone: its bytes ratio q (saved file / baseline file) and loss rise.
3. For each byte goal G and quantizer q, a multiple-choice knapsack (dynamic programme over bytes
   saved, one strength or none per layer) finds min Σ_ℓ r(ℓ, s_ℓ) subject to Σ_ℓ b(ℓ, s_ℓ) ≥ B₀ − G/q.
4. The space's knob is global, so the per-layer choice becomes one global value: the parameter-
   weighted mean strength (untouched layers count as uncompressed), then checked by a dry run (the
   recipe applied without training and saved): stepped stronger until the file is at most G.

Goals: the `bytes <= X` constraint's X, X/2, X/4 when there is one; else the baseline's bytes / 16,
/ 32 and / 64. The best candidate per goal (compressor, quantizer) is enqueued, with the longest
fine-tune of the space; each carries its reason (goal, per-layer picks, predicted rise, dry bytes).

Example::

    starts, info = sensitivity_warm_starts(session, space, constraints, base_metrics)
    for s in starts:
        study.enqueue_trial(s["params"])
"""

from __future__ import annotations

import copy
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from modelscale.search.space import NONE, Knob, SearchSpace, Stage

GOAL_DIVISORS = (16, 32, 64)
UNITS = 400  # resolution of the knapsack's bytes axis (per need)


def _state_bytes(model: torch.nn.Module) -> float:
    return float(
        sum(t.numel() * t.element_size() for t in model.state_dict().values() if isinstance(t, torch.Tensor))
    )


def _loss(model: torch.nn.Module, batches: list[Any]) -> float:
    from modelscale.train.evaluate import eval_sums, metrics_from_sums

    return float(metrics_from_sums(eval_sums(model, batches, torch.device("cpu")), "classification")["loss"])


def _grid(knob: Knob, n: int = 4) -> list[Any]:
    if knob.choices:
        return [c for c in knob.choices if isinstance(c, int | float) and not isinstance(c, bool)]
    values = [knob.low + (knob.high - knob.low) * i / (n - 1) for i in range(n)]
    return sorted({int(round(v)) for v in values}) if knob.is_int else [round(v, 4) for v in values]


def _base_params(space: SearchSpace) -> dict[str, Any]:
    """No compression at all, the longest fine-tune of the space (lr at its geometric middle)."""
    from modelscale.search.study_setup import _middle

    params: dict[str, Any] = {}
    for s in space.stages:
        if s.trains:
            params[f"{s.name}.epochs"] = s.epochs.choices[-1] if s.epochs.choices else s.epochs.high
            if isinstance(s.lr, Knob):
                params[f"{s.name}.lr"] = _middle(s.lr)
            if s.distill is not None:
                params[f"{s.name}.distill"] = False
        elif s.optional:
            params[f"{s.name}.technique"] = NONE
        else:
            params[f"{s.name}.technique"] = s.options[0].technique
            for k in s.options[0].knobs:
                params[f"{s.name}.{s.options[0].technique}.{k.name}"] = _middle(k)
    return params


def _dry(session: Any, space: SearchSpace, params: dict[str, Any], folder: Path) -> tuple[float, Any]:
    """Apply the recipe's technique steps (no training) to a copy of the baseline; saved bytes, model."""
    import optuna

    from modelscale.engine import Session, run_step
    from modelscale.models.loading import ModelBundle
    from modelscale.search.trial import measure_artifact, sample_steps

    base = session.bundle
    dry = Session(
        ModelBundle(copy.deepcopy(base.model), dict(base.spec), list(base.records)),
        session.data,
        seed=session.seed,
        progress=False,
    )
    dry._cache["calibration"] = session.calibration()
    steps = [s for s in sample_steps(optuna.trial.FixedTrial(params), space) if s.kind == "technique"]
    for i, step in enumerate(steps):
        run_step(dry, step, later=steps[i + 1 :])
    return measure_artifact(dry.bundle, folder)["bytes"], dry.model


def knapsack(
    items: dict[str, list[tuple[float, float, Any]]], need: float
) -> tuple[dict[str, Any], float, float] | None:
    """Multiple-choice knapsack: per layer at most one (cost, saved, strength); min Σ cost with Σ saved ≥
    need. Saved bytes are rounded down to `need / UNITS` units (a pick never overstates its saving).
    Returns (layer -> strength, total cost, total saved) or None when no choice saves enough."""
    if need <= 0:
        return {}, 0.0, 0.0
    unit = need / UNITS
    inf = math.inf
    dp = [0.0] + [inf] * UNITS  # dp[j]: least cost saving at least j units (capped at UNITS)
    saved_at = [0.0] * (UNITS + 1)
    picks: list[dict[str, Any]] = [{} for _ in range(UNITS + 1)]
    for layer, options in items.items():
        new, new_saved, new_picks = dp[:], saved_at[:], [dict(p) for p in picks]
        for cost, saved, strength in options:
            units = int(saved // unit)
            if units <= 0:
                continue
            for j in range(UNITS + 1):
                if dp[j] == inf:
                    continue
                k = min(UNITS, j + units)
                c = dp[j] + max(cost, 0.0)
                if c < new[k] - 1e-12:
                    new[k], new_saved[k] = c, saved_at[j] + saved
                    new_picks[k] = {**picks[j], layer: strength}
        dp, saved_at, picks = new, new_saved, new_picks
    if dp[UNITS] == inf:
        return None
    return picks[UNITS], dp[UNITS], saved_at[UNITS]


def _layer_table(session: Any, stage: Stage, option: Any, knob: Knob, batches: list[Any]) -> dict[str, Any]:
    """Per-layer loss rise and state-dict bytes saved at each grid strength (analysis.sensitivity)."""
    from modelscale.analysis.sensitivity import sensitivity
    from modelscale.search.study_setup import _middle

    seen: list[float] = []

    def metric(model: torch.nn.Module, loader: Any) -> float:
        seen.append(_state_bytes(model))
        return -_loss(model, loader)

    others = {k.name: _middle(k) for k in option.knobs if k.name != knob.name}
    grid = _grid(knob)
    table = sensitivity(
        session.model, option.technique, knob.name, grid, batches,
        base_config={**option.fixed, **others}, metric=metric, metric_name="negative loss",
        example_inputs=session.example_inputs(1), calibration=session.calibration(),
        loss_fn=session.loss_fn(),
    )  # fmt: skip
    base_bytes, sizes = seen[0], iter(seen[1:])
    rows: dict[str, list[tuple[float, float, Any]]] = {}
    for row in table.rows:
        if row.error is not None:
            continue
        saved = base_bytes - next(sizes)
        strength = next(s for s in grid if float(s) == row.strength)
        rows.setdefault(row.layer, []).append((row.drop, saved, strength))  # drop of −loss = loss rise
    params = {name: sum(p.numel() for p in mod.parameters()) for name, mod in session.model.named_modules()}
    totals = {s: sum(sv for r in rows.values() for _, sv, st in r if st == s) for s in grid}
    weak = "low" if totals.get(grid[0], 0) <= totals.get(grid[-1], 0) else "high"
    zero = 0.0 if weak == "low" else (1.0 if float(grid[-1]) <= 1.0 else float(grid[-1]))
    return {
        "stage": stage.name, "technique": option.technique, "knob": knob, "grid": grid, "rows": rows,
        "weights": {layer: params.get(layer, 0) for layer in table.layers()}, "zero": zero, "weak": weak,
        "base_state_bytes": base_bytes,
    }  # fmt: skip


def _global_value(table: dict[str, Any], picks: dict[str, Any]) -> Any:
    knob, weights = table["knob"], table["weights"]
    total = sum(weights.values()) or 1
    value = sum(w * float(picks.get(layer, table["zero"])) for layer, w in weights.items()) / total
    lo, hi = (min(table["grid"]), max(table["grid"])) if knob.choices else (knob.low, knob.high)
    value = min(max(value, lo), hi)
    if knob.choices:  # the nearest allowed choice
        return min(table["grid"], key=lambda c: abs(float(c) - value))
    return int(round(value)) if knob.is_int else round(value, 4)


def _stronger(table: dict[str, Any], value: Any) -> Any | None:
    """One step more compression along the knob (None at its bound)."""
    knob = table["knob"]
    if knob.choices:
        grid = table["grid"] if table["weak"] == "low" else table["grid"][::-1]
        i = grid.index(value)
        return grid[i + 1] if i + 1 < len(grid) else None
    step = (knob.high - knob.low) / 20 * (1 if table["weak"] == "low" else -1)
    nxt = value + (max(1, round(step)) if knob.is_int and step > 0 else step)
    if knob.is_int:
        nxt = int(round(nxt))
    if not knob.low <= nxt <= knob.high:
        return None
    return nxt if knob.is_int else round(nxt, 4)


def _quantizers(stage: Stage | None) -> list[tuple[dict[str, Any], str]]:
    if stage is None:
        return [({}, NONE)]
    import itertools

    from modelscale.search.study_setup import _middle

    out: list[tuple[dict[str, Any], str]] = [({}, NONE)] if stage.optional else []
    for option in stage.options:
        axes = [
            [(k.name, c) for c in k.choices] if k.choices else [(k.name, _middle(k))] for k in option.knobs
        ]
        for combo in list(itertools.product(*axes))[:4]:
            p = {f"{stage.name}.technique": option.technique}
            p.update({f"{stage.name}.{option.technique}.{n}": v for n, v in combo})
            out.append((p, option.technique + "".join(f" {n}={v}" for n, v in combo)))
    return out


def sensitivity_warm_starts(
    session: Any, space: SearchSpace, constraints: Any, base_metrics: dict[str, float], *,
    batches: int = 2, batch_size: int = 64, per_goal: int = 2,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:  # fmt: skip
    """Warm-start trials ({"params", "why"}) and a summary of the pass (tables, seconds, goals)."""
    from modelscale.core.registry import get_technique
    from modelscale.data import make_loader

    t0 = time.perf_counter()
    loader = make_loader(session.data.val, batch_size=batch_size, shuffle=False)
    few = [b for _, b in zip(range(batches), loader)]
    frozen = [
        s
        for s in space.stages
        if not s.trains and all(not get_technique(o.technique).trainable for o in s.options)
    ]
    quant_stage = frozen[-1] if frozen else None
    tables = []
    for stage in space.stages:
        if stage.trains or stage is quant_stage or not stage.optional:
            continue
        for option in stage.options:
            strength = get_technique(option.technique).strength
            knob = next((k for k in option.knobs if k.name == strength), None)
            if knob is not None and _grid(knob):
                tables.append(_layer_table(session, stage, option, knob, few))
    base_bytes = float(base_metrics["bytes"])
    bound = min((c.bound(base_metrics) for c in constraints if c.metric == "bytes" and c.op in ("<=", "<")),
                default=None)  # fmt: skip
    goals = [bound, bound / 2, bound / 4] if bound else [base_bytes / d for d in GOAL_DIVISORS]
    base_loss = _loss(session.model, few)
    start = _base_params(space)
    candidates: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="modelscale-warm-") as tmp:
        quants = []
        for i, (qp, qname) in enumerate(_quantizers(quant_stage)):
            q_bytes, q_model = _dry(session, space, {**start, **qp}, Path(tmp) / f"q{i}")
            quants.append((qp, qname, q_bytes / base_bytes, _loss(q_model, few) - base_loss))
        for goal in goals:
            ranked = []
            for qp, qname, q_ratio, q_rise in quants:
                for table in [None, *tables]:
                    need = (
                        (base_bytes - goal / q_ratio) * table["base_state_bytes"] / base_bytes
                        if table
                        else 0.0
                    )
                    if table is None:
                        if q_ratio * base_bytes <= goal:
                            ranked.append((q_rise, qname, qp, None, {}))
                        continue
                    found = knapsack(table["rows"], need)
                    if found is not None:
                        ranked.append((found[1] + q_rise, qname, qp, table, found[0]))
            ranked.sort(key=lambda r: r[0])
            chosen = []  # the best candidate, then the best of each other compressor (variety)
            for r in ranked:
                kind = r[3]["technique"] if r[3] is not None else None
                if len(chosen) < per_goal and all(kind != (c[3] or {}).get("technique") for c in chosen):
                    chosen.append(r)
            for rise, qname, qp, table, picks in chosen:
                params, why = {**start, **qp}, {"goal_bytes": round(goal), "quantizer": qname,
                                                "predicted_loss_rise": round(rise, 5)}  # fmt: skip
                if table is not None:
                    value = _global_value(table, picks)
                    key = f"{table['stage']}.{table['technique']}.{table['knob'].name}"
                    params[f"{table['stage']}.technique"] = table["technique"]
                    others = next(o for s in space.stages if s.name == table["stage"] for o in s.options
                                  if o.technique == table["technique"]).knobs  # fmt: skip
                    from modelscale.search.study_setup import _middle

                    params.update(
                        {f"{table['stage']}.{table['technique']}.{k.name}": _middle(k) for k in others}
                    )
                    for _ in range(8):  # the dry run decides: stronger until the file meets the goal
                        params[key] = value
                        dry_bytes, _m = _dry(session, space, params, Path(tmp) / "c")
                        if dry_bytes <= goal or (value := _stronger(table, value)) is None:
                            break
                    why.update({"compressor": f"{table['technique']} {table['knob'].name}={params[key]}",
                                "per_layer": {k: v for k, v in picks.items()}, "dry_bytes": dry_bytes})  # fmt: skip
                else:
                    why["dry_bytes"] = round(dict((q[1], q[2]) for q in quants)[qname] * base_bytes)
                if all(c["params"] != params for c in candidates):
                    candidates.append({"params": params, "why": why})
    summary = {
        "seconds": round(time.perf_counter() - t0, 2),
        "samples": sum(len(b[1]) for b in few),
        "goals_bytes": [round(g) for g in goals],
        "quantizers": [{"name": q[1], "bytes_ratio": round(q[2], 4), "loss_rise": round(q[3], 5)} for q in quants],
        "tables": [
            {"technique": t["technique"], "knob": t["knob"].name, "grid": t["grid"],
             "loss_rise": {ly: [round(r[0], 5) for r in rs] for ly, rs in t["rows"].items()},
             "bytes_saved": {ly: [r[1] for r in rs] for ly, rs in t["rows"].items()}}
            for t in tables
        ],
    }  # fmt: skip
    return candidates, summary


def enqueue_starts(
    study: Any, session: Any, space: SearchSpace, constraints: Any, base_metrics: dict[str, float], *,
    enqueue: list[dict[str, Any]] | None, warm_start: bool,
) -> None:  # fmt: skip
    """Enqueue the first trials, each with its reason in the trial's `warm_start` user attr: the user's
    own, then the sensitivity-knapsack starts, then the space's corner starts; the pass's summary goes to
    the study's `sensitivity` user attr."""
    from modelscale.search.study_setup import warm_starts

    starts = [{"params": p, "why": {"source": "enqueued by the caller"}} for p in enqueue or []]
    if warm_start:
        knapsack_starts, summary = sensitivity_warm_starts(session, space, constraints, base_metrics)
        for s in knapsack_starts:
            s["why"] = {"source": "sensitivity knapsack", **s["why"]}
        starts += knapsack_starts
        starts += [{"params": p, "why": {"source": "space corner"}} for p in warm_starts(space)]
        study.set_user_attr("sensitivity", summary)
    study.set_user_attr("warm_starts", starts)
    for s in starts:
        study.enqueue_trial(s["params"], user_attrs={"warm_start": s["why"]}, skip_if_exists=True)
