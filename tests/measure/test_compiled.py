"""torch.compile as a measured option: a real compile of a tiny MLP, its report, and honest failures."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from modelscale.core.errors import ModelscaleError
from modelscale.measure.backends import measure_backends
from modelscale.measure.compiled import (
    CompileReport,
    GuardedCompile,
    compile_error,
    compile_model,
    compiled_candidate,
)


def tiny_mlp(hidden: int = 24) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, hidden), nn.ReLU(), nn.Linear(hidden, 5)).eval()


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    """Every test compiles from a clean Dynamo state (its per-code recompile limit is per process)."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.fixture
def no_cxx():
    """Inductor with no working C++ compiler (and no graph cache that would skip the compiler)."""
    import torch._inductor.config as inductor_config

    with inductor_config.patch({"cpp.cxx": ("/nonexistent/c++",), "fx_graph_cache": False}):
        yield


def test_compile_model_times_the_first_call_and_matches_eager():
    model, x = tiny_mlp(), torch.randn(4, 16)
    compiled, report = compile_model(model, (x,), threads=1)
    assert report.status == "compiled" and report.fallback is None and report.reason is None
    assert report.compile_s is not None and report.compile_s > 0
    assert report.graphs >= 1 and report.threads == 1
    assert report.cache in ("hit", "miss", "mixed", "unknown")
    assert compiled is not model
    with torch.inference_mode():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-6)
    again = CompileReport.from_dict(report.to_dict())
    assert again == report and "compiled (inductor" in again.describe()


def test_compile_failure_is_one_line_and_falls_back_to_eager(no_cxx):
    model, x = tiny_mlp(hidden=23), torch.randn(3, 16)
    module, report = compile_model(model, (x,), threads=1)
    assert module is model
    assert report.status == "failed" and report.fallback == "eager" and report.compile_s is None
    assert "C++ compiler" in report.reason and "\n" not in report.reason
    assert "FAILED" in report.describe() and "fallback: eager" in report.describe()


def test_wrong_inputs_are_the_users_error_not_a_compile_failure():
    with pytest.raises(RuntimeError):  # eager fails too: that error, not a fallback
        compile_model(tiny_mlp(), (torch.randn(2, 7),))


def test_unknown_mode_is_refused_with_the_valid_ones():
    with pytest.raises(ModelscaleError, match="max-autotune"):
        compile_model(tiny_mlp(), (torch.randn(2, 16),), mode="fastest")


def test_compile_error_takes_the_first_meaningful_line():
    try:
        raise RuntimeError("\nSet TORCHDYNAMO_VERBOSE=1 for more\nthe real reason\nmore")
    except RuntimeError as exc:
        assert compile_error(exc) == "RuntimeError: the real reason"


def test_backends_eager_vs_compiled_paired_with_parity():
    model, x = tiny_mlp(), torch.randn(8, 16)
    cmp = measure_backends(
        {"model": model}, x, {"compiled": compiled_candidate()}, threads=1, repeats=10, time_budget_s=0.0
    )
    run = cmp.run("model", "compiled")
    assert run.status == "ok" and run.setup["status"] == "compiled" and run.setup["compile_s"] > 0
    assert run.latency.repeats >= 10 and run.latency.interleaved
    assert run.max_abs_diff < 1e-5 and run.cosine > 0.99999
    ratio = cmp.ratio("model:eager", "model:compiled")
    assert ratio.stats.pairs == run.latency.repeats == cmp.run("model", "eager").latency.repeats
    assert ratio.stats.ci_low <= ratio.stats.ratio <= ratio.stats.ci_high
    assert "model:eager / model:compiled" in cmp.text()


def test_backends_label_a_failed_compile_and_still_time_eager(no_cxx):
    cmp = measure_backends(
        {"model": tiny_mlp(hidden=21)},
        torch.randn(2, 16),
        {"compiled": compiled_candidate()},
        threads=1,
        repeats=10,
        time_budget_s=0.0,
    )
    run = cmp.run("model", "compiled")
    assert run.status == "failed" and run.setup["fallback"] == "eager" and run.latency is None
    assert cmp.ratios == [] and cmp.run("model", "eager").latency.repeats >= 10
    assert "NOT MEASURED — torch.compile FAILED" in cmp.text()


def test_required_backend_failure_is_an_error(no_cxx):
    with pytest.raises(ModelscaleError, match="compiled cannot run model"):
        measure_backends(
            {"model": tiny_mlp(hidden=22)},
            torch.randn(2, 16),
            {"compiled": compiled_candidate()},
            required=("compiled",),
        )


def test_guarded_compile_trains_and_times_forward_and_backward():
    model = tiny_mlp().train()
    guarded = GuardedCompile(model)
    assert guarded.training and list(guarded.parameters()) == list(
        model.parameters()
    )  # attribute passthrough
    x, y = torch.randn(6, 16), torch.randint(0, 5, (6,))
    before = model[0].weight.detach().clone()
    loss = nn.functional.cross_entropy(guarded(x), y)
    with guarded.backward_guard():
        loss.backward()
    assert model[0].weight.grad is not None and model[0].weight.grad.abs().sum() > 0
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    assert not torch.equal(before, model[0].weight)
    report = guarded.final_report()
    assert report.status == "compiled" and report.compile_s > 0 and report.first_backward_s > 0


def test_guarded_compile_falls_back_to_eager_when_compiling_fails(no_cxx):
    model = tiny_mlp(hidden=19).train()
    guarded = GuardedCompile(model)
    x = torch.randn(5, 16)
    out = guarded(x)
    torch.testing.assert_close(out, model(x))
    assert not guarded.active
    assert guarded.report.status == "failed" and guarded.report.fallback == "eager"
    assert "C++ compiler" in guarded.report.reason


def test_verdict_notes_name_only_stable_differences():
    from modelscale.measure.backends import BackendRatio, verdict_notes
    from modelscale.measure.paired_stats import pair_stats

    eager = [2.0 + 0.01 * (i % 3) for i in range(40)]
    quick = [1.0 + 0.005 * (i % 5) for i in range(40)]
    stable = pair_stats(eager, quick, load_before=0.1, load_after=0.1, cores=2)
    loaded = pair_stats(eager, quick, load_before=9.0, load_after=9.0, cores=2)
    assert stable.verdict == "faster" and loaded.verdict == "unstable"
    notes = verdict_notes(
        [
            BackendRatio(a="model:eager", b="model:ort", stats=stable),
            BackendRatio(a="model:eager", b="model:compiled", stats=loaded),
            BackendRatio(a="base:ort", b="other:ort", stats=stable),  # a cross ratio: not a backend verdict
        ]
    )
    assert len(notes) == 1 and notes[0].startswith("ort is faster than eager for model: 1.99×")
    assert "modelscale export" in notes[0]
