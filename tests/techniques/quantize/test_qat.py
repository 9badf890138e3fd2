"""Quantization-aware training: STE gradients, observers that freeze in eval, digits accuracy, save/reload.

Accuracy claims use sklearn's digits (seed 0, the standard split of `load_data("digits")`).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from modelscale import load_compressed, save_compressed
from modelscale.core.apply import apply
from modelscale.core.errors import ModelscaleError
from modelscale.techniques.quantize.common import quantized_bytes, safetensors_tensor_bytes
from modelscale.techniques.quantize.qat import FakeQuantLayer, QATConfig, convert_qat
from modelscale.techniques.quantize.static_int8 import StaticInt8Layer
from modelscale.train import TrainConfig, evaluate, fit

FINETUNE = {"optimizer": "adamw", "lr": 1e-4, "batch_size": 64, "seed": 0, "progress": False, "device": "cpu"}


def test_fake_quant_passes_gradients_straight_through_and_freezes_in_eval():
    torch.manual_seed(0)
    layer = FakeQuantLayer(nn.Linear(16, 4), averaging_constant=0.5)
    x = torch.randn(8, 16, requires_grad=True)
    layer.train()
    layer(x).sum().backward()
    assert int(layer.observer.count) == 1
    # STE: inside the observed range the input gradient is exactly the float layer's (column sums of W̃)
    w_fq = layer.module.weight.detach()
    assert layer.module.weight.grad is not None and layer.module.weight.grad.abs().sum() > 0
    scale = w_fq.abs().amax(1, keepdim=True) / 127
    w_tilde = torch.round(w_fq / scale).clamp(-127, 127) * scale
    torch.testing.assert_close(x.grad, w_tilde.sum(0).expand_as(x), rtol=1e-5, atol=1e-6)
    lo, hi = layer.observer.range()
    layer.train()
    layer(x * 3)  # a wider batch moves the moving average halfway
    lo2, hi2 = layer.observer.range()
    assert hi2 == pytest.approx(hi + 0.5 * (3 * float(x.detach().max()) - hi), rel=1e-5)
    layer.eval()
    layer(x * 10)  # frozen in eval
    assert layer.observer.range() == (lo2, hi2) and int(layer.observer.count) == 2
    # outside the clamp range the gradient is zero
    z = torch.full((1, 16), 1e3, requires_grad=True)
    layer(z).sum().backward()
    assert torch.count_nonzero(z.grad) == 0


@pytest.fixture(scope="module")
def digits_mlp(digits):
    from modelscale.models import build_model

    torch.manual_seed(0)
    model = build_model("mlp", num_classes=10, input_shape=digits.input_shape)
    fit(model, digits, TrainConfig(epochs=6, **{**FINETUNE, "lr": 3e-3}))
    return model.eval(), evaluate(model, digits.test)["accuracy"]


def calibration(digits, n=4):
    from modelscale.data import make_loader

    loader = make_loader(digits.train, batch_size=64, shuffle=True, seed=0)
    return [b for _, b in zip(range(n), loader, strict=False)]


def layer_file_bytes(folder, layers) -> int:
    sizes = safetensors_tensor_bytes(folder / "model.safetensors")
    return sum(n for key, n in sizes.items() if key.rpartition(".")[0] in layers)


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_qat_digits_keeps_accuracy_and_converts_to_small_int8(name, digits, request, tmp_path):
    from modelscale.models import build_model

    model, baseline = request.getfixturevalue("digits_mlp" if name == "mlp" else "digits_cnn")
    result = apply(model, QATConfig(), calibration=calibration(digits))
    assert all(
        isinstance(result.model.get_submodule(r["name"]), FakeQuantLayer) for r in result.record.layers
    )
    fit(result.model, digits, TrainConfig(epochs=1, **FINETUNE))
    result.model.eval()
    fake_accuracy = evaluate(result.model, digits.test)["accuracy"]
    converted = convert_qat(result.model)
    accuracy = evaluate(converted.model, digits.test)["accuracy"]
    assert accuracy >= baseline - 0.005, (baseline, fake_accuracy, accuracy)
    assert abs(accuracy - fake_accuracy) <= 0.006  # the int8 model computes what training simulated
    assert converted.record.technique == "static_int8"
    assert all(
        isinstance(converted.model.get_submodule(r["name"]), StaticInt8Layer) for r in converted.record.layers
    )
    assert quantized_bytes(converted.model)["quantized_ratio"] >= 3.5

    save_compressed(tmp_path / "float", model, [])
    save_compressed(tmp_path / "int8", converted.model, [converted.record])
    layers = {r["name"] for r in converted.record.layers}
    ratio = layer_file_bytes(tmp_path / "float", layers) / layer_file_bytes(tmp_path / "int8", layers)
    assert ratio >= 3.5, ratio
    reloaded = load_compressed(
        tmp_path / "int8", build_model(name, num_classes=10, input_shape=digits.input_shape)
    )
    x = torch.stack([digits.test[i][0] for i in range(64)])
    with torch.no_grad():
        torch.testing.assert_close(reloaded.eval()(x), converted.model(x), rtol=1e-6, atol=1e-6)


def test_qat_model_saves_and_reloads_mid_training(digits, tmp_path):
    from modelscale.models import build_model

    def fresh():
        torch.manual_seed(0)
        return build_model("cnn", num_classes=10, input_shape=digits.input_shape, width=0.25)

    result = apply(fresh(), QATConfig())  # no calibration: observers start with training
    assert any("first training step" in n for n in result.record.notes)
    fit(result.model, digits, TrainConfig(epochs=1, max_steps=3, **{**FINETUNE, "lr": 1e-3}))
    save_compressed(tmp_path / "qat", result.model, [result.record])
    reloaded = load_compressed(tmp_path / "qat", fresh())
    x = torch.stack([digits.test[i][0] for i in range(32)])
    result.model.eval()
    reloaded.eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x), result.model(x), rtol=0, atol=0)
    for (name, a), (_, b) in zip(
        result.model.state_dict().items(), reloaded.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    # training continues on the reloaded model and its observers keep updating
    layer = next(m for m in reloaded.modules() if isinstance(m, FakeQuantLayer))
    count = int(layer.observer.count)
    fit(reloaded, digits, TrainConfig(epochs=1, max_steps=2, **FINETUNE))
    assert int(layer.observer.count) > count
    assert isinstance(convert_qat(reloaded).model.get_submodule("classifier"), StaticInt8Layer)
    with pytest.raises(ModelscaleError, match="apply the qat technique"):
        convert_qat(fresh())
