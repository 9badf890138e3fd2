"""Shared fixtures for the export tests: the digits split and a briefly trained, seeded cnn and mlp."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxscript")
pytest.importorskip("onnxruntime")


def _train(name: str, data, epochs: int = 3):
    from modelscale.models import build_model

    torch.manual_seed(0)
    model = build_model(name, num_classes=data.num_classes, input_shape=data.input_shape)
    try:
        from modelscale.train import TrainConfig, fit
    except ImportError:  # trainer unavailable: a plain seeded loop does the same job
        from modelscale.data import make_loader

        opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
        for epoch in range(epochs):
            for x, y in make_loader(data.train, batch_size=64, shuffle=True, seed=epoch):
                opt.zero_grad()
                torch.nn.functional.cross_entropy(model(x), y).backward()
                opt.step()
    else:
        fit(model, data, TrainConfig(epochs=epochs, lr=3e-3, progress=False, seed=0))
    return model.eval()


@pytest.fixture(scope="session")
def digits():
    from modelscale.data import load_data

    return load_data("digits", seed=0)


@pytest.fixture(scope="session")
def trained(digits):
    """{"cnn": model, "mlp": model}, trained 3 epochs on digits (seed 0)."""
    return {name: _train(name, digits) for name in ("cnn", "mlp")}


@pytest.fixture(scope="session")
def exported(trained, tmp_path_factory):
    """{"cnn": path, "mlp": path}: the trained models exported with the default (dynamo) exporter."""
    from modelscale.export import export_onnx

    out = tmp_path_factory.mktemp("onnx")
    return {
        name: export_onnx(model, torch.rand(1, 1, 8, 8), out / f"{name}.onnx")
        for name, model in trained.items()
    }


@pytest.fixture(scope="session")
def test_loader(digits):
    from modelscale.data import make_loader

    return make_loader(digits.test, batch_size=128, shuffle=False)
