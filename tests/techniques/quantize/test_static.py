"""Observers, batch-norm folding and static int8: known ranges, exact folding, real int8 kernels, digits.

Accuracy claims use sklearn's digits (seed 0, the standard split of `load_data("digits")`): the session
`digits_cnn` and an mlp trained here; the quantized layers' bytes are read from saved safetensors files.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from modelscale import load_compressed, save_compressed
from modelscale.core.apply import apply
from modelscale.core.errors import ModelscaleError
from modelscale.techniques.quantize.common import int_mm_available, safetensors_tensor_bytes, sqnr_db
from modelscale.techniques.quantize.fold_bn import fold_batchnorm, refold
from modelscale.techniques.quantize.int8_kernels import onednn_linear_problem
from modelscale.techniques.quantize.observers import (
    MinMaxObserver,
    MovingAverageObserver,
    PercentileObserver,
    activation_qparams,
    make_observer,
)
from modelscale.techniques.quantize.static_int8 import (
    SIMULATED_CONV_NOTE,
    StaticInt8Config,
    StaticInt8Layer,
    choose_kernel,
)
from modelscale.train import TrainConfig, evaluate, fit


# --- observers -------------------------------------------------------------------------------------
def test_minmax_and_moving_average_track_known_ranges():
    a = torch.linspace(-1.0, 2.0, 101)
    b = torch.linspace(-3.0, 1.0, 101)
    mm = MinMaxObserver()
    mm.observe(a)
    mm.observe(b)
    assert mm.range() == (-3.0, 2.0)
    ma = MovingAverageObserver(averaging_constant=0.25)
    ma.observe(a)
    ma.observe(b)
    lo, hi = ma.range()
    assert lo == pytest.approx(-1.0 + 0.25 * (-3.0 + 1.0))  # -1.5
    assert hi == pytest.approx(2.0 + 0.25 * (1.0 - 2.0))  # 1.75
    assert int(ma.count) == 2


def test_percentile_observer_ignores_rare_outliers_and_keeps_every_count():
    g = torch.Generator().manual_seed(0)
    obs = PercentileObserver(percentile=99.0, bins=2048)
    small = torch.rand(50_000, generator=g) * 2 - 1  # uniform on [-1, 1]
    obs.observe(small)
    assert obs.abs_range() == pytest.approx(0.99, abs=0.002)  # |x| 99th percentile of U(-1, 1)
    lo, hi = obs.range()  # 1st and 99th percentiles of x
    assert lo == pytest.approx(-0.98, abs=0.002) and hi == pytest.approx(0.98, abs=0.002)
    obs.observe(torch.tensor([1000.0, -0.5]))  # grows the histogram by merging bin pairs
    assert float(obs.bound) >= 1000.0
    assert float(obs.histogram.sum()) == 50_002  # merging lost nothing
    assert obs.abs_range() <= 1.0  # one coarser bin above the bulk, not the 1000 outlier
    assert float(obs.max_val) == 1000.0
    full = PercentileObserver(percentile=100.0)
    full.observe(small)
    assert full.range() == (float(small.min()), float(small.max()))  # p = 100 is the true range


def test_activation_qparams_map_the_range_ends_to_the_code_ends():
    scale, zero = activation_qparams(-1.0, 3.0, bits=8, symmetric=False)
    assert scale == pytest.approx(4.0 / 255) and zero == 64
    assert round(-1.0 / scale) + zero == 0 and round(3.0 / scale) + zero == 255
    scale, zero = activation_qparams(-1.0, 3.0, bits=8, symmetric=True)
    assert scale == pytest.approx(3.0 / 127) and zero == 0
    scale, zero = activation_qparams(0.5, 2.0, bits=4, symmetric=False)  # the range always holds 0
    assert scale == pytest.approx(2.0 / 15) and zero == 0
    with pytest.raises(ModelscaleError, match="valid options"):
        make_observer("entropy")
    with pytest.raises(ModelscaleError, match="saw no data"):
        MinMaxObserver().qparams()


# --- batch-norm folding ------------------------------------------------------------------------------
def _random_bn_statistics(model: nn.Module) -> nn.Module:
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            if m.running_mean is None:
                continue
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.2)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.2)
    return model.eval()


def _zoo_cnn():
    from modelscale.models import build_model

    return build_model("cnn", num_classes=10, input_shape=(1, 8, 8)), torch.rand(8, 1, 8, 8), 3


def _resnet18():
    torchvision = pytest.importorskip("torchvision")
    return torchvision.models.resnet18(num_classes=10), torch.rand(2, 3, 64, 64), 20


@pytest.mark.parametrize("build", [_zoo_cnn, _resnet18], ids=["zoo-cnn", "resnet18"])
def test_fold_batchnorm_is_exact(build):
    model, x, pairs = build()
    model = _random_bn_statistics(model)
    with torch.no_grad():
        reference = model(x)
        folded = fold_batchnorm(model)
        out = model(x)
    assert folded.method == "fx" and len(folded.pairs) == pairs
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    torch.testing.assert_close(out, reference, atol=1e-5, rtol=1e-5)
    # a fresh model refolded with the recorded pairs takes the folded weights strictly
    fresh = refold(build()[0].eval(), folded.pairs)
    fresh.load_state_dict(model.state_dict(), strict=True)


class _Untraceable(nn.Module):
    """Data-dependent control flow defeats torch.fx; the Sequential still holds the pairs."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 1))
        self.other = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4, track_running_stats=False))

    def forward(self, x):
        return self.body(x) if float(x.sum()) > 0 else self.other(x)


def test_fold_batchnorm_falls_back_to_sequential_adjacency():
    model = _random_bn_statistics(_Untraceable())
    x = torch.rand(2, 1, 6, 6)
    with torch.no_grad():
        reference = model(x)
        folded = fold_batchnorm(model)
        out = model(x)
    assert folded.method == "sequential"
    assert folded.pairs == [("body.0", "body.1")]
    assert any("torch.fx" in n for n in folded.notes)
    assert any("track_running_stats" in n for n in folded.notes)  # skipped, said so
    assert isinstance(model.body[1], nn.Identity) and isinstance(model.other[1], nn.BatchNorm2d)
    torch.testing.assert_close(out, reference, atol=1e-5, rtol=1e-5)


# --- the int8 layer and its kernels ----------------------------------------------------------------
@pytest.mark.parametrize("symmetric", [False, True], ids=["uint8-asym", "int8-sym"])
def test_static_layer_kernels_match_the_reference(symmetric):
    torch.manual_seed(0)
    linear, conv = nn.Linear(48, 24), nn.Conv2d(8, 16, 3, padding=1, stride=2)
    xl, xc = torch.randn(5, 48), torch.rand(3, 8, 9, 9) * 2 - 0.3
    with torch.no_grad():
        for module, x in ((linear, xl), (conv, xc)):
            scale, zero = activation_qparams(float(x.min()), float(x.max()), symmetric=symmetric)
            layer = StaticInt8Layer(module, x_scale=scale, x_zero_point=zero, symmetric=symmetric)
            simulated = layer(x)
            assert sqnr_db(module(x), simulated) > 30  # int8 weights and inputs: a small error
            kernel, why = choose_kernel(layer, "auto")
            if module is linear:
                fastest = "onednn" if onednn_linear_problem() is None else "int_mm"
                assert kernel == (fastest if fastest == "onednn" or int_mm_available() else "simulated")
            if kernel == "simulated":
                continue
            layer.kernel = kernel
            real = layer(x)
            if kernel == "int_mm":  # integer sums: the very same numbers
                torch.testing.assert_close(real, simulated, rtol=1e-6, atol=1e-6)
            else:
                torch.testing.assert_close(real, simulated, rtol=1e-4, atol=1e-5)
            # the packed-weight cache is never copied, and the copy recomputes the same output
            torch.testing.assert_close(copy.deepcopy(layer)(x), real)


def test_static_int8_needs_calibration_data():
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    with pytest.raises(ModelscaleError, match="calibration data.*--data"):
        apply(model, StaticInt8Config())
    with pytest.raises(ModelscaleError, match="bits"):
        StaticInt8Config(bits=9)


def test_simulated_conv_says_so_and_matches_the_real_kernel():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 64, 10)
    )
    model = _random_bn_statistics(model)
    batches = [(torch.rand(8, 1, 8, 8), None) for _ in range(2)]
    simulated = apply(model, StaticInt8Config(kernel="simulated"), calibration=batches)
    assert SIMULATED_CONV_NOTE in simulated.record.notes
    assert {r["kernel"] for r in simulated.record.layers} == {"simulated"}
    auto = apply(model, StaticInt8Config(), calibration=batches)
    conv_kernel = auto.record.layers[0]["kernel"]
    assert (SIMULATED_CONV_NOTE in auto.record.notes) == (conv_kernel == "simulated")
    assert auto.record.state["folded"] == [["0", "1"]]
    x = batches[0][0]
    torch.testing.assert_close(auto.model(x), simulated.model(x), rtol=1e-4, atol=1e-5)


# --- real data ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def digits_mlp(digits):
    from modelscale.models import build_model

    torch.manual_seed(0)
    model = build_model("mlp", num_classes=10, input_shape=digits.input_shape)
    cfg = TrainConfig(
        epochs=6, optimizer="adamw", batch_size=64, lr=3e-3, seed=0, progress=False, device="cpu"
    )
    fit(model, digits, cfg)
    return model.eval(), evaluate(model, digits.test)["accuracy"]


def calibration(digits, n=4):
    from modelscale.data import make_loader

    loader = make_loader(digits.train, batch_size=64, shuffle=True, seed=0)
    return [b for _, b in zip(range(n), loader, strict=False)]


def layer_file_bytes(folder, layers) -> int:
    sizes = safetensors_tensor_bytes(folder / "model.safetensors")
    return sum(n for key, n in sizes.items() if key.rpartition(".")[0] in layers)


CASES = [
    ("mlp", "minmax", "asymmetric"),
    ("mlp", "moving_average", "symmetric"),
    ("cnn", "percentile", "asymmetric"),
]


@pytest.mark.parametrize(("name", "observer", "activations"), CASES, ids=["-".join(c) for c in CASES])
def test_static_int8_digits_accuracy_size_and_reload(name, observer, activations, digits, request, tmp_path):
    from modelscale.models import build_model

    model, baseline = request.getfixturevalue("digits_mlp" if name == "mlp" else "digits_cnn")
    assert baseline > 0.93
    config = StaticInt8Config(observer=observer, activations=activations)
    result = apply(model, config, calibration=calibration(digits))
    accuracy = evaluate(result.model, digits.test)["accuracy"]
    assert accuracy >= baseline - 0.005, (baseline, accuracy)
    kinds = {(r["kind"], r["kernel"]) for r in result.record.layers}
    if onednn_linear_problem() is None:
        assert ("linear", "onednn") in kinds
    elif int_mm_available():
        assert ("linear", "int_mm") in kinds
    if name == "cnn":
        assert result.record.summary["folded_bn"] == 3

    save_compressed(tmp_path / "float", model, [])
    save_compressed(tmp_path / "int8", result.model, [result.record])
    layers = {row["name"] for row in result.record.layers}
    ratio = layer_file_bytes(tmp_path / "float", layers) / layer_file_bytes(tmp_path / "int8", layers)
    assert ratio >= 3.5, ratio
    assert (tmp_path / "int8" / "model.safetensors").stat().st_size < (
        tmp_path / "float" / "model.safetensors"
    ).stat().st_size
    reloaded = load_compressed(
        tmp_path / "int8", build_model(name, num_classes=10, input_shape=digits.input_shape)
    )
    x = torch.stack([digits.test[i][0] for i in range(64)])
    with torch.no_grad():
        torch.testing.assert_close(reloaded.eval()(x), result.model(x), rtol=1e-6, atol=1e-6)
