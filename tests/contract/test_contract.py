"""Every registered technique passes the same checks (DESIGN.md, testing ladder step 5), through the
public conformance check plugin authors use (`modelscale.testing.check_technique`)."""

from __future__ import annotations

import pytest

from modelscale.core.registry import get_technique, list_techniques
from modelscale.testing import MODEL_KINDS, check_technique

TECHNIQUES = list_techniques()
GENERIC = [n for n in TECHNIQUES if get_technique(n).applies_to != "hf"]


def test_registry_is_not_empty():
    assert "magnitude_prune" in TECHNIQUES


@pytest.mark.parametrize("kind", MODEL_KINDS)
@pytest.mark.parametrize("name", GENERIC)
def test_technique_passes_the_contract(name, kind):
    report = check_technique(get_technique(name).config_cls(), models=(kind,))
    assert report.passed == ["registered", "round-trip", f"{kind}: apply, save, reload"]


def test_a_broken_technique_fails_the_contract(monkeypatch):
    """The check can fail: a technique whose apply changes the input model in place is caught."""
    import torch

    from modelscale.core import apply as apply_module

    original = apply_module.apply

    def in_place(model, config, **kwargs):
        result = original(model, config, **kwargs)
        with torch.no_grad():
            next(model.parameters()).add_(1.0)
        return result

    monkeypatch.setattr(apply_module, "apply", in_place)
    with pytest.raises(AssertionError, match="changed the input model"):
        check_technique(get_technique("magnitude_prune").config_cls(), models=("mlp",))
