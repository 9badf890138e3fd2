"""Package-level promises: a cheap import and a public API that resolves."""

from __future__ import annotations

import subprocess
import sys

import modelscale

HEAVY = ("transformers", "onnx", "onnxruntime", "optuna", "matplotlib", "peft", "torchao", "sklearn", "scipy")


def test_import_does_not_load_heavy_optional_libraries():
    code = (
        "import sys, modelscale, modelscale.cli, modelscale.core.apply\n"
        f"loaded = [m for m in {HEAVY!r} if m in sys.modules]\n"
        "cuda = __import__('torch').cuda.is_initialized()\n"
        "print(loaded, cuda)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[] False"


def test_public_names_resolve():
    for name in modelscale.__all__:
        assert getattr(modelscale, name) is not None, name
