"""Real data: quantized digits models keep their test accuracy and really shrink on disk.

The zoo `mlp` and a half-width zoo `cnn` are trained briefly on sklearn's digits (seed 0, the
standard split of `load_data("digits")`), then quantized; accuracy is compared on the same test split
and the bytes of the quantized layers are read from the saved safetensors files.
"""

from __future__ import annotations

from functools import lru_cache

import pytest
import torch

from modelscale import load_compressed, save_compressed
from modelscale.core.apply import apply
from modelscale.techniques.quantize.cast import CastConfig
from modelscale.techniques.quantize.common import safetensors_tensor_bytes
from modelscale.techniques.quantize.dynamic_int8 import DynamicInt8Config
from modelscale.techniques.quantize.weight_only import WeightOnlyConfig

pytest.importorskip("modelscale.train")

from modelscale.train import TrainConfig, evaluate, fit  # noqa: E402

TRAIN = {"optimizer": "adamw", "batch_size": 64, "seed": 0, "progress": False, "device": "cpu", "lr": 3e-3}


@lru_cache(maxsize=2)
def trained(name: str):
    """(data, model, test accuracy) for the zoo `name` trained on digits; callers must not change it."""
    from modelscale.data import load_data
    from modelscale.models import build_model

    data = load_data("digits", seed=0)
    torch.manual_seed(0)
    kwargs = {"width": 0.5} if name == "cnn" else {}
    model = build_model(name, num_classes=10, input_shape=data.input_shape, **kwargs)
    fit(model, data, TrainConfig(epochs=6 if name == "mlp" else 3, **TRAIN))
    model.eval()
    return data, model, evaluate(model, data.test)["accuracy"]


def layer_file_bytes(folder, layers) -> int:
    sizes = safetensors_tensor_bytes(folder / "model.safetensors")
    return sum(n for key, n in sizes.items() if key.rpartition(".")[0] in layers)


CASES = [
    ("mlp", DynamicInt8Config(), 0.005, 3.5),
    ("mlp", WeightOnlyConfig(bits=8, group_size=0), 0.005, 3.5),
    ("cnn", WeightOnlyConfig(bits=8, group_size=128), 0.005, 3.5),
    ("mlp", WeightOnlyConfig(bits=4, group_size=32, symmetric=False), 0.02, 5.0),
    ("cnn", WeightOnlyConfig(bits=4, group_size=32, symmetric=False), 0.02, 5.0),
    ("mlp", CastConfig(dtype="bfloat16"), 0.005, 1.95),
    ("cnn", CastConfig(dtype="float8_e4m3"), 0.01, 3.5),
]


@pytest.mark.parametrize(
    ("name", "config", "max_drop", "min_ratio"),
    CASES,
    ids=[f"{n}-{c.type}{getattr(c, 'bits', getattr(c, 'dtype', ''))}" for n, c, _, _ in CASES],
)
def test_quantized_digits_accuracy_and_file_size(name, config, max_drop, min_ratio, tmp_path):
    data, model, baseline = trained(name)
    assert baseline > 0.93, baseline
    result = apply(model, config)
    accuracy = evaluate(result.model, data.test)["accuracy"]
    assert accuracy >= baseline - max_drop, (baseline, accuracy)

    save_compressed(tmp_path / "float", model, [])
    save_compressed(tmp_path / "quant", result.model, [result.record])
    layers = {row["name"] for row in result.record.layers}
    ratio = layer_file_bytes(tmp_path / "float", layers) / layer_file_bytes(tmp_path / "quant", layers)
    assert ratio >= min_ratio, ratio
    whole = (tmp_path / "float" / "model.safetensors").stat().st_size
    assert (tmp_path / "quant" / "model.safetensors").stat().st_size < whole
    # what was saved reloads into the same predictions
    reloaded = load_compressed(tmp_path / "quant", _fresh(name, data))
    x = torch.stack([data.test[i][0] for i in range(64)])
    assert torch.equal(reloaded.eval()(x), result.model(x))


def _fresh(name, data):
    from modelscale.models import build_model

    kwargs = {"width": 0.5} if name == "cnn" else {}
    return build_model(name, num_classes=10, input_shape=data.input_shape, **kwargs)
