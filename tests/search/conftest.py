from __future__ import annotations

import os

import pytest

from tests.postgres import available, postgres_server


@pytest.fixture(scope="session")
def postgres_url():
    if not available():
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL is missing: .ci/run installs it (apt-get install postgresql)")
        pytest.skip("PostgreSQL is not installed here (apt-get install postgresql); CI installs it")
    with postgres_server() as url:
        yield url


SPACE = {
    "stages": [
        {"name": "prune", "optional": True,
         "options": [{"technique": "structured_prune", "knobs": {"ratio": {"low": 0.3, "high": 0.6}}}]},
        {"name": "tune", "finetune": {"epochs": [0, 1], "lr": 0.002}},
        {"name": "quantize", "optional": True,
         "options": [{"technique": "weight_only", "knobs": {"bits": [4, 8]}}, {"technique": "dynamic_int8"}]},
    ]
}  # fmt: skip


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """An mlp trained on digits for a few epochs, saved as a folder (the model every search starts from)."""
    from modelscale.cli import main

    folder = tmp_path_factory.mktemp("base") / "mlp"
    assert main(["train", "mlp", "--data", "digits", "--epochs", "4", "--out", str(folder)]) == 0
    return folder
