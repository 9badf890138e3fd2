"""A third-party technique registers through the `modelscale.techniques` entry-point group, with no
edit to the package, and passes `modelscale.testing.check_technique` (run in a fresh interpreter so the
test's registry stays the package's own)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

PLUGIN = '''
"""Scale every Linear weight by a factor (a toy technique from outside the package)."""
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from modelscale.core.apply import ChangeRecord
from modelscale.core.config import TechniqueConfig, check_range, param
from modelscale.core.registry import register
from modelscale.core.select import Target, select_modules


@dataclass(kw_only=True)
class ScaleWeightsConfig(TechniqueConfig):
    """Multiply the targeted Linear weights by `factor`."""

    type: ClassVar[str] = "scale_weights"
    version: ClassVar[int] = 1
    target: Target = param(factory=lambda: Target(types=("Linear",)), help="layers to scale")
    factor: float = param(0.5, "multiplier of the weights, in (0, 1]")

    def validate(self) -> None:
        check_range("factor", self.factor, 1e-6, 1.0)


@register(ScaleWeightsConfig, strength="factor", applies_to="linear")
def scale_weights(model: nn.Module, config: ScaleWeightsConfig, ctx) -> ChangeRecord:
    """Scale Linear weights by a constant factor."""
    layers = []
    with torch.no_grad():
        for name, module in select_modules(model, config.target):
            module.weight.mul_(config.factor)
            layers.append({"name": name})
    return ChangeRecord(config.type, config.to_dict(), layers, {"layers": len(layers)})
'''

CHECK = """
from modelscale.core.registry import get_technique, list_techniques
from modelscale.testing import check_technique
assert "scale_weights" in list_techniques(), list_techniques()
technique = get_technique("scale_weights")
assert technique.strength == "factor" and technique.applies_to == "linear"
report = check_technique(technique.config_cls(factor=0.25))
print("PASSED", len(report.passed))
"""


def test_an_entry_point_plugin_passes_check_technique(tmp_path):
    (tmp_path / "ms_scale_plugin.py").write_text(textwrap.dedent(PLUGIN))
    dist = tmp_path / "ms_scale_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ms-scale-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[modelscale.techniques]\nscale_weights = ms_scale_plugin\n")
    env_path = f"{tmp_path}"
    out = subprocess.run(
        [sys.executable, "-c", CHECK],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": env_path, "PATH": "/usr/bin:/bin"},
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "PASSED 5" in out.stdout  # registered, round-trip, and the three tiny models
