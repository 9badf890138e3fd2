"""`TrainConfig(compile=True)`: fit through torch.compile on real digits, and an honest eager fallback."""

from __future__ import annotations

import math

import pytest
import torch

from modelscale.train import TrainConfig, fit
from tests.train._digits import digits_bundle, mlp


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _config(**kw) -> TrainConfig:
    return TrainConfig(epochs=1, batch_size=64, lr=3e-3, progress=False, seed=0, compile=True, **kw)


def test_fit_compiled_trains_and_records_the_compile_time():
    data = digits_bundle(n_train=256, n_val=128)  # 4 full batches: one compiled graph, no recompile
    model = mlp(hidden=40)
    before = model[1].weight.detach().clone()
    result = fit(model, data, _config())
    assert result.steps == 4 and not torch.equal(before, model[1].weight)
    assert math.isfinite(result.history[-1]["train_loss"])
    report = result.compile
    assert report["status"] == "compiled" and report["fallback"] is None
    assert report["compile_s"] > 0 and report["first_backward_s"] > 0 and report["graphs"] >= 1
    assert type(model).__name__ == "Sequential"  # the user's module itself was trained, not replaced
    assert TrainConfig.from_dict(result.config).compile is True


def test_fit_falls_back_to_eager_when_compiling_fails_and_matches_eager_training():
    import torch._inductor.config as inductor_config

    data = digits_bundle(n_train=256, n_val=128)
    eager = mlp(hidden=41)
    fit(eager, data, TrainConfig(epochs=1, batch_size=64, lr=3e-3, progress=False, seed=0))
    model = mlp(hidden=41)
    with inductor_config.patch({"cpp.cxx": ("/nonexistent/c++",), "fx_graph_cache": False}):
        result = fit(model, data, _config())
    assert result.compile["status"] == "failed" and result.compile["fallback"] == "eager"
    assert "C++ compiler" in result.compile["reason"]
    for a, b in zip(eager.parameters(), model.parameters(), strict=True):
        torch.testing.assert_close(a, b)  # the fallback is plain eager training, step for step
