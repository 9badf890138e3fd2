import os

import pytest
import torch

# Two cores in CI: keep torch from oversubscribing them.
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device; none is present")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def digits():
    """The real digits data, seeded split (shared by the accuracy tests)."""
    from modelscale.data import load_data

    return load_data("digits", seed=0)


@pytest.fixture(scope="session")
def digits_cnn(digits):
    """The zoo cnn trained on digits once per session: (model, test accuracy). Deep-copy before changing it."""
    from modelscale.models import build_model
    from modelscale.train import TrainConfig, evaluate, fit

    torch.manual_seed(0)
    model = build_model("cnn", num_classes=10, input_shape=(1, 8, 8))
    fit(model, digits, TrainConfig(epochs=12, lr=3e-3, weight_decay=1e-4, seed=0, progress=False))
    return model.eval(), evaluate(model, digits.test)["accuracy"]
