"""The technique tables of README.md and docs/architecture.md list exactly the registered techniques."""

from __future__ import annotations

import re
from pathlib import Path

from modelscale.core.registry import list_techniques

ROOT = Path(__file__).resolve().parents[2]


def _architecture_names() -> set[str]:
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    table = text.split("### Techniques shipped", 1)[1].split("\n\n", 2)[1]
    names = set()
    for row in table.splitlines()[2:]:
        cells = [c.strip() for c in row.strip("|").split("|")]
        names |= set(re.findall(r"`([a-z0-9_]+)`", cells[1]))
    return names


def _readme_names() -> set[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    line = text.split("- **Techniques**:", 1)[1].split("\n- **", 1)[0]
    return set(re.findall(r"`([a-z0-9_]+)`", line.split(" — see ", 1)[0]))


def test_architecture_table_matches_the_registry():
    assert _architecture_names() == set(list_techniques())


def test_readme_list_matches_the_registry():
    assert _readme_names() == set(list_techniques())
