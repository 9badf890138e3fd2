import copy
import json

import pytest
import torch
from torch import nn

from modelscale.core.errors import ModelscaleError
from modelscale.measure import Comparison, ProfileReport, compare, profile
from modelscale.report import compare_markdown, compare_text, human, profile_markdown, profile_text
from modelscale.techniques.prune.masks import attach_mask
from tests.measure.conftest import batches

FAST = {"warmup": 1, "repeats": 3, "threads": 1}


def _snapshot(model: nn.Module):
    return (
        {k: v.clone() for k, v in model.state_dict().items()},
        [m.training for m in model.modules()],
        [(n, p.requires_grad, p.grad) for n, p in model.named_parameters()],
    )


def _assert_untouched(model: nn.Module, snap) -> None:
    state, modes, params = snap
    assert [m.training for m in model.modules()] == modes
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    for (n, p), (n0, rg, grad) in zip(model.named_parameters(), params):
        assert n == n0 and p.requires_grad == rg and p.grad is None and grad is None
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_profile_is_json_safe_round_trips_and_leaves_the_model_untouched(tiny_cnn, digits):
    tiny_cnn.train()
    tiny_cnn.drop.eval()  # a mixed state must come back exactly
    snap = _snapshot(tiny_cnn)
    loader = batches(*[t[:200] for t in digits], 50)
    report = profile(tiny_cnn, torch.randn(4, 1, 8, 8), loader=loader, **FAST)
    _assert_untouched(tiny_cnn, snap)

    assert report.params.total == sum(p.numel() for p in tiny_cnn.parameters())
    assert report.macs.macs > 0 and report.latency.median_ms <= report.latency.p90_ms
    assert report.memory.peak_bytes > 0 and report.quality.examples == 200
    assert report.batch_size == 4 and report.input_shapes == [[4, 1, 8, 8]]
    text = json.dumps(report.to_dict(), allow_nan=False)
    again = ProfileReport.from_dict(json.loads(text))
    assert again == report
    assert again.macs.layers[0].name == report.macs.layers[0].name


def test_profile_accepts_tuple_inputs_and_skips_optional_parts():
    class Pair(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(5, 3), nn.Linear(7, 3)

        def forward(self, x, y):
            return self.a(x) * self.b(y)

    report = profile(Pair(), (torch.randn(2, 5), torch.randn(2, 7)), latency=False, memory=False)
    assert report.latency is None and report.memory is None and report.quality is None
    assert report.macs.macs == 2 * 5 * 3 + 2 * 7 * 3
    assert report.input_shapes == [[2, 5], [2, 7]]


def test_profile_rejects_bad_input():
    with pytest.raises(ModelscaleError, match="nn.Module"):
        profile("not a model", torch.zeros(1))
    with pytest.raises(ModelscaleError, match="task"):
        profile(nn.Linear(2, 2), torch.zeros(1, 2), task="detection")


def test_compare_masked_model_reports_ratios_deltas_and_notes(tiny_cnn, digits):
    loader = batches(*[t[:240] for t in digits], 60)
    pruned = copy.deepcopy(tiny_cnn)
    keep = torch.rand_like(pruned.fc.weight) > 0.9
    attach_mask(pruned.fc, keep)
    snap = _snapshot(tiny_cnn)
    cmp = compare(tiny_cnn, pruned, torch.randn(8, 1, 8, 8), loader=loader, cka_layer="conv", **FAST)
    _assert_untouched(tiny_cnn, snap)

    assert cmp.params_ratio == 1.0
    assert cmp.nonzero_ratio > 1.5
    assert cmp.theoretical_speedup == 1.0  # masked weights are still multiplied
    assert cmp.zipped_ratio > 1.3 and cmp.serialized_ratio == pytest.approx(1.0, abs=0.02)
    assert cmp.file_ratio == pytest.approx(1.0, abs=0.02)  # masks baked: the file is no larger
    stats = cmp.latency_stats
    assert cmp.measured_speedup == stats.ratio and stats.ci_low <= stats.ratio <= stats.ci_high
    assert stats.pairs == cmp.base.latency.repeats == cmp.other.latency.repeats
    assert cmp.base.latency.interleaved and cmp.other.latency.interleaved
    assert cmp.deltas["accuracy"] == pytest.approx(cmp.base.quality.accuracy - cmp.other.quality.accuracy)
    assert cmp.cka == pytest.approx(1.0, abs=1e-9)  # the conv layer is not pruned
    assert 0.0 <= cmp.agreement <= 1.0
    assert any("same MACs" in n for n in cmp.notes)

    text = json.dumps(cmp.to_dict(), allow_nan=False)
    assert Comparison.from_dict(json.loads(text)) == cmp


def test_compare_model_with_itself(tiny_cnn, digits):
    loader = batches(*[t[:120] for t in digits], 60)
    cmp = compare(tiny_cnn, tiny_cnn, torch.randn(2, 1, 8, 8), loader=loader, latency=False, memory=False)
    assert cmp.agreement == 1.0 and cmp.cka == pytest.approx(1.0, abs=1e-9)
    assert cmp.deltas["accuracy"] == 0.0 and cmp.measured_speedup is None
    assert cmp.cka_layer == "(outputs)"


def test_markdown_and_text_rendering(tiny_cnn, digits):
    loader = batches(*[t[:120] for t in digits], 60)
    smaller = copy.deepcopy(tiny_cnn)
    smaller.fc = nn.Linear(128, 10)
    cmp = compare(tiny_cnn, smaller, torch.randn(2, 1, 8, 8), loader=loader, **FAST)
    md = compare_markdown(cmp)
    for label in (
        "Parameters",
        "Non-zero parameters",
        "MACs",
        "FLOPs",
        "Weights file, model.safetensors (MB)",
        "Weights file zipped, deflate level 9 (MB)",
        "Estimate: torch.save, effective weights (MB)",
        "Latency median (ms)",
        "Latency p90 (ms)",
        "Accuracy",
        "Theoretical (MACs base / other)",
        "Measured (median of paired latency ratios base / other, 95% CI)",
    ):
        assert label in md, label
    assert f"{cmp.theoretical_speedup:.2f}×" in md
    assert "| --- |" in md and "| --- |" not in compare_text(cmp) and "Parameters" in compare_text(cmp)
    single = profile_markdown(cmp.base)
    assert "## Profile: TinyCNN" in single and "`conv`" in single
    assert "Largest layers by MACs" in profile_text(cmp.base)


def test_human_number_formatting():
    assert human(4_089_184_256) == "4.09 G"
    assert human(25_557_032) == "25.56 M"
    assert human(1_234) == "1.23 K"
    assert human(950) == "950"
    assert human(None) == "—"
