"""Markdown rendering of a fitted scaling law: parameters with intervals, goodness of fit, compute-optimal table.

Example::

    from modelscale.scaling import fit_law, law_markdown
    print(law_markdown(fit_law(loss, n=params, d=tokens)))
"""

from __future__ import annotations

import math

from modelscale.scaling.result import LawFit

DASH = "—"


def fmt(value: float | None, digits: int = 4) -> str:
    """Significant-digit formatting; scientific notation outside [1e-3, 1e5)."""
    if value is None or not math.isfinite(value):
        return DASH
    if value != 0 and not 1e-3 <= abs(value) < 1e5:
        mantissa, exponent = f"{value:.{digits - 1}e}".split("e")
        return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
    return f"{value:.{digits}g}"


def _interval(low: float | None, high: float | None) -> str:
    return DASH if low is None or high is None else f"{fmt(low)} – {fmt(high)}"


def _percent(value: float | None) -> str:
    return DASH if value is None or not math.isfinite(value) else f"{100 * value:.2f} %"


def law_markdown(result: LawFit) -> str:
    """The fit as a Markdown section."""
    level = f"{result.confidence:.0%}"
    law = result.law
    if result.kind == "joint":
        form = "L(N, D) = E + A/N^α + B/D^β"
    else:
        form = f"L({law.variable}) = E + A·{law.variable}^(−α)"
    lines = [
        "## Scaling law fit",
        "",
        f"Form: `{form}`, fitted to {result.n_points} runs.",
        "",
        f"Fitted: `{law}`",
        "",
        f"| parameter | estimate | {level} interval | meaning |",
        "|---|---:|---|---|",
    ]
    for est in (*result.parameters, *result.derived):
        lines.append(f"| {est.name} | {fmt(est.value)} | {_interval(est.low, est.high)} | {est.meaning} |")
    g = result.goodness
    lines += [
        "",
        "### Goodness of fit",
        "",
        "| metric | value |",
        "|---|---:|",
        f"| R² of log L | {fmt(g.r2_log, 5)} |",
        f"| RMSE of L (loss units) | {fmt(g.rmse)} |",
        f"| RMSE of log L (≈ relative) | {fmt(g.rmse_log)} |",
        f"| leave-one-out mean abs. relative error | {_percent(g.loo_mare)} |",
        f"| leave-one-out worst relative error | {_percent(g.loo_max)} |",
    ]
    table = result.compute_optimal
    if table is not None:
        has_ci = bool(table.intervals)
        head = "| compute C (FLOPs) | N_opt | D_opt | D/N | L_opt |"
        rule = "|---:|---:|---:|---:|---:|"
        if has_ci:
            head += f" L_opt {level} interval | N_opt {level} interval |"
            rule += "---|---|"
        lines += [
            "",
            "### Compute-optimal allocation (C = 6·N·D)",
            "",
            f"N_opt = G·(C/6)^a, D_opt = (C/6)^b / G with a = {fmt(table.a)}, b = {fmt(table.b)}, "
            f"G = {fmt(table.G)}.",
            "",
            head,
            rule,
        ]
        for i, budget in enumerate(table.budgets):
            row = (
                f"| {fmt(float(budget), 3)} | {fmt(float(table.n_opt[i]), 3)} | {fmt(float(table.d_opt[i]), 3)} | "
                f"{fmt(float(table.d_opt[i] / table.n_opt[i]), 3)} | {fmt(float(table.loss_opt[i]))} |"
            )
            if has_ci:
                lo, hi = table.intervals["loss_opt"]
                nlo, nhi = table.intervals["n_opt"]
                row += (
                    f" {_interval(float(lo[i]), float(hi[i]))} | {_interval(float(nlo[i]), float(nhi[i]))} |"
                )
            lines.append(row)
    emp = result.empirical_exponent
    if emp is not None:
        lines += [
            "",
            f"Empirical exponent from {emp.n_points} compute budgets: C ∝ N^k with k = {fmt(emp.k)} "
            f"({level} interval {_interval(emp.low, emp.high)}, R² {fmt(emp.r2, 4)}).",
        ]
    if result.notes:
        lines += ["", "Notes:", ""]
        lines += [f"- {note}" for note in result.notes]
    return "\n".join(lines) + "\n"
