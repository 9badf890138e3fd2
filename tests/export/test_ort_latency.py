"""ONNX Runtime as a measured backend: a real session on a tiny MLP next to eager PyTorch, and refusals."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from modelscale.core.errors import ModelscaleError
from modelscale.export.ort_latency import OrtModule, OrtSetup, ort_candidate, prepare_ort
from modelscale.measure.backends import measure_backends


def tiny_mlp(hidden: int = 24) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, hidden), nn.ReLU(), nn.Linear(hidden, 5)).eval()


class QR(nn.Module):
    """A model no ONNX exporter can export (no ONNX function for linalg_qr)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(16, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.linalg.qr(self.fc(x))[0]


def test_prepare_ort_runs_the_model_with_the_given_threads():
    model, x = tiny_mlp(), torch.randn(4, 16)
    module, setup = prepare_ort(model, (x,), threads=1)
    assert isinstance(module, OrtModule) and setup.status == "ready" and setup.reason is None
    assert setup.threads == 1 and module.runner.session.get_session_options().intra_op_num_threads == 1
    assert setup.export_s > 0 and setup.session_s >= 0 and setup.onnx_bytes > 0
    assert setup.provider == "CPUExecutionProvider" and setup.exporter in ("dynamo", "torchscript")
    with torch.inference_mode():
        torch.testing.assert_close(module(x), model(x), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(module(torch.randn(9, 16)).shape, torch.Size([9, 5]))  # dynamic batch
    assert OrtSetup.from_dict(setup.to_dict()) == setup


def test_a_model_ort_cannot_run_gives_one_line():
    module, setup = prepare_ort(QR(), (torch.randn(16, 16),), threads=1)
    assert module is None and setup.status == "failed"
    assert "linalg_qr" in setup.reason and "\n" not in setup.reason


def test_inputs_off_float32_are_refused_with_the_reason():
    module, setup = prepare_ort(tiny_mlp().double(), (torch.randn(2, 16, dtype=torch.float64),))
    assert module is None and "float32" in setup.reason


def test_backends_torch_vs_ort_paired_with_parity():
    model, x = tiny_mlp(), torch.randn(8, 16)
    cmp = measure_backends(
        {"model": model}, x, {"ort": ort_candidate()}, threads=1, repeats=10, time_budget_s=0
    )
    run = cmp.run("model", "ort")
    assert run.status == "ok" and run.setup["status"] == "ready"
    assert run.max_abs_diff < 1e-4 and run.cosine > 0.9999
    stats = cmp.ratio("model:eager", "model:ort").stats
    assert stats.pairs == run.latency.repeats >= 10 and stats.threads == 1
    assert stats.ci_low <= stats.ratio <= stats.ci_high and stats.verdict in (
        "faster",
        "slower",
        "no clear difference",
        "unstable",
    )


def test_two_models_get_the_cross_ratio_on_ort():
    base, other, x = tiny_mlp(48), tiny_mlp(8), torch.randn(8, 16)
    cmp = measure_backends(
        {"base": base, "other": other}, x, {"ort": ort_candidate()}, threads=1, repeats=10, time_budget_s=0
    )
    assert cmp.ratio("base:ort", "other:ort") is not None
    assert {(r.a, r.b) for r in cmp.ratios} == {
        ("base:eager", "base:ort"),
        ("other:eager", "other:ort"),
        ("base:ort", "other:ort"),
    }


def test_ort_failure_is_a_labelled_row_or_an_error_when_required():
    cmp = measure_backends(
        {"model": QR()}, torch.randn(16, 16), {"ort": ort_candidate()}, repeats=10, time_budget_s=0
    )
    run = cmp.run("model", "ort")
    assert run.status == "failed" and "linalg_qr" in run.reason and cmp.ratios == []
    assert cmp.run("model", "eager").latency.repeats >= 10
    assert "model ort: NOT MEASURED" in cmp.text()
    with pytest.raises(ModelscaleError, match="ort cannot run model"):
        measure_backends({"model": QR()}, torch.randn(16, 16), {"ort": ort_candidate()}, required=("ort",))
