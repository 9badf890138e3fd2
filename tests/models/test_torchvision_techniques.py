"""A cross-section of torchvision classifiers through every generic technique, saved and reloaded.

One model per structure that has broken a technique before: depthwise + squeeze-excite + residual adds
(mobilenet_v3_small), channel shuffle (shufflenet_v2_x0_5), concatenation without any Linear
(squeezenet1_1: what needs a Linear refuses saying so), attention (torchvision's own VisionTransformer
class at a small size), and, with MODELSCALE_ZOO=1 (about 2 min each), a plain residual net (resnet18)
and version-checked state dicts (mnasnet0_5). Each pair either applies — then the output is finite and
the saved folder reloads (rebuilt through the zoo for named models) to the same outputs — or refuses
with a one-line ModelscaleError; no other exception may escape. benchmarks/torchvision_zoo.py runs all
80 models.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest
import torch
from torch import nn

from modelscale.core.apply import apply
from modelscale.core.errors import ModelscaleError
from modelscale.core.registry import get_technique, list_techniques
from modelscale.core.saving import save_compressed
from modelscale.measure import count_macs
from modelscale.models.loading import ModelBundle, build_for, load_compressed, save_model_dir

GENERIC = [n for n in list_techniques() if get_technique(n).applies_to != "hf"]
SIDE = 32
# (model, technique) pairs that must refuse, and a phrase their one-line reason contains.
REFUSALS = {("shufflenet_v2_x0_5", "structured_prune"): "channel shuffle"}
# squeezenet has no Linear layer: a technique that works on Linear layers (or trains a Linear head)
# refuses saying so; these, which work on convolutions, must apply.
NO_LINEAR = "squeezenet1_1"
MUST_APPLY_WITHOUT_LINEAR = {"lora", "structured_prune", "magnitude_prune", "weight_cluster", "cast"}


def tiny_vit() -> nn.Module:
    from torchvision.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    return VisionTransformer(
        image_size=SIDE, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64, num_classes=10
    )


def run(name: str, technique: str, build: Callable[[], ModelBundle], tmp_path) -> str:
    """'ok' or 'refused: <reason>' for one pair; asserts the reload and the MAC agreement."""
    bundle = build()
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, SIDE, SIDE, generator=g)
    calibration = [(torch.rand(2, 3, SIDE, SIDE, generator=g), torch.tensor([0, 1])) for _ in range(2)]
    tech = get_technique(technique)
    try:
        result = apply(
            bundle.model,
            tech.config_cls(),
            example_inputs=x,
            calibration=calibration,
            loss_fn=nn.functional.cross_entropy,
        )
    except ModelscaleError as exc:
        assert "\n" not in str(exc)
        return f"refused: {exc}"
    record = result.record
    if tech.has_lifecycle:
        record = tech.finalize(result.model, tech.config_cls()) or record
    with torch.no_grad():
        out = result.model.eval()(x)
    assert out.shape == (2, 10) and bool(torch.isfinite(out).all()), (name, technique)
    if "macs_after" in record.summary:  # a record's MACs are the profile's MACs
        assert record.summary["macs_after"] == count_macs(result.model, x).macs
        assert record.summary["macs_before"] == count_macs(bundle.model, x).macs
    folder = tmp_path / technique
    if bundle.spec:
        save_model_dir(folder, ModelBundle(result.model, bundle.spec, [record]))
        reloaded = load_compressed(folder)  # rebuilt through the zoo from the stored spec
    else:
        save_compressed(folder, result.model, [record])
        reloaded = load_compressed(folder, build().model)
    with torch.no_grad():
        torch.testing.assert_close(reloaded.eval()(x), out, rtol=1e-5, atol=1e-5)
    return "ok"


MODELS: dict[str, Callable[[], ModelBundle]] = {
    **{
        name: (
            lambda name=name: build_for(f"torchvision:{name}", input_shape=(3, SIDE, SIDE), num_classes=10)
        )
        for name in ("resnet18", "mobilenet_v3_small", "shufflenet_v2_x0_5", "squeezenet1_1", "mnasnet0_5")
    },
    "vit (tiny VisionTransformer)": lambda: ModelBundle(tiny_vit(), {}, []),
}


ZOO_ONLY = {"resnet18", "mnasnet0_5"}
CASES = [
    pytest.param(
        name,
        marks=pytest.mark.skipif(
            name in ZOO_ONLY and os.environ.get("MODELSCALE_ZOO") != "1", reason="slow: MODELSCALE_ZOO=1"
        ),
    )
    for name in MODELS
]


@pytest.mark.parametrize("name", CASES)
def test_every_generic_technique_applies_or_refuses_and_reloads(name, tmp_path):
    torch.manual_seed(0)
    outcomes = {t: run(name, t, MODELS[name], tmp_path) for t in GENERIC}
    refused = {t: o for t, o in outcomes.items() if o != "ok"}
    if name == NO_LINEAR:
        assert not MUST_APPLY_WITHOUT_LINEAR & set(refused), refused
        assert all("Linear" in reason for reason in refused.values()), refused
        return
    expected = {t: phrase for (model, t), phrase in REFUSALS.items() if model == name}
    assert set(refused) == set(expected), refused
    for technique, phrase in expected.items():
        assert phrase in refused[technique], refused[technique]
