"""Paired-test early stopping of a search trial (multi-objective included, which Optuna's pruners lack).

After a trial's recipe has run and its file is saved (so its size is known), its model is scored per
validation example, batch by batch, on the first examples of the fixed validation order: s_i = 1 when
example i is classified right (for a language model, the share of its tokens predicted right). The
incumbent is the most accurate feasible completed trial that is no larger on every size objective
(bytes, zipped_bytes, params) — a trial significantly less accurate than it is dominated and cannot join
the front. Its scores on the same examples are stored with it. After each batch (from `min_samples`
on) a one-sided sign test on the paired differences d_i = s_i − s*_i (McNemar's exact test for 0/1
scores): with L losses (d < 0) and W wins (d > 0),

    p = P(X ≥ L),  X ~ Binomial(L + W, 1/2),

and the trial stops (Optuna: pruned, with the p-value recorded) when p < α / K, K the number of looks
(Bonferroni over the looks, so the chance of stopping a trial as good as the incumbent stays ≤ α).
Deterministic: the same examples in the same order, no sampling. Off with `early_stop=False`.

Example::

    rule = EarlyStop(alpha=0.05)
    verdict = paired_verdict(trial_scores, incumbent_scores, rule)   # None: keep going
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from modelscale.core.errors import ModelscaleError

SIZE_OBJECTIVES = ("bytes", "zipped_bytes", "params")
QUALITY_OBJECTIVES = ("accuracy", "accuracy_drop")


@dataclass(frozen=True, kw_only=True)
class EarlyStop:
    """When a trial is stopped early (see the module docstring)."""

    alpha: float = 0.05  # family-wise chance of stopping a trial as good as its incumbent
    batch: int = 32  # examples between looks
    min_samples: int = 64  # no look before this many examples
    max_samples: int = 512  # examples scored (and stored) per trial

    def __post_init__(self) -> None:
        if not 0 < self.alpha < 1:
            raise ModelscaleError(f"early stop alpha must be in (0, 1), got {self.alpha}")
        if self.batch < 1 or self.min_samples < 1 or self.max_samples < self.min_samples:
            raise ModelscaleError("early stop needs batch >= 1 and 1 <= min_samples <= max_samples")


class TrialStopped(Exception):
    """Raised by the check when the paired test says the trial is worse than its incumbent."""

    def __init__(self, verdict: dict[str, Any]) -> None:
        super().__init__(f"worse than trial {verdict['incumbent']} (p = {verdict['p_value']:.2g})")
        self.verdict = verdict


def sign_test_p(losses: int, wins: int) -> float:
    """One-sided P(X ≥ losses) for X ~ Binomial(losses + wins, 1/2) (1.0 when there is no discordant pair)."""
    n = losses + wins
    if n == 0:
        return 1.0
    return sum(math.comb(n, k) for k in range(losses, n + 1)) / 2.0**n


def looks(n: int, rule: EarlyStop) -> list[int]:
    """Example counts at which the test is read: every `batch` from `min_samples`, and the last."""
    n = min(n, rule.max_samples)
    if n < rule.min_samples:
        return []
    points = list(range(rule.min_samples, n + 1, rule.batch))
    return points if points[-1] == n else [*points, n]


def paired_verdict(
    scores: list[float], incumbent: list[float], rule: EarlyStop, incumbent_number: int | None = None
) -> dict[str, Any] | None:
    """The first look at which the trial is worse by the sign test, as a record; None if never."""
    n = min(len(scores), len(incumbent))
    points = looks(n, rule)
    level = rule.alpha / max(len(points), 1)
    for m in points:
        losses = sum(1 for a, b in zip(scores[:m], incumbent[:m]) if a < b)
        wins = sum(1 for a, b in zip(scores[:m], incumbent[:m]) if a > b)
        p = sign_test_p(losses, wins)
        if p < level:
            return {
                "incumbent": incumbent_number, "p_value": p, "level": level, "samples": m, "looks": len(points),
                "losses": losses, "wins": wins, "trial_mean": sum(scores[:m]) / m,
                "incumbent_mean": sum(incumbent[:m]) / m,
            }  # fmt: skip
    return None


def per_example_scores(model: torch.nn.Module, dataset: Any, rule: EarlyStop) -> list[float]:
    """Correctness of each of the first `max_samples` examples, in the dataset's fixed order."""
    from modelscale.data import make_loader
    from modelscale.measure._common import logits_of

    loader = make_loader(dataset, batch_size=rule.batch, shuffle=False)
    out: list[float] = []
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            for x, y in loader:
                logits = logits_of(model(x)).float()
                hit = (logits.argmax(dim=-1) == y).float()
                hit = hit.reshape(hit.shape[0], -1).mean(dim=1)  # tokens of one sequence: their share
                out.extend(round(float(v), 6) for v in hit)
                if len(out) >= rule.max_samples:
                    break
    finally:
        model.train(was)
    return out[: rule.max_samples]


def usable(objectives: Any) -> str | None:
    """Why early stopping cannot judge this study's objectives (None: it can)."""
    names = [o.metric for o in objectives]
    other = [n for n in names if n not in SIZE_OBJECTIVES + QUALITY_OBJECTIVES]
    if other:
        return f"objective(s) {', '.join(other)} are measured after the check: early stopping is off"
    if not any(n in QUALITY_OBJECTIVES for n in names):
        return "no accuracy objective: early stopping is off"
    return None


def pick_incumbent(trials: list[Any], metrics: dict[str, Any], objectives: Any) -> Any | None:
    """The most accurate feasible completed trial with stored scores, no larger on any size objective."""
    size = [o.metric for o in objectives if o.metric in SIZE_OBJECTIVES]
    best = None
    for t in trials:
        attrs = t.user_attrs
        m = attrs.get("metrics")
        if not m or "val_scores" not in attrs:
            continue
        if any(v > 0 for v in attrs.get("constraint_violation", [1.0])):
            continue
        if any(m.get(k, math.inf) > metrics.get(k, -math.inf) for k in size):
            continue
        key = (m.get("accuracy", -math.inf), -m.get("bytes", 0.0), -t.number)
        if best is None or key > best[0]:
            best = (key, t)
    return best[1] if best else None


def make_check(study: Any, objectives: Any, rule: EarlyStop, record: dict[str, Any]) -> Any:
    """The check `run_trial` calls once the trial's file is measured: scores the model, stores the
    scores in `record["val_scores"]` and raises TrialStopped when the paired test says so."""
    import optuna

    def check(session: Any, metrics: dict[str, Any]) -> None:
        scores = per_example_scores(session.model, session.data.val, rule)
        record["val_scores"] = scores
        done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        incumbent = pick_incumbent(done, metrics, objectives)
        if incumbent is None:
            return
        verdict = paired_verdict(scores, incumbent.user_attrs["val_scores"], rule, incumbent.number + 1)
        if verdict is not None:
            raise TrialStopped(verdict)

    return check


def rule_for(early_stop: Any, objectives: Any) -> tuple[EarlyStop | None, str | None]:
    """The rule a search uses (None: off) and, when its objectives rule it out, why."""
    if early_stop is False or early_stop is None:
        return None, None
    if early_stop is not True and not isinstance(early_stop, EarlyStop):
        raise ModelscaleError(f"early_stop must be True, False or an EarlyStop rule, got {early_stop!r}")
    why_not = usable(objectives)
    return (None, why_not) if why_not else (EarlyStop() if early_stop is True else early_stop, None)
