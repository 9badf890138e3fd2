"""Conformance checks for technique authors: `check_technique(config)` runs a technique through the same
contract every built-in technique passes (scikit-learn's `check_estimator` is the model).

What it checks, raising `AssertionError` with the reason at the first failure:

1. registration: the config's type is registered, its lifecycle facts are consistent (`applies_to` is
   known, the `strength` knob is a field), its summary line is not empty;
2. the config is data: it default-constructs, round-trips through JSON and YAML, and an unknown field is
   refused with a `ModelscaleError`;
3. on each tiny model it applies to (MLP, CNN, transformer; `hf:tiny-gpt2` for `applies_to="hf"` when
   transformers is installed): apply leaves the input model untouched, keeps the output shape, gives
   finite outputs and a plain-JSON record whose config round-trips; a declared lifecycle
   (callbacks, finalize) runs; the result saves with `save_compressed` (dense and sparse storage) and
   reloads on a fresh model with the same outputs, and `measure_size` gives the written file's bytes.

Example::

    from modelscale.testing import check_technique
    report = check_technique(MyTechniqueConfig())     # raises AssertionError on a broken contract
    print(report.passed)                              # ["registered", "round-trip", "mlp: apply", ...]
"""

from __future__ import annotations

import copy
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from modelscale.core.config import TechniqueConfig

MODEL_KINDS = ("mlp", "cnn", "transformer")


class TinyTransformer(nn.Module):
    """Embedding → one encoder layer → mean pool → linear head (token ids in, class logits out)."""

    def __init__(self, vocab: int = 32, dim: int = 32, heads: int = 4, classes: int = 5) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.block = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=64, dropout=0.0, batch_first=True)
        self.head = nn.Linear(dim, classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(self.embed(tokens)).mean(dim=1))


def tiny_model(kind: str) -> nn.Module:
    """A fresh tiny model of `kind` (mlp, cnn, transformer), the same weights every call."""
    if kind == "mlp":
        torch.manual_seed(1)
        return nn.Sequential(
            nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 10)
        )
    if kind == "cnn":
        torch.manual_seed(2)
        return nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.Conv2d(8, 16, 3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(16, 10),
        )
    if kind == "transformer":
        torch.manual_seed(3)
        return TinyTransformer()
    raise ValueError(f"kind must be one of {', '.join(MODEL_KINDS)}; got {kind!r}")


def tiny_inputs(kind: str, batch: int = 4, seed: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets) matching the tiny model `kind`."""
    g = torch.Generator().manual_seed(seed)
    if kind == "transformer":
        return torch.randint(0, 32, (batch, 12), generator=g), torch.randint(0, 5, (batch,), generator=g)
    x = torch.rand(batch, 1, 8, 8, generator=g)
    return x, torch.randint(0, 10, (batch,), generator=g)


@dataclass
class CheckReport:
    technique: str
    passed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def _check(condition: bool, what: str) -> None:
    if not condition:
        raise AssertionError(what)


def check_config(config: TechniqueConfig, report: CheckReport) -> None:
    """Registration and configs-are-data checks (1 and 2 above)."""
    import yaml

    from modelscale.core.errors import ModelscaleError
    from modelscale.core.registry import APPLIES_TO, config_from_dict, get_technique

    _check(isinstance(config, TechniqueConfig), f"{config!r} is not a TechniqueConfig")
    technique = get_technique(config.type)  # raises for an unregistered type
    _check(technique.config_cls is type(config), f"{config.type} is registered with another config class")
    _check(
        technique.applies_to in APPLIES_TO, f"{config.type}: applies_to {technique.applies_to!r} is unknown"
    )
    _check(bool(technique.summary), f"{config.type}: the apply function or config needs a docstring summary")
    fields = {f for f in type(config).__dataclass_fields__}
    _check(technique.strength is None or technique.strength in fields, f"{config.type}: bad strength field")
    report.passed.append("registered")
    cls = type(config)
    default = cls()
    as_dict = default.to_dict()
    _check(as_dict["type"] == config.type and as_dict["version"] == cls.version, "to_dict lacks type/version")
    _check(config_from_dict(json.loads(json.dumps(as_dict))) == default, "default config: JSON round trip")
    _check(config_from_dict(yaml.safe_load(default.to_yaml())) == default, "default config: YAML round trip")
    _check(config_from_dict(json.loads(config.to_json())) == config, "given config: JSON round trip")
    try:
        config_from_dict({"type": config.type, "no_such_field": 1})
    except ModelscaleError as exc:
        _check("unknown field" in str(exc), f"unknown-field error does not say so: {exc}")
    else:
        raise AssertionError(f"{config.type} accepted an unknown field")
    report.passed.append("round-trip")


def check_on_model(
    config: TechniqueConfig,
    model: nn.Module,
    fresh: nn.Module,
    x: torch.Tensor,
    calibration: list[Any],
    label: str,
) -> None:
    """Apply, lifecycle, save and reload on one model (check 3 above); `fresh` is an untouched copy."""
    from modelscale.core.apply import apply
    from modelscale.core.registry import config_from_dict, get_technique
    from modelscale.core.saving import save_compressed
    from modelscale.measure.size import measure_size
    from modelscale.models.loading import load_compressed

    technique = get_technique(config.type)
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    reference = model(x)
    result = apply(
        model, config, calibration=calibration, example_inputs=x, loss_fn=nn.functional.cross_entropy
    )
    after = model.state_dict()
    _check(
        before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before),
        f"{label}: apply changed the input model (it must work on a copy unless inplace=True)",
    )
    record = result.record
    if technique.has_lifecycle:
        technique.callbacks(config)  # constructs without a trainer
        done = technique.finalize(result.model, config)
        record = done if done is not None else record
    out = result.model.eval()(x)
    _check(
        out.shape == reference.shape, f"{label}: output shape {tuple(out.shape)} != {tuple(reference.shape)}"
    )
    _check(bool(torch.isfinite(out).all()), f"{label}: outputs are not finite")
    _check(result.record.technique == config.type, f"{label}: the record names {result.record.technique!r}")
    _check(config_from_dict(result.record.config) == config, f"{label}: record.config does not round-trip")
    json.dumps(record.to_dict())  # the record is plain data (raises TypeError otherwise)
    with tempfile.TemporaryDirectory() as tmp:
        for storage in ("dense", "sparse"):
            folder = Path(tmp) / storage
            save_compressed(folder, result.model, [record], storage=storage)
            written = (folder / "model.safetensors").stat().st_size
            measured = measure_size(result.model, storage=storage).file_bytes
            _check(
                measured == written,
                f"{label}: the size measured for {storage} storage ({measured} B) is not the "
                f"file's ({written} B)",
            )
            reloaded = load_compressed(folder, copy.deepcopy(fresh)).eval()
            torch.testing.assert_close(
                reloaded(x),
                out,
                rtol=1e-5,
                atol=1e-6,
                msg=lambda m, s=storage: f"{label} ({s} storage): reloaded outputs differ: {m}",
            )


def check_technique(config: TechniqueConfig, *, models: tuple[str, ...] = MODEL_KINDS) -> CheckReport:
    """Run the contract on `config`'s technique; returns which checks passed and which were skipped."""
    from modelscale.core.registry import get_technique

    report = CheckReport(config.type)
    check_config(config, report)
    technique = get_technique(config.type)
    if technique.applies_to == "hf":
        return _check_hf(config, report)
    for kind in models:
        x, _ = tiny_inputs(kind)
        calibration = [tiny_inputs(kind, batch=8, seed=5 + i) for i in range(2)]
        check_on_model(config, tiny_model(kind), tiny_model(kind), x, calibration, kind)
        report.passed.append(f"{kind}: apply, save, reload")
    return report


def _check_hf(config: TechniqueConfig, report: CheckReport) -> CheckReport:
    try:
        import transformers  # noqa: F401
    except ImportError:
        report.skipped.append("hf:tiny-gpt2 (transformers is not installed)")
        return report
    from modelscale.models import build_model

    def gpt2() -> nn.Module:
        torch.manual_seed(5)
        return build_model("hf:tiny-gpt2", task="lm", block_size=32, num_classes=256)

    x = torch.randint(0, 256, (3, 12), generator=torch.Generator().manual_seed(4))
    check_on_model(config, gpt2(), gpt2(), x, [], "hf:tiny-gpt2")
    report.passed.append("hf:tiny-gpt2: apply, save, reload")
    return report
