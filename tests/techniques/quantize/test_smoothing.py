"""SmoothQuant scale migration (smoothing.py) and dynamic_int8's `smooth` option."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from modelscale.core.apply import apply
from modelscale.core.errors import ModelscaleError
from modelscale.techniques.quantize.common import sqnr_db
from modelscale.techniques.quantize.dynamic_int8 import DynamicInt8Config
from modelscale.techniques.quantize.smoothing import input_channel_absmax, smoothing_scales


def outlier_inputs(count: int = 4, rows: int = 32, seed: int = 0) -> list[torch.Tensor]:
    """Activations with a few channels ~50x the rest (what SmoothQuant targets), on every token."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        x = torch.randn(rows, 64, generator=g)
        x[:, :3] *= 50.0
        out.append(x)
    return out


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(64, 48)
        self.out = nn.Linear(48, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.fc(x)))


def test_migration_is_exact_in_float_and_alpha_one_flattens_the_inputs():
    model = Net()
    layer = model.fc
    batches = outlier_inputs()
    absmax = input_channel_absmax(model, [("fc", layer)], batches)["fc"]
    torch.testing.assert_close(absmax, torch.cat(batches).abs().amax(0))
    for alpha in (0.0, 0.5, 1.0):
        s = smoothing_scales(layer.weight, absmax, alpha)
        assert s.shape == (64,) and bool((s > 0).all())
        x = batches[0]
        torch.testing.assert_close(
            (x / s) @ (layer.weight * s).t(), x @ layer.weight.t(), rtol=1e-4, atol=1e-4
        )
    flat = torch.cat(batches) / smoothing_scales(layer.weight, absmax, 1.0)
    torch.testing.assert_close(flat.abs().amax(0), torch.ones(64))


def test_smoothing_lowers_the_error_of_per_row_int8_on_outlier_channels():
    model = Net().eval()
    batches = outlier_inputs()
    x = outlier_inputs(1, seed=9)[0]
    with torch.no_grad():
        want = model(x)
        plain = apply(model, DynamicInt8Config(activations="row")).model(x)
        smooth = apply(model, DynamicInt8Config(activations="row", smooth=0.5), calibration=batches)
        got = smooth.model(x)
    assert smooth.record.summary["smooth"] == 0.5
    assert all(row.get("smoothed") for row in smooth.record.layers)
    assert sqnr_db(want, got) > sqnr_db(want, plain) + 4.0  # measured 43.6 vs 37.6 dB here
    # the effective weight (what .weight returns) is still the float weight, within int8 rounding
    torch.testing.assert_close(smooth.model.fc.weight, model.fc.weight, rtol=0.0, atol=0.02)


@pytest.mark.parametrize("activations", ["row", "tensor"])
def test_smoothed_layers_save_and_reload_exactly(tmp_path, activations):
    from modelscale.core.saving import save_compressed
    from modelscale.models.loading import load_compressed

    model = Net().eval()
    result = apply(
        model, DynamicInt8Config(activations=activations, smooth=0.5), calibration=outlier_inputs()
    )
    x = outlier_inputs(1, seed=3)[0]
    with torch.no_grad():
        out = result.model(x)
    save_compressed(tmp_path, result.model, [result.record])
    reloaded = load_compressed(tmp_path, Net()).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x), out, rtol=1e-5, atol=1e-6)
    assert reloaded.fc.smooth_inv is not None and not torch.equal(reloaded.fc.smooth_inv, torch.ones(64))


def test_dict_batches_and_bad_input():
    class Keyword(Net):
        def forward(self, *, features: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
            return super().forward(features)

    model = Keyword().eval()
    absmax = input_channel_absmax(model, [("fc", model.fc)], [{"features": b} for b in outlier_inputs(2)])
    assert absmax["fc"].shape == (64,)
    with pytest.raises(ModelscaleError, match="needs calibration"):
        apply(Net(), DynamicInt8Config(smooth=0.5))
    with pytest.raises(ModelscaleError, match=r"smooth must be in \[0, 1\]"):
        DynamicInt8Config(smooth=1.5)
    with pytest.raises(ModelscaleError, match="calibration batches must be"):
        input_channel_absmax(Net(), [("fc", Net().fc)], ["text"])


def test_smoothed_per_row_layers_compile_without_graph_breaks_and_match_eager():
    """torch.compile fuses the per-row quantization and rescale (benchmarks/int8_encoder.py times it)."""
    model = Net().eval()
    result = apply(model, DynamicInt8Config(activations="row", smooth=0.5), calibration=outlier_inputs())
    x = outlier_inputs(1, seed=4)[0]
    with torch.no_grad():
        eager = result.model(x)
        compiled = torch.compile(result.model, fullgraph=True)(x)  # fullgraph: a graph break raises
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-4)
