"""Rendering of measurements and runs: Markdown tables, terminal text, and run reports with plots (HTML).

Example::

    from modelscale.report import compare_markdown, profile_markdown, profile_text
    print(profile_text(profile(model, x)))
    markdown_path, html_path = build_report(["05eba6099ac4"], store="runs/modelscale.db", out_dir="reports/x")
"""

from modelscale.analysis.pareto import pareto_front
from modelscale.report.runs_report import build_report, report_command
from modelscale.report.tables import (
    compare_markdown,
    compare_text,
    human,
    profile_markdown,
    profile_text,
)

__all__ = [
    "build_report",
    "compare_markdown",
    "compare_text",
    "human",
    "pareto_front",
    "profile_markdown",
    "profile_text",
    "report_command",
]
