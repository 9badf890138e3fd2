import pytest
import torch
from torch import nn

from modelscale.core.errors import ModelscaleError
from modelscale.measure import measure_latency, measure_latency_pair, measure_memory


def _mlp(hidden: int) -> nn.Module:
    return nn.Sequential(nn.Linear(32, hidden), nn.ReLU(), nn.Linear(hidden, 10))


def test_latency_report_fields_are_sane(tiny_cnn):
    x = torch.randn(8, 1, 8, 8)
    rep = measure_latency(tiny_cnn, x, warmup=2, repeats=7, threads=1)
    assert 0 < rep.min_ms <= rep.median_ms <= rep.p90_ms <= rep.max_ms
    assert rep.repeats == 7 and rep.warmup == 2 and rep.batch_size == 8
    assert rep.threads == 1 and rep.device == "cpu" and rep.dtype == "float32"
    assert rep.timer == "perf_counter" and not rep.interleaved
    assert rep.throughput == pytest.approx(8 / (rep.median_ms / 1e3))


def test_threads_setting_is_restored(tiny_cnn):
    before = torch.get_num_threads()
    measure_latency(tiny_cnn, torch.randn(2, 1, 8, 8), warmup=0, repeats=2, threads=1)
    assert torch.get_num_threads() == before


def test_pair_is_interleaved_and_ratio_is_median_ratio():
    a, b = _mlp(64), _mlp(8)
    pair = measure_latency_pair(
        a, b, torch.randn(4, 32), warmup=1, repeats=5, threads=1, time_budget_s=0.5, max_repeats=60
    )
    assert pair.a.interleaved and pair.b.interleaved
    assert 5 <= pair.a.repeats == pair.b.repeats <= 60  # adaptive rounds, capped
    stats = pair.stats
    assert stats.pairs == pair.a.repeats and stats.threads == 1
    assert pair.speedup == stats.ratio and stats.ci_low <= stats.ratio <= stats.ci_high
    assert stats.verdict in ("faster", "slower", "no clear difference", "unstable")
    assert stats.unstable == bool(stats.reasons) == (stats.verdict == "unstable")


def test_other_dtype_measures_a_copy_and_leaves_the_model_alone():
    model = _mlp(16).train()
    rep = measure_latency(model, torch.randn(2, 32), dtype="bf16", warmup=0, repeats=2, threads=1)
    assert rep.dtype == "bfloat16"
    assert model[0].weight.dtype == torch.float32 and model.training


def test_bad_settings_raise_one_line_errors(tiny_cnn):
    x = torch.randn(1, 1, 8, 8)
    with pytest.raises(ModelscaleError, match="repeats"):
        measure_latency(tiny_cnn, x, repeats=0)
    with pytest.raises(ModelscaleError, match="dtype"):
        measure_latency(tiny_cnn, x, dtype="float7")
    with pytest.raises(ModelscaleError, match="device"):
        measure_latency(tiny_cnn, x, device="tpu")


def test_cpu_peak_memory_sees_the_activations():
    batch, hidden = 64, 4000
    model = nn.Sequential(nn.Linear(100, hidden), nn.ReLU(), nn.Linear(hidden, 10))
    rep = measure_memory(model, torch.randn(batch, 100))
    activation = batch * hidden * 4  # one float32 hidden activation
    assert rep.method == "torch_profiler_cpu_allocations"
    # the hidden layer's output and the ReLU's output are alive together at the peak
    assert 2 * activation <= rep.peak_bytes <= 3 * activation
    assert rep.param_bytes == sum(p.numel() * 4 for p in model.parameters())
    assert rep.total_bytes == rep.param_bytes + rep.peak_bytes


@pytest.mark.gpu
def test_cuda_latency_and_memory():
    model = _mlp(256)
    x = torch.randn(16, 32)
    rep = measure_latency(model, x, device="cuda", warmup=2, repeats=5)
    assert rep.timer == "cuda_event" and 0 < rep.median_ms <= rep.p90_ms
    mem = measure_memory(model, x, device="cuda")
    assert mem.method == "cuda_max_memory_allocated" and mem.peak_bytes >= 16 * 256 * 4
    assert next(model.parameters()).device.type == "cpu"


def test_pair_of_models_in_different_dtypes_gets_inputs_cast_per_model():
    dense = _mlp(16)
    half = _mlp(16).to(torch.bfloat16)
    pair = measure_latency_pair(dense, half, torch.randn(2, 32), warmup=0, repeats=2, threads=1)
    assert (pair.a.dtype, pair.b.dtype) == ("float32", "bfloat16")


def test_pair_is_timed_in_rounds_on_fresh_copies_and_leaves_the_models_alone():
    from modelscale.measure.latency import MIN_ROUNDS

    a, b = _mlp(64).train(), _mlp(8)
    before = [p.detach().clone() for p in a.parameters()]
    pair = measure_latency_pair(a, b, torch.randn(4, 32), warmup=1, repeats=12, threads=1, time_budget_s=0.3)
    stats = pair.stats
    assert stats.rounds >= MIN_ROUNDS and stats.pairs >= max(12, stats.rounds)
    assert stats.fresh_copies and stats.round_spread is not None
    assert stats.contention is not None and stats.contention.window_s > 0
    assert a.training and all(torch.equal(p, q) for p, q in zip(a.parameters(), before))


class _NoCopy(nn.Linear):
    def __deepcopy__(self, memo):
        raise TypeError("this module cannot be copied")


def test_a_model_that_cannot_be_copied_is_timed_as_it_is():
    pair = measure_latency_pair(
        _NoCopy(32, 10), _mlp(8), torch.randn(4, 32), warmup=0, repeats=6, threads=1, time_budget_s=0.1
    )
    assert not pair.stats.fresh_copies and pair.stats.rounds >= 6
